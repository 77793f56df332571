# Written with AI assistance; review before relying on it.
"""The batching Engine (cerebro.engine) end to end on tiny random-weight checkpoints, on CPU, checked
token for token against the plain reference path (cerebro.generation.generate_tokens).

Covers: greedy parity for one request and for text and image requests of mixed lengths continuously
batched through fewer rows than requests, with a stop id that ends some of them early (so rows leave
mid-batch and are compacted); per-request sampling settings and seeds inside one batch; LongRoPE
re-encoding per row around original_max (text and image rows); a JSON-schema constraint on some
requests of a batch; cancel of a running and of a waiting request; the KV budget (E2020 at submit, a
request that exactly fills a row, waiting for a free row); failures injected into one request's prefill
(out of memory), into a decode step and into a first-token sample, each of which must fail only its own
requests; close(); asyncio reading; and the PlainEngine fallback.

Faults and pauses are injected by wrapping one module's forward (the vision tower, lm_head) for one
test; the engine, its thread, the KV cache, the sampler and the model are the real ones. Timeouts here
only keep a broken engine from hanging the test run; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from PIL import Image

from cerebro.engine import Engine, Job, PlainEngine, TokenStream
from cerebro.errors import CapacityError, ServerError
from cerebro.families.phi3_v import phi3v_decoder
from cerebro.finish import LogitsConstraint
from cerebro.generation import Sampler, SamplingParams, generate_tokens
from cerebro.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
from cerebro.models.phi3_v.tiny import write_tiny_model
from cerebro.structured import JsonSchemaCompiler

pytestmark = pytest.mark.fixtures

CPU = torch.device("cpu")
GREEDY = SamplingParams()
TIMEOUT_S = 120.0  # guards against a hung stream; never an assertion about speed
LONG_ORIGINAL_MAX = 512  # original_max_position_embeddings of the LongRoPE model: image prompts can cross it
STOP_TOKENS = ("<|end|>", "<|endoftext|>", "</s>")


# ------------------------------------------------------------------------------------------- models


def _load(model_dir: Path) -> Phi3VForCausalLM:
    return Phi3VForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="sdpa", device=CPU
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Phi3VForCausalLM:
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Phi3VForCausalLM:
    """LongRoPE with a small original_max, so short prompts plus a few tokens cross it."""
    model_dir = write_tiny_model(
        tmp_path_factory.mktemp("tiny-longrope"),
        tokenizer_dir,
        seed=7,
        original_max_position_embeddings=LONG_ORIGINAL_MAX,
        max_position_embeddings=8192,
    )
    return _load(model_dir)


@pytest.fixture(scope="module")
def stop_ids(processor: Phi3VProcessor) -> frozenset[int]:
    ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return frozenset(i for i in ids if isinstance(i, int) and i >= 0)


@pytest.fixture(scope="module")
def schema_compiler(model: Phi3VForCausalLM, processor: Phi3VProcessor, stop_ids: frozenset[int]) -> Any:
    return JsonSchemaCompiler(processor.tokenizer, int(model.config.vocab_size), sorted(stop_ids))


# ------------------------------------------------------------------------------------------- inputs


def _picture(width: int, height: int, seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    colours = [tuple(int(c) for c in torch.randint(0, 256, (3,), generator=gen)) for _ in range(2)]
    img = Image.new("RGB", (width, height), colours[0])
    img.paste(colours[1], (0, 0, width // 2, height // 3))
    return img


def _chat(processor: Phi3VProcessor, text: str, images: tuple[Image.Image, ...] = ()) -> dict[str, Any]:
    tags = "".join(f"<|image_{i + 1}|>\n" for i in range(len(images)))
    inputs = dict(
        processor(text=f"<|user|>\n{tags}{text}<|end|>\n<|assistant|>\n", images=list(images) or None)
    )
    inputs.pop("num_img_tokens", None)
    return inputs


def _random_ids(length: int, seed: int) -> dict[str, Any]:
    """A text prompt of exactly `length` tokens (ordinary vocabulary ids; the weights are random anyway)."""
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(100, 30000, (1, length), generator=gen)}


@dataclass
class Req:
    """One request, runnable both through an engine (as a Job) and through the plain path."""

    inputs: dict[str, Any]
    max_new_tokens: int
    params: SamplingParams = GREEDY
    stop_ids: frozenset[int] = frozenset()
    constraint: Callable[[], LogitsConstraint] | None = None  # a fresh one per run: it holds parse state
    stream: TokenStream = field(default_factory=TokenStream)

    def job(self) -> Job:
        return Job(
            input_ids=self.inputs["input_ids"],
            extras={k: v for k, v in self.inputs.items() if k in ("pixel_values", "image_sizes")},
            max_new_tokens=self.max_new_tokens,
            sampler=Sampler(self.params, CPU),
            stop_ids=self.stop_ids,
            constraint=None if self.constraint is None else self.constraint(),
            stream=self.stream,
        )

    def plain(self, model: Phi3VForCausalLM) -> list[int]:
        return list(
            generate_tokens(
                model,
                self.inputs,
                max_new_tokens=self.max_new_tokens,
                sampler=Sampler(self.params, CPU),
                stop_ids=self.stop_ids,
                constraint=None if self.constraint is None else self.constraint(),
            )
        )


class Reader:
    """Reads one stream on its own thread, as a client would, so a test can wait for the first token."""

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream
        self.tokens: list[int] = []
        self.error: BaseException | None = None
        self.first = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for token in self.stream:
                self.tokens.append(token)
                self.first.set()
        except BaseException as err:  # handed to the test thread by result()
            self.error = err
        finally:
            self.first.set()
            self.done.set()

    def wait_first(self) -> None:
        assert self.first.wait(TIMEOUT_S), "no first token"
        assert self.tokens, f"the stream ended before its first token: {self.error!r}"

    def result(self) -> list[int]:
        """All tokens; the stream's failure is raised here."""
        assert self.done.wait(TIMEOUT_S), "the stream never ended"
        if self.error is not None:
            raise self.error
        return self.tokens


