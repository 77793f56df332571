# Written with AI assistance; review before relying on it.
"""cerebro.generation: the Sampler against argmax and transformers' own logits processors, and the
IncrementalDecoder against a whole-sequence decode with the real Phi-3.5 tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast, RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from cerebro.generation import IncrementalDecoder, Sampler, SamplingParams

CPU = torch.device("cpu")
VOCAB = 64
DRAWS = 200


def _logits(seed: int, vocab: int = VOCAB, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) + shift


def _draws(params: SamplingParams, logits: torch.Tensor, n: int = DRAWS) -> list[int]:
    sampler = Sampler(params, CPU)
    return [sampler(logits.clone(), None) for _ in range(n)]


# -------------------------------------------------------------------------------------------- Sampler


@pytest.mark.parametrize("seed", range(10))
def test_greedy_is_argmax(seed: int) -> None:
    logits = _logits(seed)
    assert Sampler(SamplingParams(temperature=0.0, seed=seed), CPU)(logits, None) == int(logits.argmax())


def test_the_same_seed_gives_the_same_samples_and_other_seeds_differ() -> None:
    logits = _logits(0) * 0.3  # a flat distribution: many tokens are likely
    first = _draws(SamplingParams(temperature=1.0, seed=123), logits)
    assert len(set(first)) > 10  # it does sample, not always pick the same token
    assert _draws(SamplingParams(temperature=1.0, seed=123), logits) == first
    others = [_draws(SamplingParams(temperature=1.0, seed=s), logits) for s in (124, 2**32 - 1, 0)]
    assert all(o != first for o in others)
    assert others[0] != others[1] != others[2]


def test_a_sampler_does_not_depend_on_the_global_rng() -> None:
    logits = _logits(1) * 0.3
    params = SamplingParams(temperature=1.0, seed=5)
    torch.manual_seed(0)
    first = _draws(params, logits, 50)
    torch.manual_seed(99)
    torch.rand(1000)
    assert _draws(params, logits, 50) == first


@pytest.mark.parametrize("temperature", [0.1, 1.0, 2.0, 100.0])
def test_top_k_1_is_greedy_at_any_temperature(temperature: float) -> None:
    logits = _logits(2)
    draws = _draws(SamplingParams(temperature=temperature, top_k=1, seed=3), logits, 100)
    assert set(draws) == {int(logits.argmax())}


def test_top_k_samples_only_the_k_most_likely() -> None:
    logits = _logits(3) * 0.1  # nearly flat, so the filter does the work
    top3 = set(torch.topk(logits, 3).indices.tolist())
    draws = _draws(SamplingParams(temperature=1.0, top_k=3, seed=4), logits, 300)
    assert set(draws) == top3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_tiny_top_p_is_greedy(temperature: float) -> None:
    logits = _logits(4)
    draws = _draws(SamplingParams(temperature=temperature, top_p=1e-6, seed=5), logits, 100)
    assert set(draws) == {int(logits.argmax())}


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.75, 0.9])
def test_top_p_keeps_the_same_tokens_as_transformers(top_p: float) -> None:
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = probs.log()
    kept = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits[None].clone())[0]
    expected = {i for i, v in enumerate(kept.tolist()) if math.isfinite(v)}
    draws = _draws(SamplingParams(temperature=1.0, top_p=top_p, seed=6), logits, 400)
    assert set(draws) == expected


@pytest.mark.parametrize("penalty", [0.5, 0.9, 1.3, 1.9])
def test_repetition_penalty_follows_transformers(penalty: float) -> None:
    reference = RepetitionPenaltyLogitsProcessor(penalty)
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=penalty), CPU)
    changed = 0
    for trial in range(200):
        gen = torch.Generator().manual_seed(trial)
        # Every other trial all logits are negative, so both branches of the rule decide a choice.
        logits = torch.randn(VOCAB, generator=gen) * 2 - (8.0 if trial % 2 else 0.0)
        seen = torch.randint(0, VOCAB, (12,), generator=gen)
        # A penalty > 1 can dethrone the favourite; one < 1 can crown the runner-up.
        seen[0] = int(torch.topk(logits, 2).indices[0 if penalty > 1 else 1])
        seen[1] = seen[2]  # a repeated repeat is penalised once, as in transformers
        expected = reference(seen[None], logits[None].clone())[0]
        got = sampler(logits.clone(), seen)
        assert got == int(expected.argmax()), f"trial {trial}"
        changed += got != int(logits.argmax())
    assert changed > 20  # the penalty really changed the choice in many trials


def test_repetition_penalty_ignores_an_empty_history() -> None:
    logits = _logits(7)
    sampler = Sampler(SamplingParams(repetition_penalty=1.9), CPU)
    assert (
        sampler(logits, None) == sampler(logits, torch.tensor([], dtype=torch.long)) == int(logits.argmax())
    )


def test_sampler_leaves_the_callers_logits_alone() -> None:
    logits = _logits(8)
    before = logits.clone()
    Sampler(SamplingParams(temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.5, seed=1), CPU)(
        logits, torch.tensor([int(logits.argmax()), 3])
    )
    assert torch.equal(logits, before)


# ---------------------------------------------------------------------------------- IncrementalDecoder

TEXT = "Hello world!\n  Café naïve — 🦙 emoji 你好\n\nend\tx  déjà vu 😀😀 done"
# The tokenizer's special tokens. "</s>" is an ordinary token in this vocabulary (the adapter stops on it
# before it is decoded), so it is not among them.
SPECIALS = ("<|assistant|>", "<|end|>", "<s>", "<|endoftext|>", "<|user|>", "<|system|>", "<|placeholder1|>")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))


def _stream(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.fixtures
def test_the_text_splits_characters_over_byte_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    """Guards the next tests: they only mean something if some characters span several tokens."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(TEXT, add_special_tokens=False))
    assert tokens.count("<0xF0>") == 3  # three emoji, four byte tokens each
    assert "<0x0A>" in tokens


@pytest.mark.fixtures
def test_deltas_concatenate_to_the_whole_decode(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert sum(1 for d in deltas if d) > 20  # it streams, rather than holding everything to the end
    assert not any("\ufffd" in d for d in deltas)  # a half-received character is held back
    assert "🦙" in deltas  # ... and emitted whole once its last byte arrives


@pytest.mark.fixtures
def test_special_tokens_never_appear(tokenizer: PreTrainedTokenizerFast) -> None:
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIALS]
    assert all(isinstance(i, int) and i >= 0 for i in special)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    mixed = [special[0], *ids[:5], special[1], special[2], *ids[5:15], *special[3:], *ids[15:], special[1]]
    deltas = _stream(tokenizer, mixed)
    text = "".join(deltas)
    assert text == tokenizer.decode(mixed, skip_special_tokens=True)
    for token in SPECIALS:
        assert token not in text
    assert "<|" not in text and "|>" not in text


@pytest.mark.fixtures
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_stream_cut_inside_a_character_flushes_what_decode_gives(
    tokenizer: PreTrainedTokenizerFast, cut: int
) -> None:
    ids = tokenizer.encode("ok 🦙", add_special_tokens=False)
    first_byte = tokenizer.convert_ids_to_tokens(ids).index("<0xF0>")
    ids = ids[: first_byte + cut]
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in "".join(deltas[:-1])  # only the final flush may carry the broken character


@pytest.mark.fixtures
@pytest.mark.parametrize(
    "text", ["a", " leading space", "two  spaces", "x\n\ny", "Ünïcödé 日本語テキスト", "1234567890", "   "]
)
def test_short_texts_round_trip(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids, skip_special_tokens=True)
