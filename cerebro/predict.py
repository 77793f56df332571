# Written with AI assistance; review before relying on it.
"""The Cog boundary: inputs in, a validated request to the model adapter, a stream of text out.

No tensor code and no model names here. `run` is async and concurrent: the server runs up to
CONCURRENCY predictions at once and the adapter's engine batches their decoding. Settings are read once
in setup(); every input is validated inside run() (cerebro/request.py), because a Cog server started
without the OpenAPI schema that `cog build` writes validates nothing.

Images are strings (an http(s) URL or a data URI), not Cog `Path` inputs: the Cog server downloads
`Path` inputs itself, to any address and without limits, and passes any other string on as a local
path. As strings they reach Cerebro untouched, and cerebro/utils fetches them under its SSRF policy
and one deadline, or refuses them (a local path: E1106, before any filesystem access).

One request, in order: validate and open the images (headers only) -> check its pixels -> wait for
the memory budget -> decode and preprocess (a worker thread; a cancel meanwhile means the job is never
queued) -> return the pieces. Streamed (the default on coglet 0.23.1): run() returns a generator that
coglet iterates on the prediction's slot thread; its first next() hands the job to the engine, and the
prediction's cancel Event (cerebro/coglet_bridge.py) stops it at the engine's next step. Buffered (the
gate's fallback): run() awaits every piece and returns the list, and coglet cancels the coroutine.

Errors are translated here, once: Cerebro's own errors keep their code (the Cog server shows
"ImageError: E1103 ..."), anything unexpected becomes "E2000 internal error (incident ID)" with the
traceback in the operator's log only, and a CUDA out-of-memory error fails only this prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import secrets
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from cog import BaseRunner, CancelationException, ConcatenateIterator, Input, concurrent, streaming

from cerebro import budget, coglet_bridge
from cerebro.adapters import GenerationStats, ModelAdapter, get_adapter

# Predictions the server runs at once (cog.yaml's concurrency.max, written from the same constant). The
# engine decodes up to CEREBRO_MAX_BATCH of them together; the rest wait in its queue, holding no KV cache.
from cerebro.deploy import CONCURRENCY
from cerebro.errors import CerebroError, GenerationError, ImageError, ServerError, WeightsError
from cerebro.finish import FinishReason
from cerebro.request import LIMITS, build_request, check_capabilities
from cerebro.settings import Settings
from cerebro.utils import (
    OPERATOR_LOGGER,
    FetchPolicy,
    ImageLimits,
    configure_logging,
    decode_image,
    open_image,
)

# Cog imports this file as the module "predict"; name the logger so it sits under "cerebro".
log = logging.getLogger("cerebro.predict")
operator_log = logging.getLogger(OPERATOR_LOGGER)  # tracebacks: the server's log, never a caller's


def _range(name: str) -> dict[str, Any]:
    limit = LIMITS[name]
    return {"ge": limit.low, "le": limit.high, "default": limit.default}


def run_inputs(**overrides: Any) -> dict[str, Any]:
    """Every input of `Predictor.run` with its default, for calling it in-process (outside a Cog server
    the `Input(...)` defaults are declarations, not values). Read from run()'s own signature, so it
    cannot drift from it; overrides must name real inputs."""
    inputs = {
        name: getattr(param.default, "default", param.default)  # Input(default=...) -> the value
        for name, param in inspect.signature(Predictor.run).parameters.items()
        if name != "self"
    }
    unknown = set(overrides) - set(inputs)
    if unknown:
        raise TypeError(f"run() has no inputs {sorted(unknown)}")
    inputs.update(overrides)
    return inputs


class Predictor(BaseRunner):
    def setup(self) -> None:
        started = time.perf_counter()
        self.settings = Settings.from_env()
        configure_logging(self.settings.log_level)
        budget.tune_allocator()  # first: every large buffer from here on goes back to the system when freed
        model_dir = self.settings.model_dir
        if not (model_dir / "config.json").is_file():
            raise WeightsError(
                f"no model weights in {model_dir} (looked for config.json and *.safetensors there). In the "
                "Cog image they are baked in at build time by cog.yaml; elsewhere set CEREBRO_MODEL_DIR (or "
                "--model-dir) to a folder with the official checkpoint. Offline, try the whole pipeline on a "
                "tiny random model (meaningless answers): bash scripts/demo --tiny",
                field="CEREBRO_MODEL_DIR",
                code="E2010",
            )
        adapter_class = get_adapter(self.settings.family)  # imports torch and transformers: seconds
        imported = time.perf_counter()
        self.adapter: ModelAdapter = adapter_class.load(self.settings)
        self.image_limits = ImageLimits(
            max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        self.fetch_policy = FetchPolicy(
            total_timeout_s=float(self.settings.fetch_timeout_s),
            allow_loopback=self.settings.allow_loopback_urls,
            allow_private=self.settings.allow_private_urls,
        )
        memory_mb = self.settings.preprocess_memory_mb
        self.memory = budget.MemoryBudget(memory_mb * 2**20 if memory_mb else budget.default_capacity())
        # Streamed when coglet is the version whose cancel the bridge can deliver; buffered otherwise.
        self.shape = coglet_bridge.install()
        self._dropped = 0  # requests cancelled while being prepared (never queued)
        self._dropped_lock = threading.Lock()
        load_s = time.perf_counter() - imported
        warmup_s = self.adapter.warmup() if self.settings.warmup and hasattr(self.adapter, "warmup") else 0.0
        details = " ".join(f"{k}={v}" for k, v in self.adapter.describe().items())
        log.info(
            "setup_s=%.2f import_s=%.2f load_s=%.2f warmup_s=%.2f preprocess_memory_mb=%d "
            "stream_shape=%s stream_reason=%s %s",
            time.perf_counter() - started,
            imported - started,
            load_s,
            warmup_s,
            self.memory.capacity // 2**20,
            "streamed" if self.shape.streaming else "buffered",
            self.shape.reason,
            details,
        )

    @streaming  # lets the Cog server stream the pieces as server-sent events
    @concurrent(max=CONCURRENCY)  # cog.yaml's concurrency.max says the same (a test checks)
    async def run(
        self,
        prompt: str = Input(
            description="What to find out about the image(s); optional for a captioning model. "
            "Phi-3.5-vision: image tags <|image_1|>.. are added in front when the prompt has none."
        ),
        image: str | None = Input(
            default=None,
            description="An image (JPEG, PNG, WebP, GIF, BMP, TIFF) as an https URL or a data URI "
            "(data:image/png;base64,...).",
        ),
        images: list[str] | None = Input(
            default=None, description="Several images, in order, each an https URL or a data URI."
        ),
        system_prompt: str = Input(
            default="", description="Optional system message (a captioning model refuses one)."
        ),
        max_new_tokens: int = Input(description="Most tokens to generate.", **_range("max_new_tokens")),
        temperature: float = Input(description="0 = greedy (deterministic).", **_range("temperature")),
        top_p: float = Input(description="Nucleus sampling mass (0 < top_p <= 1).", **_range("top_p")),
        top_k: int = Input(description="Sample from the k most likely tokens; 0 = off.", **_range("top_k")),
        repetition_penalty: float = Input(
            description="1 = off; > 1 discourages repeats.", **_range("repetition_penalty")
        ),
        seed: int | None = Input(description="Random seed for sampling; empty = random.", **_range("seed")),
        num_crops: int | None = Input(
            description="Phi-3.5-vision only (other models refuse it): image crops 1..16; empty = 16 for "
            "one image, 4 for several.",
            **_range("num_crops"),
        ),
        json_schema: str = Input(
            default="",
            description="A JSON Schema (as a string): the answer is JSON that validates against it.",
        ),
    ) -> ConcatenateIterator[str]:
        sources: list[tuple[str, Any]] = []
        if image is not None and image != "":
            sources.append(("image", image))
        if isinstance(images, str | os.PathLike):  # a lone value where a list was expected
            images = [images]
        sources += [(f"images[{i}]", src) for i, src in enumerate(images or [])]
        inputs = dict(
            prompt=prompt,
            system_prompt=system_prompt,
            json_schema=json_schema,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
            num_crops=num_crops,
        )
        return await self._serve(inputs, sources)

    async def _serve(self, inputs: dict[str, Any], sources: list[tuple[str, Any]]) -> Any:
        """Prepare here (a cancel is a CancelledError, as for any coroutine), then either return the
        streamed generator (when this prediction's cancel can reach it) or the buffered list of pieces."""
        stats = GenerationStats()
        found = coglet_bridge.cancel_event() if self.shape.streaming else None
        cancel = found or threading.Event()
        with self._edge(stats):
            try:
                # CPU work off the event loop, so that the other concurrent predictions keep streaming.
                prepared = await asyncio.to_thread(self._prepare, inputs, sources, stats, cancel)
            except asyncio.CancelledError:
                cancel.set()  # the thread stops at its next step and nothing reaches the engine
                raise
            if found is None:  # buffered: coglet cancels this coroutine itself
                if self.shape.streaming:
                    log.info("stream_shape=buffered reason=no_cancel_event")
                pieces = [piece async for piece in self.adapter.astream(prepared, stats)]
                self._record(stats)
                return pieces
        return coglet_bridge.in_context(self._streamed(prepared, stats, cancel))

    def _streamed(self, prepared: Any, stats: GenerationStats, cancel: threading.Event) -> Iterator[str]:
        """The streamed shape, iterated by coglet on the prediction's slot thread: the job reaches the
        engine at the first next(), and stops at the engine's next step once `cancel` is set."""
        with self._edge(stats):
            if cancel.is_set():  # cancelled after preparing, before its first piece was asked for
                self._count_dropped("queued")
                raise CancelationException("cancelled before generating")
            for piece in self.adapter.stream(prepared, stats, cancel):
                if cancel.is_set():
                    break  # nothing more reaches the caller once the cancel is in
                yield piece
            else:
                if stats.finish_reason != FinishReason.CANCELLED:  # the engine ended it for another reason
                    self._record(stats)
                    return
            raise CancelationException("cancelled while generating")

    @contextlib.contextmanager
    def _edge(self, stats: GenerationStats) -> Iterator[None]:
        """The error edge, once for both shapes: whatever ends the prediction early is recorded (metrics,
        its log line) and reaches the caller as ours (with its code), as a cancel, or translated."""
        try:
            yield
        except BaseException as err:
            edge = self._caller_sees(err, stats)
            self._record(stats)
            if edge is err:
                raise
            raise edge from err

    def _caller_sees(self, err: BaseException, stats: GenerationStats) -> BaseException:
        """What the caller gets for `err`: ours keeps its code; a cancel stays a cancel; anything else is
        translated (out of memory: E2031; a bug: E2000 with an incident id)."""
        if isinstance(err, Exception) and not stats.finish_reason:
            stats.finish_reason = FinishReason.ERROR
        if isinstance(err, CerebroError):
            log.info(
                "prediction_failed code=%s field=%s caller_error=%s", err.code, err.field, err.is_caller_error
            )
            return err
        if not isinstance(err, Exception):  # CancelledError, CancelationException, GeneratorExit
            stats.finish_reason = FinishReason.CANCELLED
            return err
        return _translate(err)

    def _prepare(
        self,
        inputs: dict[str, Any],
        sources: list[tuple[str, Any]],
        stats: GenerationStats,
        cancel: threading.Event,
    ) -> Any:
        """Worker thread: validate, fetch, decode and preprocess; returns the adapter's prepared request.
        When `cancel` is set (the prediction was cancelled meanwhile), stops at the next step."""
        try:
            deadline = time.monotonic() + self.fetch_policy.total_timeout_s  # all of this request's URLs

            def open_one(source: Any, field: str) -> Any:
                return open_image(
                    source,
                    field=field,
                    limits=self.image_limits,
                    fetch=self.fetch_policy,
                    local_files=self.settings.allow_local_files,
                    deadline=deadline,
                )

            capabilities = self.adapter.capabilities
            check_capabilities(inputs, capabilities)  # before any fetch: what this model cannot honour
            request = build_request(
                image_sources=sources,
                load_image=open_one,
                max_images=min(self.settings.max_images, capabilities.max_images),
                prompt_required=capabilities.prompt_required,
                **inputs,
            )
            pixels = sum(img.width * img.height for img in request.images)
            if pixels > self.settings.max_request_pixels:
                raise ImageError(
                    f"the {len(request.images)} images have {pixels} pixels in all; the limit for one "
                    f"request is {self.settings.max_request_pixels} pixels "
                    f"({self.settings.max_request_pixels / 1e6:g} megapixels)",
                    field="images",
                    code="E1107",
                )
            nbytes = sum(_encoded_size(img) for img in request.images)
            with self.memory.lease(budget.cost(pixels, nbytes), cancel):
                fields = [field for field, _ in sources]
                decoded = tuple(
                    decode_image(img, field=field, limits=self.image_limits)
                    for img, field in zip(request.images, fields, strict=True)
                )
                request = dataclasses.replace(request, images=decoded)
                del decoded
                if cancel.is_set():
                    return None
                return self.adapter.prepare(request, stats)
        finally:
            if cancel.is_set():
                self._count_dropped("preparing")

    def _count_dropped(self, stage: str) -> None:
        with self._dropped_lock:
            self._dropped += 1
        log.info("prediction_dropped stage=%s reason=cancelled", stage)

    def _record(self, stats: GenerationStats) -> None:
        self.record_metric("input_token_count", stats.input_token_count)
        self.record_metric("output_token_count", stats.output_token_count)
        if stats.time_to_first_token is not None:
            self.record_metric("time_to_first_token", round(stats.time_to_first_token, 4))
        if stats.tokens_per_second is not None:
            self.record_metric("tokens_per_second", round(stats.tokens_per_second, 2))
        counters = {**self.adapter.counters(), "dropped": self._dropped}
        log.info(
            "prediction input_tokens=%d output_tokens=%d ttft_s=%s tok_s=%s finish=%s seed=%s %s",
            stats.input_token_count,
            stats.output_token_count,
            None if stats.time_to_first_token is None else round(stats.time_to_first_token, 3),
            None if stats.tokens_per_second is None else round(stats.tokens_per_second, 1),
            stats.finish_reason,
            stats.seed,
            " ".join(f"{k}={v}" for k, v in counters.items()),
        )


def iterate(run_call: Coroutine[Any, Any, Any]) -> Iterator[str]:
    """Drive `run()` from synchronous code (the CLI, tests) on a private event loop. It declares the
    prediction's cancel Event as coglet's hook does (cerebro/coglet_bridge.py), so pieces arrive as they
    are made; closing this iterator early (or Ctrl-C) cancels the prediction."""
    cancel = threading.Event()
    loop = asyncio.new_event_loop()
    pieces: Any = None
    try:
        with coglet_bridge.submission(cancel):
            task = loop.create_task(run_call)  # the task starts in a copy of this context
        try:
            pieces = loop.run_until_complete(task)
        except BaseException:
            cancel.set()
            if not task.done():  # interrupted while preparing: let run() see its CancelledError
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            raise
        yield from pieces
    finally:
        cancel.set()
        close = getattr(pieces, "close", None)  # the streamed shape: its row is freed at the next step
        if close is not None:
            close()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _translate(err: Exception) -> CerebroError:
    """An exception that is not ours: out-of-memory fails this request only; anything else is a bug."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        log.error("prediction_failed code=E2031 out_of_memory=%s", err)
        return GenerationError(
            "the GPU ran out of memory for this request; try fewer or smaller images, a "
            "lower num_crops or max_new_tokens",
            code="E2031",
        )
    # The caller reads the prediction's logs and its error: both get the incident id, never the detail
    # (an exception's text can carry paths, library source locations or the caller's own input).
    incident = secrets.token_hex(6)
    log.error("prediction_failed code=E2000 incident=%s unexpected=%s", incident, type(err).__name__)
    operator_log.error("prediction_failed code=E2000 incident=%s", incident, exc_info=err)
    return ServerError(f"internal error (incident {incident}); the operator's log has the details")


def _encoded_size(img: Any) -> int:
    """Bytes of the compressed image an open (not yet decoded) image reads from."""
    fp: Any = getattr(img, "fp", None)
    return len(fp.getbuffer()) if hasattr(fp, "getbuffer") else 0