def _submit(engine: Engine | PlainEngine, req: Req) -> Reader:
    engine.submit(req.job())
    return Reader(req.stream)


def _run_all(engine: Engine | PlainEngine, reqs: list[Req]) -> list[list[int]]:
    """Submit every request at once, then read them all."""
    readers = [_submit(engine, r) for r in reqs]
    return [r.result() for r in readers]


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine | PlainEngine] = []

    def make(model: Phi3VForCausalLM, rows: int, capacity: int = 2048) -> Engine:
        engine = Engine(phi3v_decoder(model), rows=rows, capacity=capacity, cuda_graphs=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


class Gate:
    """Wraps a module's forward so the engine thread can be held inside one call (the test acts while
    the engine is between two known points), and that call can be made to raise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: torch.nn.Module) -> None:
        self.armed, self.entered, self.opened = threading.Event(), threading.Event(), threading.Event()
        self.when: Callable[[torch.Tensor], bool] = lambda x: True
        self.error: BaseException | None = None
        original = module.forward

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.armed.is_set() and self.when(x):
                self.armed.clear()
                self.entered.set()
                self.opened.wait(TIMEOUT_S)
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
            return original(x, *args, **kwargs)

        monkeypatch.setattr(module, "forward", forward)

    def hold(self, when: Callable[[torch.Tensor], bool] = lambda x: True) -> None:
        """Block the next call that satisfies `when`; returns once the engine thread is inside it."""
        self.when = when
        self.opened.clear()
        self.entered.clear()
        self.armed.set()
        assert self.entered.wait(TIMEOUT_S), "the engine never reached the gate"

    def release(self, error: BaseException | None = None) -> None:
        """Let the held call go on, or raise `error` from it."""
        self.error = error
        self.opened.set()


@pytest.fixture
def lm_head_gate(monkeypatch: pytest.MonkeyPatch, model: Phi3VForCausalLM, engines: Any) -> Iterator[Gate]:
    gate = Gate(monkeypatch, model.lm_head)
    yield gate
    gate.opened.set()  # never leave the engine thread blocked (torn down before `engines` closes it)


# ------------------------------------------------------------------------------------- greedy parity


def test_a_single_request_gives_the_plain_paths_tokens(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any
) -> None:
    req = Req(_chat(processor, "What is in this picture?", (_picture(100, 80, 0),)), max_new_tokens=24)
    expected = req.plain(model)
    engine = engines(model, rows=1)
    assert _run_all(engine, [req]) == [expected]
    assert req.stream.finish_reason == "length"
    assert engine.load() == (0, 0)


def _pick_stop_id(outputs: list[list[int]]) -> int:
    """A token the plain path produces mid-way in some outputs but never in others, ending as many
    requests early as it can while leaving at least two that run to their length."""
    best: tuple[int, int] | None = None
    for out in outputs:
        for token in out[1:-1]:
            stopped = sum(token in o[:-1] for o in outputs)
            untouched = sum(token not in o for o in outputs)
            if untouched >= 2 and (best is None or stopped > best[0]):
                best = (stopped, token)
    assert best is not None, "no token of the plain outputs can serve as a mid-way stop id"
    return best[1]


def test_continuous_batching_mixed_requests_with_stops_give_the_plain_paths_tokens(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six requests through three rows: later ones wait and join mid-way as earlier ones leave."""
    inputs = [
        (_chat(processor, "Hi"), 12),
        (_chat(processor, "What is this?", (_picture(100, 80, 1),)), 30),
        (_chat(processor, "Tell me a long story about a lighthouse keeper. " * 8), 20),
        (_chat(processor, "Describe it.", (_picture(300, 120, 2),)), 9),
        (_chat(processor, "Compare them.", (_picture(60, 200, 3), _picture(40, 40, 4))), 25),
        (_chat(processor, "Count to ten."), 16),
    ]
    unstopped = [Req(i, n).plain(model) for i, n in inputs]
    stop = _pick_stop_id(unstopped)
    reqs = [Req(i, n, stop_ids=frozenset({stop})) for i, n in inputs]
    expected = [r.plain(model) for r in reqs]
    reasons = ["stop" if out[-1] == stop else "length" for out in expected]
    assert "stop" in reasons and reasons.count("length") >= 2  # the premise: rows leave at different times

    engine = engines(model, rows=3)
    moves: list[tuple[int, int, int]] = []
    move_row = engine.cache.move_row

    def counting_move_row(src: int, dst: int, length: int) -> None:
        moves.append((src, dst, length))
        move_row(src, dst, length)

    monkeypatch.setattr(engine.cache, "move_row", counting_move_row)
    assert _run_all(engine, reqs) == expected
    assert [r.stream.finish_reason for r in reqs] == reasons
    assert moves, "no row was compacted: the test did not exercise a request leaving mid-batch"
    assert engine.load() == (0, 0)


def test_per_request_sampling_settings_and_seeds_stay_per_request_in_a_batch(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any
) -> None:
    story = _chat(processor, "Write a poem about the sea.")
    repeat = _chat(processor, "Say something.")
    sampled = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=11)
    reqs = [
        Req(_chat(processor, "Hello there."), 16),
        Req(story, 16, sampled),
        Req(repeat, 16, SamplingParams(repetition_penalty=1.3)),
        Req(story, 16, sampled),  # the same seed again: its own generator, so the same tokens
        Req(story, 16, SamplingParams(temperature=1.0, top_p=0.95, seed=12)),
        Req(_chat(processor, "And this?", (_picture(100, 80, 5),)), 16),
    ]
    expected = [r.plain(model) for r in reqs]
    # The premises: sampling, the seed and the penalty each change the output.
    assert expected[1] != Req(story, 16).plain(model)
    assert expected[1] != expected[4]
    assert expected[2] != Req(repeat, 16).plain(model)

    engine = engines(model, rows=4)
    got = _run_all(engine, reqs)
    assert got == expected
    assert got[1] == got[3]


