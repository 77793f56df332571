# Written with AI assistance; review before relying on it.
"""The parts of cerebro.engine on their own, without model files: span and batch buckets, the row KV
cache (prefill and decode writes, views, row moves, sizes), plan_geometry and build_engine, the
BatchForward's per-row RoPE against transformers' rotary embedding (short and LongRoPE-long rows) and its
batched decode against prefill on a tiny in-memory random model, and TokenStream (ordering, failures,
cancel, asyncio delivery)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cerebro.engine import Engine, PlainEngine, TokenStream, build_engine, plan_geometry
from cerebro.engine.decoder import DecoderShape
from cerebro.engine.forward import BatchForward, bucket_up, span_buckets
from cerebro.engine.kv_cache import RowKVCache
from cerebro.errors import CapacityError
from cerebro.families.phi3_v import phi3v_decoder
from cerebro.models.phi3_v.configuration import Phi3VConfig
from cerebro.models.phi3_v.modeling import Phi3VForCausalLM
from cerebro.models.phi3_v.tiny import random_model, tiny_config_dict
from cerebro.settings import Settings

CPU = torch.device("cpu")
ORIGINAL_MAX = 64
# Phi-3.5-vision's own sizes (config.json of microsoft/Phi-3.5-vision-instruct).
REAL_CONFIG = SimpleNamespace(
    hidden_size=3072, num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=32
)
REAL_BYTES_PER_TOKEN = 393_216  # 2 (K, V) x 32 layers x 32 heads x 96 dims x 2 bytes


# ------------------------------------------------------------------------------------------- buckets


@pytest.mark.parametrize("capacity", [256, 300, 512, 1000, 1024, 1025, 2048, 4096, 10752, 131072])
def test_span_buckets_are_increasing_multiples_of_256_ending_at_the_capacity(capacity: int) -> None:
    spans = span_buckets(capacity)
    assert spans[0] == 256 and spans[-1] == capacity
    assert all(a < b for a, b in itertools.pairwise(spans))
    assert all(s % 256 == 0 for s in spans[:-1])
    for a, b in itertools.pairwise(spans[:-1]):  # the last step may be short: it ends at capacity
        if a < 1024:
            assert b == a + 256
        else:  # beyond 1024, steps of x1.5 rounded up to a quantum: few graphs even for 128k
            assert a * 1.5 <= b < a * 1.5 + 256
    assert len(spans) <= 17


def test_span_buckets_examples_including_a_capacity_below_one_quantum() -> None:
    assert span_buckets(100) == (100,)
    assert span_buckets(1000) == (256, 512, 768, 1000)
    assert span_buckets(2048) == (256, 512, 768, 1024, 1536, 2048)


def test_bucket_up_picks_the_smallest_bucket_that_holds_the_value() -> None:
    buckets = (1, 2, 4, 8)
    assert [bucket_up(v, buckets) for v in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="9 is above the largest bucket 8"):
        bucket_up(9, buckets)


# ------------------------------------------------------------------------------------------- RowKVCache


def _cache(rows: int = 3, capacity: int = 8) -> RowKVCache:
    return RowKVCache(
        num_layers=2, rows=rows, kv_heads=2, capacity=capacity, head_dim=4, dtype=torch.float32, device=CPU
    )


def _kv(*shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def test_prefill_writes_positions_0_to_t_of_its_row_and_returns_that_row() -> None:
    cache = _cache()
    key, value = _kv(1, 2, 3, 4, seed=0)
    cache.prefill(row=1, length=3)
    for layer in (0, 1):
        k, v = cache.update(key, value, layer)
        assert k.shape == v.shape == (1, 2, 3, 4)
        assert torch.equal(k, key) and torch.equal(v, value)
        assert k.data_ptr() == cache.keys[layer][1].data_ptr()  # a view of the cache, not a copy
        assert torch.equal(cache.keys[layer][1, :, :3], key[0])
        assert torch.equal(cache.values[layer][1, :, :3], value[0])
        assert not cache.keys[layer][1, :, 3:].any()
        assert not cache.keys[layer][0].any() and not cache.keys[layer][2].any()


def test_decode_writes_each_rows_token_at_its_own_position_and_returns_span_views() -> None:
    cache = _cache()
    key, value = _kv(2, 2, 1, 4, seed=1)
    positions = torch.tensor([5, 0, 7])  # row 2 is beyond the batch: untouched
    cache.decode(batch=2, span=6, positions=positions)
    k, v = cache.update(key, value, 0)
    assert k.shape == v.shape == (2, 2, 6, 4)
    assert torch.equal(cache.keys[0][0, :, 5], key[0, :, 0])
    assert torch.equal(cache.keys[0][1, :, 0], key[1, :, 0])
    assert torch.equal(cache.values[0][0, :, 5], value[0, :, 0])
    assert torch.equal(cache.values[0][1, :, 0], value[1, :, 0])
    assert torch.equal(k[0, :, 5], key[0, :, 0]) and torch.equal(v[1, :, 0], value[1, :, 0])
    assert int((cache.keys[0] != 0).any(dim=-1).sum()) == 2 * 2  # two rows x two heads, nothing else
    assert not cache.keys[0][2].any() and not cache.keys[1].any()  # layer 1 was not updated


def test_move_row_copies_the_first_positions_of_every_layer() -> None:
    cache = _cache()
    for layer in (0, 1):
        cache.prefill(row=2, length=5)
        cache.update(*_kv(1, 2, 5, 4, seed=10 + layer), layer)
        cache.prefill(row=0, length=8)
        cache.update(*_kv(1, 2, 8, 4, seed=20 + layer), layer)
    before = [t[0, :, 3:].clone() for t in (*cache.keys, *cache.values)]
    cache.move_row(src=2, dst=0, length=3)
    for t, tail in zip((*cache.keys, *cache.values), before, strict=True):
        assert torch.equal(t[0, :, :3], t[2, :, :3])
        assert torch.equal(t[0, :, 3:], tail)  # positions past `length` keep what they held


def test_update_outside_a_mode_and_bad_prefills_raise() -> None:
    cache = _cache()
    with pytest.raises(RuntimeError, match="outside prefill/decode"):
        cache.update(*_kv(1, 2, 1, 4, seed=2), 0)
    for row, length in [(3, 1), (-1, 1), (0, 0), (0, 9)]:
        with pytest.raises(ValueError, match=f"prefill of {length} tokens into row {row}; the cache is 3x8"):
            cache.prefill(row, length)


def test_bytes_per_token_and_nbytes() -> None:
    shape = DecoderShape.from_config(REAL_CONFIG)
    assert shape == DecoderShape(num_layers=32, kv_heads=32, head_dim=96)
    assert shape.bytes_per_token(torch.bfloat16) == REAL_BYTES_PER_TOKEN
    assert shape.bytes_per_token(torch.float32) == 2 * REAL_BYTES_PER_TOKEN
    assert _cache(rows=3, capacity=8).nbytes == 2 * 2 * (3 * 2 * 8 * 4) * 4  # K+V, layers, elements, fp32


# ------------------------------------------------------------------------------------------- geometry


def _geometry(**kwargs: int) -> object:
    args = {"max_batch": 0, "kv_cache_tokens": 0, "max_context_tokens": 131072, **kwargs}
    return plan_geometry(DecoderShape.from_config(REAL_CONFIG), torch.bfloat16, CPU, **args)


def test_plan_geometry_with_explicit_rows_and_budget() -> None:
    g = _geometry(max_batch=4, kv_cache_tokens=10_000, max_context_tokens=4096)
    assert (g.rows, g.capacity, g.budget_tokens, g.bytes_per_token) == (4, 2304, 10_000, REAL_BYTES_PER_TOKEN)
    # The context limit caps a row, rounded up to a whole span quantum.
    g = _geometry(max_batch=2, kv_cache_tokens=100_000, max_context_tokens=1000)
    assert (g.rows, g.capacity) == (2, 1024)
    g = _geometry(max_batch=1, kv_cache_tokens=256, max_context_tokens=131072)
    assert (g.rows, g.capacity) == (1, 256)


def test_plan_geometry_refuses_a_budget_too_small_for_its_rows() -> None:
    with pytest.raises(CapacityError) as caught:
        _geometry(max_batch=8, kv_cache_tokens=2000)
    err = caught.value
    assert err.code == "E2020" and err.field == "CEREBRO_KV_CACHE_TOKENS"
    assert "2000 tokens" in err.message and "8 rows" in err.message
    assert "CEREBRO_KV_CACHE_TOKENS" in err.message and "CEREBRO_MAX_BATCH" in err.message


def test_plan_geometry_refuses_a_cache_larger_than_the_memory_available() -> None:
    # 100,000 rows of 4096 tokens at 393,216 bytes a token: 161 TB, more than any machine here has.
    with pytest.raises(CapacityError) as caught:
        _geometry(max_batch=100_000, kv_cache_tokens=10**12, max_context_tokens=4096)
    err = caught.value
    assert (err.code, err.field) == ("E2020", "CEREBRO_KV_CACHE_TOKENS")
    assert "100000 rows x 4096 tokens needs 161061.3 GB and cpu has" in err.message


def test_plan_geometry_defaults_on_cpu_one_row_in_4_gib() -> None:
    g = _geometry()
    assert g.rows == 1
    assert g.budget_tokens == 4 * 1024**3 // REAL_BYTES_PER_TOKEN == 10_922
    assert g.capacity == 10_752  # whole quanta of 256
    assert _geometry(max_context_tokens=4096).capacity == 4096


def test_plan_geometry_defaults_on_a_gpu_leave_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * gib, 80 * gib))
    g = plan_geometry(
        DecoderShape.from_config(REAL_CONFIG),
        torch.bfloat16,
        torch.device("cuda", 0),
        max_batch=0,
        kv_cache_tokens=0,
        max_context_tokens=131072,
    )
    # 20 GiB free less max(4 GiB, a tenth of 80 GiB) = 12 GiB = 32768 tokens over 16 rows.
    assert (g.rows, g.budget_tokens, g.capacity) == (16, 32768, 2048)


# ------------------------------------------------------------------------------------------- BatchForward


@pytest.fixture(scope="module")
def tiny_model() -> Phi3VForCausalLM:
    """LongRoPE with original_max 64, so a long row is cheap; weights random, in memory only."""
    config = Phi3VConfig(
        **tiny_config_dict(original_max_position_embeddings=ORIGINAL_MAX, max_position_embeddings=1024)
    )
    config._attn_implementation = "sdpa"
    return random_model(config, seed=3)


def _runner(model: Phi3VForCausalLM, rows: int = 4, capacity: int = 256) -> BatchForward:
    decoder = phi3v_decoder(model)
    cache = RowKVCache(
        num_layers=decoder.shape.num_layers,
        rows=rows,
        kv_heads=decoder.shape.kv_heads,
        capacity=capacity,
        head_dim=decoder.shape.head_dim,
        dtype=model.dtype,
        device=model.device,
    )
    return BatchForward(decoder, cache, cuda_graphs=True)  # True is ignored off a GPU


def test_runner_knows_when_a_row_is_long(tiny_model: Phi3VForCausalLM) -> None:
    runner = _runner(tiny_model)
    assert not runner.cuda_graphs and runner.capture_all(256) == (0, 0.0)
    assert runner.rotary.switch_after == ORIGINAL_MAX
    assert runner.variant(ORIGINAL_MAX) == 0 and runner.variant(ORIGINAL_MAX + 1) == 1
    assert not torch.equal(runner.rotary.tables[0], runner.rotary.tables[1])
    plain = random_model(Phi3VConfig(**tiny_config_dict(rope_scaling=None)))
    assert _runner(plain).variant(10**6) == 0 and len(_runner(plain).rotary.tables) == 1


def test_rope_per_row_equals_transformers_rotary_embedding(tiny_model: Phi3VForCausalLM) -> None:
    """Row 0 short (40 positions), row 1 long (positions 60..99 of a 100-token sequence), in one call."""
    runner = _runner(tiny_model)
    positions = torch.stack([torch.arange(40), torch.arange(60, 100)])
    cos, sin = runner.rotary.cos_sin(positions, torch.tensor([0, 1]), tiny_model.dtype)
    rotary = tiny_model.model.rotary_emb
    x = torch.zeros(1, 1, dtype=tiny_model.dtype)
    for row in (0, 1):
        ref_cos, ref_sin = rotary(x, positions[row : row + 1])  # max position + 1 picks short or long
        torch.testing.assert_close(cos[row : row + 1], ref_cos, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sin[row : row + 1], ref_sin, rtol=1e-5, atol=1e-6)
    short_cos, _ = runner.rotary.cos_sin(positions[1:], torch.tensor([0]), tiny_model.dtype)
    assert not torch.allclose(short_cos, cos[1:])  # the premise: the long factors change the row


def test_prefill_equals_the_models_own_forward(tiny_model: Phi3VForCausalLM) -> None:
    runner = _runner(tiny_model)
    gen = torch.Generator().manual_seed(4)
    for length in (20, ORIGINAL_MAX + 16):  # short, and long from the first token
        ids = torch.randint(100, 30000, (1, length), generator=gen)
        logits, image_embeds = runner.prefill(1, ids, {})
        with torch.inference_mode():
            ref = tiny_model(input_ids=ids).logits[0, -1].float()
        assert image_embeds is None
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)


def test_batched_decode_equals_prefill_of_the_longer_sequence_per_row(tiny_model: Phi3VForCausalLM) -> None:
    """Three rows of different lengths (one long) in a batch bucket of four (one idle row): each row's
    decode logits equal a fresh prefill of its sequence plus the fed token."""
    runner = _runner(tiny_model, rows=4, capacity=256)
    gen = torch.Generator().manual_seed(5)
    seqs = [torch.randint(100, 30000, (1, n + 1), generator=gen) for n in (20, ORIGINAL_MAX + 30, 7)]
    expected = [runner.prefill(3, s, {})[0] for s in seqs]  # row 3: the idle row of the batch below
    for row, s in enumerate(seqs):
        runner.prefill(row, s[:, :-1], {})
    n = [s.shape[1] - 1 for s in seqs]
    logits = runner.decode([int(s[0, -1]) for s in seqs], n, [runner.variant(k + 1) for k in n])
    assert logits.shape == (3, tiny_model.config.vocab_size)
    for row in range(3):
        torch.testing.assert_close(logits[row], expected[row], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- build_engine


def test_build_engine_follows_the_settings(tiny_model: Phi3VForCausalLM) -> None:
    decoder = phi3v_decoder(tiny_model)
    plain = build_engine(
        Settings(engine="plain"), decoder=decoder, plain_model=tiny_model, max_context_tokens=1024
    )
    settings = Settings(max_batch=2, kv_cache_tokens=1200, max_context_tokens=4096, cuda_graphs=True)
    batched = build_engine(settings, decoder=decoder, plain_model=tiny_model, max_context_tokens=1024)
    no_decoder = build_engine(settings, decoder=None, plain_model=tiny_model, max_context_tokens=1024)
    try:
        assert isinstance(plain, PlainEngine)
        assert isinstance(batched, Engine) and (batched.rows, batched.capacity) == (2, 512)
        assert batched.cache.keys[0].shape == (2, 4, 512, 16)
        assert not batched.forward.cuda_graphs  # on CPU
        assert isinstance(no_decoder, PlainEngine)  # a family without a Decoder: the plain path
        # A budget for 100,000 tokens and a 32768-token setting: one row still holds only what the model's
        # own context window (1024 here) can use.
        roomy = Settings(max_batch=1, kv_cache_tokens=100_000, max_context_tokens=32768)
        capped = build_engine(roomy, decoder=decoder, plain_model=tiny_model, max_context_tokens=1024)
        assert isinstance(capped, Engine) and capped.capacity == 1024
        capped.close()
        assert (plain.rows, plain.capacity) == (1, 1024)
    finally:
        plain.close()
        batched.close()
        no_decoder.close()


# ------------------------------------------------------------------------------------------- TokenStream


def test_stream_delivers_tokens_in_order_then_the_finish_reason() -> None:
    stream = TokenStream()
    assert stream.finish_reason == "" and not stream.cancelled
    producer = threading.Thread(target=lambda: ([stream.put(t) for t in range(50)], stream.finish("stop")))
    producer.start()
    assert list(stream) == list(range(50))
    producer.join()
    assert stream.finish_reason == "stop"


def test_stream_failure_is_raised_in_the_reader_after_the_tokens_before_it() -> None:
    stream, error, got = TokenStream(), MemoryError("boom"), []
    stream.put(7)
    stream.put(8)
    stream.fail(error)
    with pytest.raises(MemoryError) as caught:
        for token in stream:
            got.append(token)
    assert caught.value is error and got == [7, 8] and stream.finish_reason == "error"


def test_stream_cancel_sets_the_shared_event() -> None:
    stream = TokenStream()
    stream.cancel()
    assert stream.cancelled and stream.cancel_event.is_set()


def test_stream_delivers_to_an_asyncio_reader_from_another_thread() -> None:
    async def main() -> tuple[list[int], list[int]]:
        ok, failing = TokenStream(), TokenStream()
        for s in (ok, failing):
            s.bind(asyncio.get_running_loop())

        def produce() -> None:
            for t in range(20):
                ok.put(t)
                failing.put(100 + t)
            ok.finish("length")
            failing.fail(ValueError("engine failure"))

        threading.Thread(target=produce).start()
        got = [t async for t in ok]
        partial: list[int] = []
        with pytest.raises(ValueError, match="engine failure"):
            async for t in failing:
                partial.append(t)
        return got, partial

    got, partial = asyncio.run(main())
    assert got == list(range(20)) and partial == list(range(100, 120))


def test_stream_whose_async_reader_is_gone_asks_the_engine_to_stop() -> None:
    loop = asyncio.new_event_loop()
    stream = TokenStream()
    stream.bind(loop)
    loop.close()
    stream.put(1)
    assert stream.cancelled


def test_a_cpu_cache_costs_memory_only_for_what_is_written() -> None:
    # The CPU default budget is gigabytes; it must not be zero-filled (and held) at startup.
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise LookupError("VmRSS")

    before = rss()
    cache = RowKVCache(
        num_layers=8,
        rows=2,
        kv_heads=8,
        capacity=8192,
        head_dim=64,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    assert cache.nbytes == 2 * 8 * 2 * 8 * 8192 * 64 * 4  # 1 GiB
    assert rss() - before < 64 * 2**20
    assert not cache.keys[5].any() and not cache.values[7].any()  # reads as zeros (no NaN garbage)
    cache.keys[5][1, :, :10] = 2.0
    assert float(cache.keys[5].sum()) == 2.0 * 8 * 10 * 64
    assert rss() - before < 64 * 2**20
