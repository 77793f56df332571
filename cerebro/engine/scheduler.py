# Written with AI assistance; review before relying on it.
"""Continuous batching: one engine thread owns the GPU and decodes every running request together.

    submit(job) -> waiting queue -> [a free row] -> prefill -> running rows 0..n-1 -> decode steps -> done

Each loop turn admits waiting requests into free rows (a prefill each, which yields their first token),
then runs ONE decode step for all running rows, samples each row with its own settings, and streams
each token to its reader. A request leaves as soon as it stops (stop token, max_new_tokens, a finished
JSON constraint, or cancel), and its row goes to the next waiting request at the next turn. Running rows
stay contiguous (the last row moves into a freed one) so a step is always rows 0..n-1.

Budget: every row holds `capacity` tokens. A request needing more (prompt + max_new_tokens) is refused
at submit with E2020; one that fits waits in the queue until a row is free.

Failures: an exception in a request's prefill, rotary re-encode or sampling fails that request; one
in the batched decode forward fails the requests of that step. Either way their rows are freed and the
loop goes on. Exceptions reach the
reader unchanged (the runner translates them at the edge, e.g. CUDA out-of-memory -> E2031).

LongRoPE: a row whose sequence reaches original_max + 1 tokens is re-encoded whole with the long
factors (reusing its image features), as the plain path does; the other rows are not affected.

Not here: tensors of the forward pass (forward.py), text and stats (the serving core).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from cerebro.engine.decoder import Decoder
from cerebro.engine.forward import BatchForward
from cerebro.engine.kv_cache import RowKVCache
from cerebro.engine.stream import TokenStream
from cerebro.errors import CapacityError, ServerError
from cerebro.finish import FinishReason, LogitsConstraint, finish_after
from cerebro.generation import Sampler
from cerebro.utils.logs import OPERATOR_LOGGER

log = logging.getLogger(__name__)
operator_log = logging.getLogger(OPERATOR_LOGGER)  # tracebacks: the server's log, never a caller's


@dataclass(eq=False)
class Job:
    """One request as the engine sees it: token ids, images, and how to sample and stop."""

    input_ids: torch.Tensor  # [1, T]; a family may mark image positions with negative ids
    extras: dict[str, torch.Tensor]  # the family's other prefill inputs (pixel_values, ...), opaque here
    max_new_tokens: int
    sampler: Sampler
    stop_ids: frozenset[int]
    constraint: LogitsConstraint | None = None
    stream: TokenStream = field(default_factory=TokenStream)
    # Engine state, owned by the engine thread.
    row: int = -1
    length: int = 0  # tokens in the cache
    variant: int = 0  # the rotary table the row's cache was built with (LongRoPE: 1 = long factors)
    generated: list[int] = field(default_factory=list)
    reuse: Any = None  # what a re-encode may reuse from the prefill (image features)
    seen: torch.Tensor | None = None  # ids in the sequence, for the repetition penalty

    @property
    def prompt_length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def tokens_needed(self) -> int:
        return self.prompt_length + self.max_new_tokens

    @property
    def plain_greedy(self) -> bool:
        p = self.sampler.params
        return p.temperature == 0.0 and p.repetition_penalty == 1.0 and self.constraint is None

    def sample(self, logits: torch.Tensor) -> int:
        """logits [V] float32 (may be modified in place) -> the next token; advances the constraint."""
        if self.constraint is not None:
            self.constraint.mask(logits)
        if self.seen is None and self.sampler.params.repetition_penalty != 1.0:
            ids = self.input_ids[0]
            done = torch.tensor(self.generated, dtype=torch.long)
            self.seen = torch.cat([ids[ids >= 0], done]).to(logits.device)
        token = self.sampler(logits, self.seen)
        if self.constraint is not None:
            self.constraint.accept(token)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, torch.tensor([token], device=self.seen.device)])
        return token


class Engine:
    def __init__(self, decoder: Decoder, *, rows: int, capacity: int, cuda_graphs: bool) -> None:
        shape = decoder.shape
        self.cache = RowKVCache(
            num_layers=shape.num_layers,
            rows=rows,
            kv_heads=shape.kv_heads,
            capacity=capacity,
            head_dim=shape.head_dim,
            dtype=decoder.dtype,
            device=decoder.device,
        )
        self.forward = BatchForward(decoder, self.cache, cuda_graphs=cuda_graphs)
        self.rows, self.capacity = rows, capacity
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []  # index = row
        self._cond = threading.Condition()
        self._closed = False
        self.submitted = 0  # requests ever queued (operators and tests read it; only submit() writes it)
        self._thread = threading.Thread(target=self._loop, name="cerebro-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------- public

    def submit(self, job: Job) -> None:
        """Queue a request; raises CapacityError (E2020) when it can never fit a row."""
        if job.tokens_needed > self.capacity:
            raise CapacityError(
                f"the request needs {job.tokens_needed} tokens of KV cache ({job.prompt_length} prompt + "
                f"{job.max_new_tokens} max_new_tokens); this deployment holds at most {self.capacity} per "
                "request. Lower max_new_tokens or num_crops, or give it more room with "
                "CEREBRO_KV_CACHE_TOKENS or a lower CEREBRO_MAX_BATCH",
                field="max_new_tokens",
                code="E2020",
            )
        with self._cond:
            if self._closed or not self._thread.is_alive():
                raise ServerError("the generation engine is not running", code="E2000")
            self._waiting.append(job)
            self.submitted += 1
            self._cond.notify()

    @property
    def device(self) -> torch.device:
        return self.forward.device

    def capture_graphs(self) -> tuple[int, float]:
        """Capture the decode CUDA graph of every (batch, span) bucket before serving (a no-op on CPU);
        returns (graphs, seconds). Call it while no request runs: capture writes to idle rows."""
        with self._cond:
            if self._running or self._waiting:
                raise RuntimeError("capture_graphs() while requests are running")
            return self.forward.capture_all(self.capacity)

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests right now."""
        with self._cond:
            return len(self._running), len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running:
                    self._cond.wait()
                if self._closed:
                    break
                free = self.rows - len(self._running)
                admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                for job in admitted:
                    self._admit(job)
                if self._running:
                    self._step()
            except BaseException as err:  # the loop must outlive any one failure
                log.error("engine_step_failed running=%d error=%s", len(self._running), type(err).__name__)
                operator_log.error("engine_step_failed", exc_info=err)
                stranded = [j for j in admitted if j not in self._running and not j.stream.finish_reason]
                self._fail([*self._running, *stranded], err)
        error = ServerError("the generation engine was shut down", code="E2000")
        with self._cond:
            pending = list(self._waiting) + self._running
            self._waiting.clear()
        self._fail(pending, error)

    def _admit(self, job: Job) -> None:
        if job.stream.cancelled or job.max_new_tokens < 1:
            job.stream.finish(FinishReason.CANCELLED if job.stream.cancelled else FinishReason.LENGTH)
            return
        row = len(self._running)
        try:
            logits, job.reuse = self.forward.prefill(row, job.input_ids, job.extras)
            token = self._pick(job, logits)
        except BaseException as err:  # fails this request only; it holds no row yet
            job.stream.fail(err)
            self._after_failure(err)
            return
        if job.stream.cancelled:  # cancelled during its prefill: its first token never reaches the reader
            job.stream.finish(FinishReason.CANCELLED)
            return
        job.row, job.length, job.variant = row, job.prompt_length, self.forward.variant(job.prompt_length)
        job.extras = {}  # the features live on in `reuse`; let the pixels go
        self._running.append(job)
        self._emit(job, token)

    def _step(self) -> None:
        for job in [j for j in self._running if j.stream.cancelled]:
            self._release(job, FinishReason.CANCELLED)
        # A row whose next token changes its rotary table (LongRoPE: original_max + 1 tokens) is re-encoded
        # whole with the new table.
        for job in [j for j in self._running if self.forward.variant(j.length + 1) != j.variant]:
            sequence = torch.cat([job.input_ids, torch.tensor([job.generated])], dim=1)  # 1, length + 1
            try:
                logits, _ = self.forward.prefill(job.row, sequence, {}, job.reuse)
                job.length = int(sequence.shape[1])
                job.variant = self.forward.variant(job.length)
                token = self._pick(job, logits)
            except BaseException as err:  # fails this request only
                self._fail([job], err)
                continue
            self._emit(job, token)
        running = list(self._running)
        if not running:
            return
        # A failure here (the forward itself) fails every request of the step: raised to _loop.
        logits = self.forward.decode(
            [j.generated[-1] for j in running], [j.length for j in running], [j.variant for j in running]
        )  # n, V
        greedy = logits.argmax(dim=-1).tolist() if any(j.plain_greedy for j in running) else []
        for job in running:  # all before any _emit: a release moves rows, and must copy the new token too
            job.length += 1
        for i, job in enumerate(running):
            try:
                token = greedy[i] if job.plain_greedy else job.sample(logits[i])
            except BaseException as err:  # a sampler or constraint error: this request only
                self._fail([job], err)
                continue
            self._emit(job, token)

    def _pick(self, job: Job, logits: torch.Tensor) -> int:
        return int(logits.argmax()) if job.plain_greedy else job.sample(logits)

    def _emit(self, job: Job, token: int) -> None:
        job.generated.append(token)
        job.stream.put(token)
        reason = finish_after(
            token,
            len(job.generated),
            stop_ids=job.stop_ids,
            constraint=job.constraint,
            max_new_tokens=job.max_new_tokens,
        )
        if reason is not None:
            self._release(job, reason)

    def _release(self, job: Job, reason: FinishReason) -> None:
        self._free_row(job)
        job.stream.finish(reason)

    def _fail(self, jobs: list[Job], err: BaseException) -> None:
        for job in jobs:
            self._free_row(job)
            job.stream.fail(err)
        self._after_failure(err)

    def _free_row(self, job: Job) -> None:
        """The last running row moves into the job's row, so running rows stay 0..n-1."""
        if job not in self._running:
            return
        last = self._running[-1]
        if last is not job:
            self.cache.move_row(last.row, job.row, last.length)
            last.row = job.row
            self._running[job.row] = last
        self._running.pop()

    @staticmethod
    def _after_failure(err: BaseException) -> None:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()  # give the failed request's blocks back before the next one