def test_longrope_rows_cross_original_max_independently(
    long_model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any
) -> None:
    """Rows that stay short, cross original_max while decoding (re-encoded with the long factors, an
    image row reusing its features) and start long, batched together: each equals the plain path."""
    limit = LONG_ORIGINAL_MAX
    image = _chat(processor, "What is this?", (_picture(300, 120, 6),))
    n_image = int(image["input_ids"].shape[1])
    assert n_image < limit < n_image + 60  # the premise: the image request crosses while decoding
    reqs = [
        Req(_random_ids(40, 1), 30),  # stays short
        Req(_random_ids(limit - 20, 2), 40),  # crosses after 20 tokens
        Req(image, 60),  # crosses, re-encoded from its image features
        Req(_random_ids(limit, 3), 10),  # crosses at its first decode step
        Req(_random_ids(limit - 1, 4), 10),  # crosses at its second decode step
        Req(_random_ids(limit + 1, 5), 10),  # long from prefill
        Req(_random_ids(limit + 100, 6), 20),  # long from prefill
    ]
    expected = [r.plain(long_model) for r in reqs]
    engine = engines(long_model, rows=4, capacity=1024)
    assert _run_all(engine, reqs) == expected


def test_a_json_constraint_applies_only_to_its_own_request(
    model: Phi3VForCausalLM,
    processor: Phi3VProcessor,
    engines: Any,
    schema_compiler: Any,
    stop_ids: frozenset[int],
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 999},
            "label": {"type": "string", "maxLength": 8},
            "ok": {"type": "boolean"},
        },
        "required": ["count", "label", "ok"],
        "additionalProperties": False,
    }

    def constraint() -> LogitsConstraint:
        return schema_compiler.compile(schema)

    picture = (_picture(100, 80, 7),)
    reqs = [
        Req(_chat(processor, "Describe as JSON.", picture), 200, stop_ids=stop_ids, constraint=constraint),
        Req(_chat(processor, "Describe it.", picture), 40, stop_ids=stop_ids),
        Req(
            _chat(processor, "JSON please."),
            200,
            SamplingParams(temperature=1.0, seed=3),
            stop_ids=stop_ids,
            constraint=constraint,
        ),
        Req(_chat(processor, "Hello."), 40, stop_ids=stop_ids),
    ]
    expected = [r.plain(model) for r in reqs]
    engine = engines(model, rows=4)
    got = _run_all(engine, reqs)
    assert got == expected

    def text(tokens: list[int]) -> str:  # as the adapter does: a stop token ends the text, unprinted
        return processor.tokenizer.decode([t for t in tokens if t not in stop_ids])

    for k in (0, 2):
        jsonschema.validate(json.loads(text(got[k])), schema)
        assert reqs[k].stream.finish_reason == "stop" and len(got[k]) < 200  # it ended by itself
    for k in (1, 3):  # unconstrained: random weights do not write JSON
        with pytest.raises(json.JSONDecodeError):
            json.loads(text(got[k]))


