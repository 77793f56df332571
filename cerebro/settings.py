# Written with AI assistance; review before relying on it.
"""Per-deployment settings, read once in `setup()` from the environment into one frozen object.

Each default lives here and only here. Per-request settings are Cog inputs (cerebro/request.py), not
environment variables. Nothing in this module runs at import time.

| variable | default | meaning |
| --- | --- | --- |
| CEREBRO_MODEL_DIR | /model-cache | folder with the checkpoint (baked into the image by cog.yaml) |
| CEREBRO_FAMILY | auto | model family: auto (from config.json's model_type), phi3_v, hf_vlm or caption |
| CEREBRO_DEVICE | cuda if available, else cpu | torch device |
| CEREBRO_DTYPE | auto | auto = bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU |
| CEREBRO_ATTENTION | sdpa | sdpa, eager or flash_attention_2 |
| CEREBRO_MAX_IMAGES | 8 | images per request |
| CEREBRO_MAX_IMAGE_BYTES | 20971520 | bytes per image file (20 MiB) |
| CEREBRO_MAX_IMAGE_PIXELS | 50000000 | decoded pixels per image (50 MP) |
| CEREBRO_MAX_REQUEST_PIXELS | 100000000 | decoded pixels of all the images of one request (100 MP) |
| CEREBRO_PREPROCESS_MEMORY_MB | a quarter of RAM | image decoding and preprocessing in flight, all requests |
| CEREBRO_MAX_CONTEXT_TOKENS | 32768 | prompt (with image tokens) + max_new_tokens |
| CEREBRO_ALLOW_LOOPBACK_URLS | false | let image URLs point at 127.0.0.0/8 and ::1 (tests) |
| CEREBRO_ALLOW_PRIVATE_URLS | false | let image URLs point at private and link-local addresses |
| CEREBRO_FETCH_TIMEOUT_S | 30 | one deadline for fetching all the image URLs of a request |
| CEREBRO_ALLOW_LOCAL_FILES | false | let an image be a local path (the CLI sets it; never over HTTP) |
| CEREBRO_ENGINE | batched | batched (continuous batching) or plain (one request at a time) |
| CEREBRO_MAX_BATCH | 16 on a GPU, 1 on CPU | requests decoded together by the batched engine |
| CEREBRO_KV_CACHE_TOKENS | from free memory | KV-cache budget in tokens for all rows (cerebro/engine) |
| CEREBRO_CUDA_GRAPHS | true | replay decode steps from CUDA graphs (GPU only) |
| CEREBRO_WARMUP | true | run a short generation in setup() so a broken image fails at boot |
| CEREBRO_LOG_LEVEL | INFO | logging level |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cerebro.errors import ConfigError
from cerebro.utils.fetch import FetchPolicy
from cerebro.utils.images import ImageLimits

DEFAULT_MODEL_DIR = "/model-cache"
ENGINES = ("batched", "plain")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    family: str = "auto"  # cerebro/families owns the names
    device: str = ""  # empty = choose at load time (cuda if available)
    dtype: str = "auto"
    attention: str = "sdpa"
    max_images: int = 8
    max_image_bytes: int = ImageLimits.max_bytes  # the image loader owns these defaults
    max_image_pixels: int = ImageLimits.max_pixels
    max_request_pixels: int = 100_000_000
    preprocess_memory_mb: int = 0  # 0 = a quarter of the machine's memory (cerebro/budget.py)
    max_context_tokens: int = 32768
    allow_loopback_urls: bool = False
    allow_private_urls: bool = False
    allow_local_files: bool = False
    fetch_timeout_s: int = int(FetchPolicy.total_timeout_s)
    engine: str = "batched"
    max_batch: int = 0  # 0 = choose by device
    kv_cache_tokens: int = 0  # 0 = choose from free memory
    cuda_graphs: bool = True
    warmup: bool = True
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not an integer", field=name) from None
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1", field=name)
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if raw == "":
                return default
            if raw in TRUE or raw in FALSE:
                return raw in TRUE
            raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false", field=name)

        engine = text("CEREBRO_ENGINE", d.engine).lower()
        if engine not in ENGINES:
            raise ConfigError(
                f"CEREBRO_ENGINE={engine!r}; use one of {', '.join(ENGINES)}", field="CEREBRO_ENGINE"
            )
        return cls(
            model_dir=Path(text("CEREBRO_MODEL_DIR", str(d.model_dir))),
            family=text("CEREBRO_FAMILY", d.family),
            device=env.get("CEREBRO_DEVICE", d.device).strip(),
            dtype=text("CEREBRO_DTYPE", d.dtype),
            attention=text("CEREBRO_ATTENTION", d.attention),
            max_images=integer("CEREBRO_MAX_IMAGES", d.max_images),
            max_image_bytes=integer("CEREBRO_MAX_IMAGE_BYTES", d.max_image_bytes),
            max_image_pixels=integer("CEREBRO_MAX_IMAGE_PIXELS", d.max_image_pixels),
            max_request_pixels=integer("CEREBRO_MAX_REQUEST_PIXELS", d.max_request_pixels),
            preprocess_memory_mb=integer("CEREBRO_PREPROCESS_MEMORY_MB", d.preprocess_memory_mb),
            max_context_tokens=integer("CEREBRO_MAX_CONTEXT_TOKENS", d.max_context_tokens),
            allow_loopback_urls=flag("CEREBRO_ALLOW_LOOPBACK_URLS", d.allow_loopback_urls),
            allow_private_urls=flag("CEREBRO_ALLOW_PRIVATE_URLS", d.allow_private_urls),
            allow_local_files=flag("CEREBRO_ALLOW_LOCAL_FILES", d.allow_local_files),
            fetch_timeout_s=integer("CEREBRO_FETCH_TIMEOUT_S", d.fetch_timeout_s),
            engine=engine,
            max_batch=integer("CEREBRO_MAX_BATCH", d.max_batch),
            kv_cache_tokens=integer("CEREBRO_KV_CACHE_TOKENS", d.kv_cache_tokens),
            cuda_graphs=flag("CEREBRO_CUDA_GRAPHS", d.cuda_graphs),
            warmup=flag("CEREBRO_WARMUP", d.warmup),
            log_level=text("CEREBRO_LOG_LEVEL", d.log_level).upper(),
        )
