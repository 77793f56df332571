# Written with AI assistance; review before relying on it.
"""The serving core: one ModelAdapter for every model family.

    request -> family.model_inputs -> engine Job -> token stream -> Transcript -> text pieces

What it owns, once for all families: the device and dtype choice, the engine (batching over the
family's Decoder, or plain), the context-window check, sampling settings and seeds, JSON-schema
constraints (xgrammar, built on first use), the sync and async readers, counters and warm-up. A family
(cerebro/families) supplies only what is model-specific.

Not here: the Cog boundary and capability checks on raw inputs (predict.py), tensors of the forward
pass (cerebro/engine).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from cerebro.adapters.base import Capabilities, GenerationStats, ModelAdapter
from cerebro.engine import Engine, Job, PlainEngine, build_engine
from cerebro.errors import ConfigError, PromptError
from cerebro.families import get_family
from cerebro.families.base import Family, LoadOptions
from cerebro.generation import Sampler, SamplingParams
from cerebro.models.attention import resolve_attention
from cerebro.request import GenerationRequest
from cerebro.settings import Settings
from cerebro.structured import JsonSchemaCompiler
from cerebro.transcript import Transcript

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device_and_dtype(settings: Settings) -> tuple[torch.device, torch.dtype]:
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if settings.dtype != "auto":
        if settings.dtype not in DTYPES:
            raise ConfigError(
                f"CEREBRO_DTYPE={settings.dtype!r}; use auto, bfloat16, float16 or float32",
                field="CEREBRO_DTYPE",
            )
        return device, DTYPES[settings.dtype]
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


@dataclass
class Prepared:
    """A request ready for the engine: its job (tensors, sampler, stream) and what turns tokens to text."""

    job: Job
    transcript: Transcript


class ServingCore(ModelAdapter):
    name: ClassVar[str] = "core"

    def __init__(
        self, family: Family, max_context_tokens: int, engine: Engine | PlainEngine | None = None
    ) -> None:
        self.family = family
        self.model = family.model
        self.tokenizer = family.tokenizer
        self.stop_ids = family.stop_ids
        self.engine = (
            engine if engine is not None else PlainEngine(family.plain_model(), capacity=family.max_positions)
        )
        self.timings: dict[str, float] = {}  # setup parts in seconds, for the setup log
        self.capabilities = Capabilities(
            max_images=family.max_images,
            json_schema=family.json_schema,
            streaming=True,
            max_context_tokens=min(max_context_tokens, family.max_positions),
            options=family.options,
            min_images=family.min_images,
            prompt_required=family.prompt_required,
        )
        self._schema_compiler: JsonSchemaCompiler | None = None

    @classmethod
    def load(cls, settings: Settings) -> ServingCore:
        """The family named by the settings (CEREBRO_FAMILY; auto = from config.json), loaded once."""
        started = time.perf_counter()
        family_class = get_family(settings.family, settings.model_dir)  # imports its model code
        family_import_s = time.perf_counter() - started
        device, dtype = resolve_device_and_dtype(settings)
        try:
            attention = resolve_attention(settings.attention)
        except ValueError as err:  # a deployment setting, not a broken model: say which variable
            raise ConfigError(f"CEREBRO_ATTENTION: {err}", field="CEREBRO_ATTENTION") from None
        started = time.perf_counter()
        family = family_class.load(settings.model_dir, LoadOptions(device, dtype, attention))
        loaded = time.perf_counter()
        decoder = family.decoder()
        engine = build_engine(
            settings,
            decoder=decoder,
            plain_model=family.plain_model(),
            max_context_tokens=min(settings.max_context_tokens, family.max_positions),
        )
        if decoder is None and settings.engine != "plain":
            log.info("engine=plain family=%s reason=%s", family.name, family.plain_reason or "no decoder")
        core = cls(family, settings.max_context_tokens, engine)
        core.timings.update(
            family_import_s=family_import_s, weights_s=loaded - started, engine_s=time.perf_counter() - loaded
        )
        return core

    def describe(self) -> dict[str, str]:
        return {
            "family": self.family.name,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            **self.family.describe(),
            "max_context_tokens": str(self.capabilities.max_context_tokens),
            "engine": type(self.engine).__name__,
            "rows": str(self.engine.rows),
            "row_capacity_tokens": str(self.engine.capacity),
            **{k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in self.timings.items()},
        }

    def schema_compiler(self) -> JsonSchemaCompiler:
        if self._schema_compiler is None:  # built on first use: most requests carry no schema
            self._schema_compiler = JsonSchemaCompiler(
                self.tokenizer, self.family.vocab_size, sorted(self.stop_ids)
            )
        return self._schema_compiler

    def prepare(self, request: GenerationRequest, stats: GenerationStats) -> Prepared:
        """Preprocess (CPU: schema, images, tokens) into an engine job, not yet queued. Raises E1xxx for
        the caller's mistakes."""
        started = time.perf_counter()
        constraint = self.schema_compiler().compile(request.json_schema) if request.json_schema else None
        inputs = self.family.model_inputs(request)
        n_prompt = int(inputs.input_ids.shape[1])
        limit = self.capabilities.max_context_tokens
        if n_prompt + request.max_new_tokens > limit:
            crops = "num_crops, " if "num_crops" in self.family.options else ""
            raise PromptError(
                f"the prompt is {n_prompt} tokens ({inputs.image_tokens} of them for {len(request.images)} "
                f"image(s)) and max_new_tokens is {request.max_new_tokens}: "
                f"{n_prompt + request.max_new_tokens} in all; the limit is {limit}. Shorten the prompt, "
                f"lower {crops}max_new_tokens or send fewer images",
                field="prompt",
                code="E1011",
            )
        stats.input_token_count = n_prompt
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        stats.seed = seed
        sampler = Sampler(
            SamplingParams(
                request.temperature, request.top_p, request.top_k, request.repetition_penalty, seed
            ),
            self.model.device,
        )
        job = Job(
            input_ids=inputs.input_ids,
            extras=inputs.extras,
            max_new_tokens=request.max_new_tokens,
            sampler=sampler,
            stop_ids=self.stop_ids,
            constraint=constraint,
        )
        return Prepared(job, Transcript(self.tokenizer, self.stop_ids, stats, started, request))

    def stream(
        self, prepared: Prepared, stats: GenerationStats, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        stream, transcript = prepared.job.stream, prepared.transcript
        if cancel is not None:
            stream.cancel_event = cancel
        self.engine.submit(prepared.job)  # E2020 when it can never fit a row
        del prepared
        try:
            for token in stream:
                if piece := transcript.push(token):
                    yield piece
        finally:
            stream.cancel()  # a reader that stops early frees the row; a no-op once the engine is done
        if tail := transcript.close(stream.finish_reason):
            yield tail

    async def astream(self, prepared: Prepared, stats: GenerationStats) -> AsyncIterator[str]:
        stream, transcript = prepared.job.stream, prepared.transcript
        stream.bind(asyncio.get_running_loop())
        self.engine.submit(prepared.job)
        del prepared
        try:
            async for token in stream:
                if piece := transcript.push(token):
                    yield piece
        finally:
            stream.cancel()  # cancelled by the server, or the reader left: the row is freed next step
        if tail := transcript.close(stream.finish_reason):
            yield tail

    def counters(self) -> dict[str, int]:
        running, waiting = self.engine.load()  # after this request left: what else holds a row or waits
        return {"engine_jobs": self.engine.submitted, "engine_running": running, "engine_waiting": waiting}

    def warmup(self) -> float:
        """Capture the decode CUDA graphs (GPU), then one short generation on the family's warm-up
        request: proves the model runs and warms the kernels, so the first user request pays for neither."""
        started = time.perf_counter()
        if isinstance(self.engine, Engine):
            graphs, graphs_s = self.engine.capture_graphs()
            self.timings.update(cuda_graphs=graphs, cuda_graphs_s=graphs_s)
        for _ in self.generate(self.family.warmup_request(), GenerationStats()):
            pass
        return time.perf_counter() - started