# ------------------------------------------------------------------------------------------- cancel


def test_cancel_ends_a_running_and_a_waiting_request_and_the_others_go_on(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, lm_head_gate: Gate
) -> None:
    running = Req(_chat(processor, "Go on and on."), 200)
    other = Req(_chat(processor, "What is this?", (_picture(100, 80, 8),)), 30)
    waiting = Req(_chat(processor, "Wait for me."), 20)
    later = Req(_chat(processor, "After the cancels."), 12)
    expected = {id(r): r.plain(model) for r in (running, other, later)}

    engine = engines(model, rows=2)
    readers = [_submit(engine, r) for r in (running, other, waiting)]
    readers[0].wait_first()
    readers[1].wait_first()  # both rows are taken: `waiting` cannot have been admitted
    lm_head_gate.hold()  # the engine thread is inside a decode step of the two rows
    assert engine.load() == (2, 1)
    running.stream.cancel()
    waiting.stream.cancel()
    lm_head_gate.release()

    cancelled = readers[0].result()
    assert running.stream.finish_reason == "cancelled"
    assert 0 < len(cancelled) < running.max_new_tokens
    assert cancelled == expected[id(running)][: len(cancelled)]
    assert readers[2].result() == [] and waiting.stream.finish_reason == "cancelled"
    assert readers[1].result() == expected[id(other)] and other.stream.finish_reason == "length"
    assert _run_all(engine, [later]) == [expected[id(later)]]
    assert engine.load() == (0, 0)


# ------------------------------------------------------------------------------------------- budget


