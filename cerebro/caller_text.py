# Written with AI assistance; review before relying on it.
"""Caller text stays text: where a caller's strings land in a chat-templated prompt, and a tokenizer run
that cannot turn them into control tokens.

- `locate_texts(render, texts)`: render the template once with the real texts and once with unguessable
  sentinels; the sentinels show where each text lands whatever the template's markup. Returns the prompt
  and each text's [start, end) span, or None for the spans when the template drops, repeats or rewrites
  a text (its spans could not be trusted).
- `TextOnlyEncoder`: tokenizes a prompt so that no added token (special or not) comes out of those spans,
  and everything else exactly as the tokenizer would.

Shared by every family that renders a chat template (cerebro/models/phi3_v/processing.py,
cerebro/families/hf_vlm.py). Not here: image placeholders, which each family checks itself.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerFast

from cerebro.errors import ServerError


def locate_texts(
    render: Callable[[Sequence[str]], str], texts: Sequence[str]
) -> tuple[str, tuple[tuple[int, int], ...] | None]:
    """(render(texts), the span of each text in it, in order) or (render(texts), None) when the rendering
    does not hold each text exactly once, verbatim, where the sentinel rendering put it."""
    direct = render(texts)
    sentinels = [f"cerebro{secrets.token_hex(16)}" for _ in texts]
    skeleton = render(sentinels)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = length = 0  # pos: in the skeleton; length: of the prompt built so far
    for text, sentinel in zip(texts, sentinels, strict=True):
        at = skeleton.find(sentinel, pos)
        if at < 0 or skeleton.count(sentinel) != 1:
            return direct, None
        parts += [skeleton[pos:at], text]
        length += at - pos
        spans.append((length, length + len(text)))
        length += len(text)
        pos = at + len(sentinel)
    parts.append(skeleton[pos:])
    if "".join(parts) != direct:
        return direct, None
    return direct, tuple(spans)


# Rust's `char::is_whitespace` (Unicode White_Space), which decides what an added token's lstrip/rstrip
# swallows; Python's str.isspace() differs (it also takes U+001C..U+001F).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class TextOnlyEncoder:
    """Tokenizes a text chunk in which some spans are caller text that must never become added tokens.

    Why this reproduces the tokenizer exactly: a Hugging Face fast tokenizer first splits the text at
    added-token occurrences (leftmost-longest; a token flagged lstrip/rstrip also swallows the whitespace
    before/after it), then runs normalizer -> pre-tokenizer -> model on each remaining piece on its own,
    then lets the post-processor add BOS/EOS. This class does the same steps itself, with one change:
    added tokens are only looked for OUTSIDE the literal spans. The pieces between tokens, caller text
    included, go through the backend's normalizer, pre-tokenizer and model directly, and those never
    match added tokens. So caller text is always text, and a prompt whose spans hold no added-token
    strings gets the very ids `tokenizer(text)` gives (tests/unit/test_caller_text_tokens.py).

    On purpose, a template token's lstrip/rstrip still swallows whitespace inside an adjacent span (the
    tokenizer does that today, e.g. after `<|assistant|>`), and a token that would straddle a span edge is
    not formed. Not supported, and refused here rather than silently mis-tokenized: added tokens matched
    after normalization (`normalized=True`) or only as whole words (`single_word=True`). A normalizer or
    pre-tokenizer that depends on where a piece sits in the whole text (Metaspace prepend_scheme="first")
    would also differ; the probes in `__init__` catch that and raise.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer
        skip_special = bool(self._backend.encode_special_tokens)  # special tokens read as text, if set
        self._ids: dict[str, int] = {}
        self._lstrip: set[str] = set()
        self._rstrip: set[str] = set()
        for token_id, token in sorted(self._backend.get_added_tokens_decoder().items()):
            if not token.content or (skip_special and token.special):
                continue
            if token.normalized or token.single_word:
                raise ServerError(
                    f"added token {token.content!r} is normalized={token.normalized} "
                    f"single_word={token.single_word}; caller text cannot be kept literal with it"
                )
            self._ids[token.content] = token_id
            if token.lstrip:
                self._lstrip.add(token.content)
            if token.rstrip:
                self._rstrip.add(token.content)
        # Longest first: Python's alternation takes the first branch that matches -> leftmost-longest.
        by_length = sorted(self._ids, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        self._prefix, self._suffix = self._special_affixes()
        for probe in self._probes():
            expected = list(tokenizer(probe).input_ids)
            if self.encode(probe) != expected:
                raise ServerError(
                    f"this tokenizer's pipeline cannot be reproduced piece by piece (probe {probe!r}); "
                    "caller text cannot be kept literal with it"
                )

    def encode(self, text: str, literal: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Ids of `text` with the post-processor's specials (BOS); `literal`: sorted, disjoint spans."""
        ids = list(self._prefix)
        pos = 0
        for start, stop, token_id in self._added_tokens(text, literal):
            ids += self._text_ids(text[pos:start])
            ids.append(token_id)
            pos = stop
        ids += self._text_ids(text[pos:])
        ids += self._suffix
        return ids

    def _added_tokens(self, text: str, literal: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(start, stop, id) of every added token outside the literal spans; start/stop take in the
        whitespace that lstrip/rstrip swallow, which may lie inside a span."""
        found: list[tuple[int, int, int]] = []
        if self._pattern is None:
            return found
        prev_stop = 0
        for a, b in _outside(literal, len(text)):
            for match in self._pattern.finditer(text, a, b):
                start, stop, content = match.start(), match.end(), match.group()
                if start < prev_stop:  # inside whitespace the previous token swallowed
                    continue
                if content in self._lstrip:
                    while start > prev_stop and text[start - 1] in _WHITESPACE:
                        start -= 1
                if content in self._rstrip:
                    while stop < len(text) and text[stop] in _WHITESPACE:
                        stop += 1
                found.append((start, stop, self._ids[content]))
                prev_stop = stop
        return found

    def _text_ids(self, piece: str) -> list[int]:
        """normalizer -> pre-tokenizer -> model on one piece; none of these knows about added tokens."""
        if not piece:
            return []
        backend = self._backend
        normalized = backend.normalizer.normalize_str(piece) if backend.normalizer is not None else piece
        if backend.pre_tokenizer is not None:
            words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
        else:
            words = [normalized]
        return [token.id for word in words if word for token in backend.model.tokenize(word)]

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """What the post-processor puts around one sequence (BOS here), read off a probe encoding."""
        with_specials = list(self.tokenizer("a").input_ids)
        plain = list(self.tokenizer("a", add_special_tokens=False).input_ids)
        for i in range(len(with_specials) - len(plain) + 1):
            if with_specials[i : i + len(plain)] == plain:
                return with_specials[:i], with_specials[i + len(plain) :]
        raise ServerError("the tokenizer's post-processor does not keep the text's ids together")

    def _probes(self) -> list[str]:
        tokens = sorted(self._ids, key=lambda c: self._ids[c])
        tokens = tokens[:: max(1, len(tokens) // 4)]  # a few, spread over the added vocabulary
        joined = "".join(f"{t}\n Probe  text{k} \n" for k, t in enumerate(tokens))
        return ["", " Hello  world \n", f"{joined}tail \u00e9\u4e2d "]


def _outside(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The complement of sorted, disjoint `spans` in [0, length)."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    if pos < length:
        gaps.append((pos, length))
    return gaps
