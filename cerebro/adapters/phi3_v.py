# Written with AI assistance; review before relying on it.
"""Phi-3.5-vision-instruct as a Cerebro adapter: request -> chat prompt -> processor -> token stream.

Owns what is specific to this model: image tags (`<|image_N|>` added when the prompt has none), the
chat template, the num_crops default (Microsoft's advice: 16 for one image, 4 for several), the
stop tokens (`<|end|>`, `<|endoftext|>`, `</s>`) and the context check. Sampling and the decode
loop are cerebro/generation.py; the model itself is cerebro/models/phi3_v.
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
from cerebro.errors import ConfigError, PromptError, WeightsError
from cerebro.generation import FinishReason, IncrementalDecoder, Sampler, SamplingParams
from cerebro.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
from cerebro.models.phi3_v.image_processing import Phi3VImageProcessor
from cerebro.models.phi3_v.processing import IMAGE_TAG, check_image_tags, image_tag, render_chat
from cerebro.models.phi3_v.weights import resolve_attention
from cerebro.request import GenerationRequest
from cerebro.settings import Settings
from cerebro.structured import JsonSchemaCompiler, validate_output

log = logging.getLogger(__name__)

STOP_TOKENS = ("<|end|>", "<|endoftext|>", "</s>")
NUM_CROPS_ONE_IMAGE, NUM_CROPS_SEVERAL = 16, 4


def resolve_device_and_dtype(settings: Settings) -> tuple[torch.device, torch.dtype]:
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if settings.dtype != "auto":
        names = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        if settings.dtype not in names:
            raise ConfigError(
                f"CEREBRO_DTYPE={settings.dtype!r}; use auto, bfloat16, float16 or float32",
                field="CEREBRO_DTYPE",
            )
        return device, names[settings.dtype]
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def build_prompt(request: GenerationRequest) -> list[dict[str, str]]:
    """Chat messages; image tags for every image are prepended when the prompt has none."""
    n = len(request.images)
    content = request.prompt
    if IMAGE_TAG.search(content) is None:
        content = "".join(f"{image_tag(k)}\n" for k in range(1, n + 1)) + content
    check_image_tags(content, n)
    messages = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    return [*messages, {"role": "user", "content": content}]


class Transcript:
    """One request's tokens in, its text pieces out; keeps GenerationStats current and validates a JSON
    answer at the end. Shared by the sync and async readers."""

    def __init__(
        self,
        tokenizer: object,
        stop_ids: frozenset[int],
        stats: GenerationStats,
        started: float,
        request: GenerationRequest,
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_ids, self.stats, self.started = stop_ids, stats, started
        # Only what the end needs: holding the request would keep its images alive while it generates.
        self.json_schema, self.max_new_tokens = request.json_schema, request.max_new_tokens
        self.text: list[str] = []
        self.first_at: float | None = None

    def push(self, token: int) -> str:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.stats.time_to_first_token = now - self.started
        self.stats.output_token_count += 1
        if token in self.stop_ids:
            return ""
        piece = self.decoder.push(token)
        self.text.append(piece)
        return piece

    def close(self, finish_reason: str) -> str:
        """The end of the text; raises E2032 when a JSON answer does not validate."""
        stats = self.stats
        stats.finish_reason = finish_reason
        tail = self.decoder.flush()
        self.text.append(tail)
        if self.first_at is not None and stats.output_token_count > 1:
            stats.tokens_per_second = (stats.output_token_count - 1) / max(
                time.perf_counter() - self.first_at, 1e-9
            )
        if self.json_schema is not None and finish_reason != FinishReason.CANCELLED:
            validate_output("".join(self.text), self.json_schema, self.max_new_tokens)
        return tail


@dataclass
class Prepared:
    """A request ready for the engine: its job (tensors, sampler, stream) and what turns tokens to text."""

    job: Job
    transcript: Transcript


class Phi3VAdapter(ModelAdapter):
    name: ClassVar[str] = "phi3_v"

    def __init__(
        self,
        model: Phi3VForCausalLM,
        processor: Phi3VProcessor,
        max_context_tokens: int,
        engine: Engine | PlainEngine | None = None,
    ) -> None:
        self.model = model
        self.engine = engine if engine is not None else PlainEngine(model)
        self.timings: dict[str, float] = {}  # setup parts in seconds, for the setup log
        self.processor = processor
        self.tokenizer = processor.tokenizer
        limit = min(max_context_tokens, int(model.config.max_position_embeddings))
        self.capabilities = Capabilities(
            max_images=16, json_schema=True, streaming=True, max_context_tokens=limit
        )
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
        self.stop_ids = frozenset(i for i in ids if isinstance(i, int) and i >= 0)
        self._processors: dict[int, Phi3VProcessor] = {}
        self._schema_compiler: JsonSchemaCompiler | None = None

    @classmethod
    def load(cls, settings: Settings) -> Phi3VAdapter:
        device, dtype = resolve_device_and_dtype(settings)
        try:
            attention = resolve_attention(settings.attention)
        except ValueError as err:  # a deployment setting, not a broken model: say which variable
            raise ConfigError(f"CEREBRO_ATTENTION: {err}", field="CEREBRO_ATTENTION") from None
        started = time.perf_counter()
        model = Phi3VForCausalLM.from_pretrained(
            settings.model_dir, torch_dtype=dtype, attn_implementation=attention, device=device
        )
        loaded = time.perf_counter()
        if not (settings.model_dir / "tokenizer.json").is_file():
            raise WeightsError(
                f"{settings.model_dir} holds weights but no tokenizer.json; copy the checkpoint's tokenizer "
                "files into it",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        processor = Phi3VProcessor.from_pretrained(settings.model_dir)
        processed = time.perf_counter()
        engine = build_engine(model, settings)
        adapter = cls(model, processor, settings.max_context_tokens, engine)
        adapter.timings.update(
            weights_s=loaded - started,
            processor_s=processed - loaded,
            engine_s=time.perf_counter() - processed,  # KV-cache allocation
        )
        return adapter

    def describe(self) -> dict[str, str]:
        return {
            "adapter": self.name,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "attention": str(self.model.config._attn_implementation),
            "max_context_tokens": str(self.capabilities.max_context_tokens),
            "engine": type(self.engine).__name__,
            "rows": str(self.engine.rows),
            "row_capacity_tokens": str(self.engine.capacity),
            **{k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in self.timings.items()},
        }

    def processor_for(self, num_crops: int) -> Phi3VProcessor:
        """One processor per num_crops, kept: each builds its caller-text encoder once."""
        if num_crops not in self._processors:
            base = self.processor.image_processor
            image_processor = Phi3VImageProcessor(
                num_crops=num_crops,
                image_mean=tuple(base.mean.flatten().tolist()),
                image_std=tuple(base.std.flatten().tolist()),
                crop_size=base.crop_size,
                patch_size=base.patch_size,
            )
            self._processors[num_crops] = Phi3VProcessor(image_processor, self.tokenizer)
        return self._processors[num_crops]

    def schema_compiler(self) -> JsonSchemaCompiler:
        if self._schema_compiler is None:  # built on first use: most requests carry no schema
            self._schema_compiler = JsonSchemaCompiler(
                self.tokenizer, int(self.model.config.vocab_size), sorted(self.stop_ids)
            )
        return self._schema_compiler

    def model_inputs(self, request: GenerationRequest) -> dict[str, torch.Tensor]:
        """Prompt and images -> model inputs; raises PromptError when they do not fit the context."""
        num_crops = request.num_crops or (
            NUM_CROPS_ONE_IMAGE if len(request.images) == 1 else NUM_CROPS_SEVERAL
        )
        # The caller's text is text: only the chat template's own markers become special tokens, so a
        # prompt that types "<|end|><|assistant|>" cannot forge a turn (processing.render_chat).
        prompt, caller_spans = render_chat(self.tokenizer, build_prompt(request))
        processor = self.processor_for(num_crops)
        inputs = dict(processor(text=prompt, images=list(request.images), literal_spans=caller_spans))
        n_prompt = int(inputs["input_ids"].shape[1])
        limit = self.capabilities.max_context_tokens
        if n_prompt + request.max_new_tokens > limit:
            n_image = int((inputs["input_ids"] < 0).sum())
            raise PromptError(
                f"the prompt is {n_prompt} tokens ({n_image} of them for {len(request.images)} image(s) at "
                f"num_crops={num_crops}) and max_new_tokens is {request.max_new_tokens}: "
                f"{n_prompt + request.max_new_tokens}"
                f" in all; the limit is {limit}. Shorten the prompt, lower num_crops or max_new_tokens",
                field="prompt",
                code="E1011",
            )
        inputs.pop("num_img_tokens", None)
        return inputs

    def prepare(self, request: GenerationRequest, stats: GenerationStats) -> Prepared:
        """Preprocess (CPU: schema, images, tokens) into an engine job, not yet queued. Raises E1xxx for
        the caller's mistakes."""
        started = time.perf_counter()
        constraint = self.schema_compiler().compile(request.json_schema) if request.json_schema else None
        inputs = self.model_inputs(request)
        stats.input_token_count = int(inputs["input_ids"].shape[1])
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        stats.seed = seed
        sampler = Sampler(
            SamplingParams(
                request.temperature, request.top_p, request.top_k, request.repetition_penalty, seed
            ),
            self.model.device,
        )
        job = Job(
            input_ids=inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            image_sizes=inputs.get("image_sizes"),
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
        return {"engine_jobs": self.engine.submitted}

    def warmup(self) -> float:
        """Capture the decode CUDA graphs (GPU), then one short generation on a synthetic image: proves the
        model runs and warms the kernels, so the first user request pays for neither."""
        from PIL import Image

        started = time.perf_counter()
        if isinstance(self.engine, Engine):
            graphs, graphs_s = self.engine.capture_graphs()
            self.timings.update(cuda_graphs=graphs, cuda_graphs_s=graphs_s)
        request = GenerationRequest(
            prompt="What is in this image?",
            images=(Image.new("RGB", (64, 48), "gray"),),
            max_new_tokens=2,
            num_crops=1,
        )
        for _ in self.generate(request, GenerationStats()):
            pass
        return time.perf_counter() - started