def test_a_request_larger_than_a_row_is_refused_at_submit_with_the_numbers(
    model: Phi3VForCausalLM, engines: Any
) -> None:
    engine = engines(model, rows=2, capacity=256)
    too_big = Req(_random_ids(200, 9), 57)
    with pytest.raises(CapacityError) as caught:
        engine.submit(too_big.job())
    err = caught.value
    assert err.code == "E2020" and err.field == "max_new_tokens"
    assert "257 tokens" in err.message and "(200 prompt + 57 max_new_tokens)" in err.message
    assert "at most 256" in err.message
    assert engine.load() == (0, 0)

    exact = Req(_random_ids(200, 9), 56)  # exactly one row: the last decode writes position 254
    expected = exact.plain(model)
    assert _run_all(engine, [exact]) == [expected]
    assert len(expected) == 56 and exact.stream.finish_reason == "length"


def test_requests_wait_for_a_free_row_and_all_complete(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any
) -> None:
    reqs = [
        Req(_chat(processor, "First."), 10),
        Req(_chat(processor, "Second, with a picture.", (_picture(60, 200, 10),)), 8),
        Req(_chat(processor, "Third."), 12),
    ]
    expected = [r.plain(model) for r in reqs]
    engine = engines(model, rows=1)
    assert _run_all(engine, reqs) == expected
    assert [r.stream.finish_reason for r in reqs] == ["length"] * 3


# ------------------------------------------------------------------------------------------- failures


def test_out_of_memory_in_one_prefill_fails_only_that_request(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _chat(processor, "Too big.", (_picture(700, 100, 11),))
    marker_sizes = marker["image_sizes"].tolist()
    good = [
        Req(_chat(processor, "Fine.", (_picture(100, 80, 12),)), 15),
        Req(_chat(processor, "Text only."), 20),
    ]
    after = Req(_chat(processor, "Afterwards.", (_picture(300, 120, 13),)), 10)
    expected = [r.plain(model) for r in (*good, after)]
    assert all(r.inputs["image_sizes"].tolist() != marker_sizes for r in (good[0], after))

    tower = model.model.vision_embed_tokens
    original = tower.forward

    def forward(pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        if image_sizes.tolist() == marker_sizes:
            raise torch.cuda.OutOfMemoryError("injected: CUDA out of memory")
        return original(pixel_values, image_sizes)

    monkeypatch.setattr(tower, "forward", forward)
    engine = engines(model, rows=3)
    readers = [_submit(engine, r) for r in (good[0], Req(marker, 15), good[1])]
    with pytest.raises(torch.cuda.OutOfMemoryError, match="injected"):
        readers[1].result()
    assert readers[1].tokens == [] and readers[1].stream.finish_reason == "error"
    assert [readers[0].result(), readers[2].result()] == expected[:2]
    assert _run_all(engine, [after]) == [expected[2]]
    assert engine.load() == (0, 0)


def test_a_failed_decode_step_fails_its_requests_and_the_engine_keeps_serving(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, lm_head_gate: Gate
) -> None:
    reqs = [Req(_chat(processor, "One."), 200), Req(_chat(processor, "Two.", (_picture(100, 80, 14),)), 200)]
    after = Req(_chat(processor, "Three."), 12)
    expected = [r.plain(model) for r in (*reqs, after)]
    engine = engines(model, rows=2)
    readers = [_submit(engine, r) for r in reqs]
    for reader in readers:
        reader.wait_first()
    lm_head_gate.hold(when=lambda x: x.shape[0] > 1)  # a decode step of both rows
    lm_head_gate.release(RuntimeError("injected decode failure"))
    for reader, want in zip(readers, expected, strict=False):
        with pytest.raises(RuntimeError, match="injected decode failure"):
            reader.result()
        assert 0 < len(reader.tokens) < 200 and reader.tokens == want[: len(reader.tokens)]
        assert reader.stream.finish_reason == "error"
    assert engine.load() == (0, 0)
    assert _run_all(engine, [after]) == [expected[2]]


def test_a_failed_first_token_sample_fails_only_that_request(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, lm_head_gate: Gate
) -> None:
    """A NaN temperature makes the sampler raise on the request's first token, right after its prefill.
    Only that request may fail: the running one goes on, and the one admitted in the same turn runs."""
    running = Req(_chat(processor, "Already running."), 60)
    broken = Req(_chat(processor, "Broken sampler."), 10, SamplingParams(temperature=float("nan")))
    beside = Req(_chat(processor, "Admitted with it."), 8)
    after = Req(_chat(processor, "Admitted later."), 12)  # longer than `beside`: ends a turn later
    expected = {id(r): r.plain(model) for r in (running, beside, after)}
    with pytest.raises(RuntimeError, match="probability tensor"):
        broken.plain(model)  # the plain path raises the same error

    engine = engines(model, rows=3)
    first = _submit(engine, running)
    first.wait_first()
    lm_head_gate.hold()  # the engine is inside a decode step: both of the next are admitted together
    readers = [_submit(engine, r) for r in (broken, beside)]
    lm_head_gate.release()
    with pytest.raises(RuntimeError, match="probability tensor"):
        readers[0].result()
    assert _run_all(engine, [after]) == [expected[id(after)]]
    # `beside` was queued before `after` and needs fewer tokens, so it must have ended by now.
    assert beside.stream.finish_reason == "length", "the request admitted beside the failing one was lost"
    assert readers[1].result() == expected[id(beside)]
    assert first.result() == expected[id(running)]


def test_close_fails_pending_requests_and_refuses_new_ones(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any, lm_head_gate: Gate
) -> None:
    engine = engines(model, rows=1)
    running, waiting = Req(_chat(processor, "Long."), 200), Req(_chat(processor, "Queued."), 10)
    readers = [_submit(engine, r) for r in (running, waiting)]
    readers[0].wait_first()
    lm_head_gate.hold()
    closer = threading.Thread(target=engine.close)
    closer.start()
    lm_head_gate.release()
    closer.join(TIMEOUT_S)
    for reader in readers:
        with pytest.raises(ServerError, match="shut down") as caught:
            reader.result()
        assert caught.value.code == "E2000"
    with pytest.raises(ServerError, match="not running"):
        engine.submit(Req(_chat(processor, "Too late."), 5).job())


# ------------------------------------------------------------------------------------------- asyncio


def test_asyncio_readers_get_the_same_tokens(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, engines: Any
) -> None:
    reqs = [
        Req(_chat(processor, "Async one."), 14),
        Req(_chat(processor, "Async two.", (_picture(100, 80, 15),)), 9),
        Req(_chat(processor, "Async three."), 11, SamplingParams(temperature=0.8, seed=4)),
    ]
    expected = [r.plain(model) for r in reqs]
    engine = engines(model, rows=2)

    async def read(stream: TokenStream) -> list[int]:
        return [token async for token in stream]

    async def main() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        for r in reqs:
            r.stream.bind(loop)
            engine.submit(r.job())
        return list(await asyncio.wait_for(asyncio.gather(*(read(r.stream) for r in reqs)), TIMEOUT_S))

    assert asyncio.run(main()) == expected


# ------------------------------------------------------------------------------------------- PlainEngine


def test_plain_engine_gives_generate_tokens_output_and_handles_cancel(
    model: Phi3VForCausalLM, processor: Phi3VProcessor, lm_head_gate: Gate, stop_ids: frozenset[int]
) -> None:
    reqs = [
        Req(_chat(processor, "Plain one.", (_picture(100, 80, 16),)), 12, stop_ids=stop_ids),
        Req(_chat(processor, "Plain two."), 10, SamplingParams(temperature=0.7, top_k=20, seed=5)),
    ]
    long = Req(_chat(processor, "Go on."), 200)
    cancelled_early = Req(_chat(processor, "Never mind."), 10)
    expected = [r.plain(model) for r in (*reqs, long)]
    engine = PlainEngine(model, capacity=model.config.max_position_embeddings)
    try:
        assert engine.rows == 1 and engine.capacity == model.config.max_position_embeddings
        assert _run_all(engine, reqs) == expected[:2]

        reader = _submit(engine, long)
        reader.wait_first()
        lm_head_gate.hold()
        long.stream.cancel()
        lm_head_gate.release()
        got = reader.result()
        assert long.stream.finish_reason == "cancelled"
        assert 0 < len(got) < 200 and got == expected[2][: len(got)]

        cancelled_early.stream.cancel()
        assert _run_all(engine, [cancelled_early]) == [[]]
        assert cancelled_early.stream.finish_reason == "cancelled"
    finally:
        lm_head_gate.opened.set()
        engine.close()
