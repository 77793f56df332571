# Written with AI assistance; review before relying on it.
"""Decode speed and time to first token: transformers `generate` (the baseline) against Cerebro's batching
Engine, on the full-size Phi-3.5-vision architecture with random bf16 weights, in one run on one GPU.

A benchmark script, not a test. Speed does not depend on the weight values, so the weights are random
(normal, std 0.02; norms 1.0) and every request is forced to exactly --new-tokens tokens (EOS ignored):

    S1  one 1024x768 JPEG, num_crops 4, a 30-token question, 64 new tokens, alone
    S2  the same at num_crops 16
    S3  16 S1 requests that all arrive at t0: Cerebro takes them concurrently (a thread each: preprocess,
        submit, read the stream); the baseline serves them one after the other, as the original code does

Timing: a request starts at its JPEG decode + processor call (the HD transform is inside the timing), its
first token is the first one its reader sees, the decode rate is (tokens - 1) / (last - first token).
S1/S2 report the median of --repeats runs; S3 runs once. All of it after untimed warm-ups (and, for
Cerebro, after every CUDA graph is captured: that time is reported in the setup fields).

Roofline: decoding is memory-bound, so tokens/s cannot exceed bandwidth / bytes read per step, with the
bandwidth measured in this run (`dst.copy_(src)` of 1 GiB, 2 x bytes / time, best of 10) and bytes per
step = decoder weights (layers + final norm + lm_head; not the vision tower, not embed_tokens, a gather)
+ KV cache at the mean context (prompt + new_tokens / 2). For S3 the roofline is that of the workload: 16
requests decoded together, 16 * bandwidth / (weights + 16 * KV), and roofline_percent compares the
aggregate output tokens/s (prefill and waiting included) with it, for both engines.

    python benchmarks/gpu_speed.py [--full | --smoke] [--scenarios S1,S2,S3] [--new-tokens 64]
                                   [--concurrent 16] [--repeats 3] [--out DIR]
    python benchmarks/gpu_speed.py --plan    # bytes per step and prompt sizes only: no GPU, no weights

--full needs CUDA and refuses to run without it. --smoke runs the same code on the CPU with the tiny
architecture in float32 (16 new tokens, 4 concurrent), roofline from a CPU memcpy: it checks that the
script works; its numbers say nothing about a GPU. With neither flag: full on CUDA, else smoke (said so).

Not here: output quality (the weights are random), real checkpoints, anything about the HTTP server.
Each run writes one JSON file (a list of records) to --out and prints a table. Without --out, a full run
writes to benchmarks/results/ and a smoke run to .artifacts/gpu_speed/ (git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.generation.streamers import BaseStreamer

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a plain script from anywhere, without installing cerebro
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from cerebro.engine import Engine, Job, TokenStream  # noqa: E402
from cerebro.engine.decoder import DecoderShape  # noqa: E402
from cerebro.engine.forward import SPAN_QUANTUM  # noqa: E402
from cerebro.families.phi3_v import phi3v_decoder  # noqa: E402
from cerebro.generation import Sampler, SamplingParams  # noqa: E402
from cerebro.models.phi3_v import (  # noqa: E402
    Phi3VConfig,
    Phi3VForCausalLM,
    Phi3VImageProcessor,
    Phi3VProcessor,
)
from cerebro.models.phi3_v.tiny import tiny_config_dict  # noqa: E402
from cerebro.models.phi3_v.weights import rebuild_buffers, resolve_attention  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"  # measured figures, kept in git
SMOKE_RESULTS = REPO_ROOT / ".artifacts" / "gpu_speed"  # script checks, git-ignored
IMAGE_SIZE = (1024, 768)  # W, H
QUESTION_TOKENS = 30
SCENARIOS = ("S1", "S2", "S3")
NUM_CROPS = {"S1": 4, "S2": 16, "S3": 4}
GiB = 1024**3
# The issue's targets for the full mode (S1, S3 on a data-centre GPU); printed beside the results.
TARGETS = (
    "S1 decode >= 75% of roofline and >= 6x baseline; S1 TTFT <= 60 ms; S3 >= 2000 tok/s, p95 TTFT <= 400 ms"
)
# 30 tokens with the Phi-3.5 tokenizer; make_question trims or pads it for another tokenizer.
QUESTION_TEXT = (
    "Please look carefully at this picture and describe the main objects, their colours, where each one "
    "sits in the frame, and what stands out most?"
)


def shared_dir() -> Path:
    return Path(os.environ.get("CEREBRO_SHARED_DIR") or REPO_ROOT.parent / "shared")


# ------------------------------------------------------------------------------------------ machine


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def copy_bandwidth(device: torch.device, nbytes: int, tries: int = 10) -> float:
    """Bytes/s of `dst.copy_(src)`: each copy reads and writes nbytes, so 2 * nbytes / time; best of tries."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(tries + 2):  # the first two warm the allocator and the copy kernel / page tables
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            started = time.perf_counter()
            dst.copy_(src)
            seconds = time.perf_counter() - started
        if i >= 2:
            best = min(best, seconds)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / best


# ------------------------------------------------------------------------------------------ model


def load_config(mode: str) -> Phi3VConfig:
    if mode == "smoke":
        config = Phi3VConfig.from_dict(tiny_config_dict())
    else:
        config = Phi3VConfig.from_pretrained(str(shared_dir() / "fixtures" / "phi35v-real-config"))
    attn = resolve_attention("sdpa")
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn  # type: ignore[union-attr]
    return config


def meta_model(config: Phi3VConfig, dtype: torch.dtype) -> Phi3VForCausalLM:
    """The architecture without storage: free to build at full size, enough to count bytes."""
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    return model.to(dtype)  # type: ignore[arg-type]  # transformers types .to() for its own wrapper


def random_model(
    config: Phi3VConfig, dtype: torch.dtype, device: torch.device, seed: int
) -> Phi3VForCausalLM:
    """Meta -> uninitialized storage on the device -> random values in place: no 4B-parameter CPU init."""
    model = meta_model(config, dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # RMSNorm / LayerNorm (CLIP's "layrnorm" too): identity-like
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    rebuild_buffers(model, device)  # RoPE frequencies, CLIP position ids: garbage after to_empty
    return model.eval().requires_grad_(False)


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decoder_weight_bytes(model: Phi3VForCausalLM) -> int:
    """Weights one decode step reads: every decoder layer, the final norm and lm_head. Not the vision
    tower (prefill only) and not embed_tokens (a gather of one row per token)."""
    return param_bytes(model.model.layers) + param_bytes(model.model.norm) + param_bytes(model.lm_head)


def roofline_tokens_per_s(
    bandwidth: float, weight_bytes: int, kv_bytes_per_token: int, mean_context: float, batch: int
) -> float:
    """Upper bound for `batch` rows decoded together: each step reads the weights once and every row's KV
    cache, and yields one token per row."""
    return batch * bandwidth / (weight_bytes + batch * kv_bytes_per_token * mean_context)


# ------------------------------------------------------------------------------------------ inputs


def synthetic_jpeg(seed: int = 0) -> bytes:
    """A deterministic 1024x768 photo-like RGB image (gradients + blobs + noise), as JPEG bytes."""
    width, height = IMAGE_SIZE
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / width, y / height
    red, green = 0.5 + 0.4 * np.sin(3 * x + 1) * (1 - y), 0.4 + 0.3 * np.cos(4 * y - x)
    rgb = np.stack([red, green, 0.3 + 0.5 * y], -1)  # H, W, 3
    for _ in range(12):  # soft discs, so the JPEG has edges to encode
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r)[..., None]
        rgb = np.where(disc, rng.uniform(0, 1, 3).astype(np.float32), rgb)
    pixels = np.clip(rgb * 255 + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)  # H, W, 3
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_question(tokenizer: Any, n_tokens: int) -> str:
    """A prefix of QUESTION_TEXT ending in "?" that the tokenizer counts as exactly n_tokens (no BOS)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    words = QUESTION_TEXT.split()
    for k in range(1, len(words) + 1):
        text = " ".join(words[:k]).rstrip(",.?") + "?"
        if count(text) == n_tokens:
            return text
    # No prefix lands exactly: take the longest one below and pad with one-token words.
    text = max(
        (" ".join(words[:k]).rstrip(",.?") for k in range(1, len(words) + 1)),
        key=lambda t: (count(t + "?") < n_tokens, len(t)),
    )
    while count(text + " please?") <= n_tokens:
        text += " please"
    if count(text + "?") != n_tokens:
        raise RuntimeError(f"could not build a {n_tokens}-token question with this tokenizer")
    return text + "?"


class Preprocess:
    """JPEG bytes -> the model's inputs for one request, as the adapter does it: decode, chat template with
    `<|image_1|>\\n` + question, Phi3VProcessor with an image processor at the requested num_crops."""

    def __init__(self, fixture: Path, config: Phi3VConfig, jpeg: bytes) -> None:
        base = Phi3VProcessor.from_pretrained(fixture)
        self.tokenizer = base.tokenizer
        self.jpeg = jpeg
        self.question = make_question(self.tokenizer, QUESTION_TOKENS)
        messages = [{"role": "user", "content": "<|image_1|>\n" + self.question}]
        self.prompt = str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        vision: Any = config.vision_config  # a CLIPVisionConfig once Phi3VConfig is built
        self.processors = {
            n: Phi3VProcessor(
                Phi3VImageProcessor(
                    num_crops=n,
                    image_mean=tuple(base.image_processor.mean.flatten().tolist()),
                    image_std=tuple(base.image_processor.std.flatten().tolist()),
                    crop_size=int(vision.image_size),
                    patch_size=int(vision.patch_size),
                ),
                self.tokenizer,
            )
            for n in sorted(set(NUM_CROPS.values()))
        }

    def __call__(self, num_crops: int) -> dict[str, torch.Tensor]:
        with Image.open(io.BytesIO(self.jpeg)) as image:
            inputs = dict(self.processors[num_crops](text=self.prompt, images=[image]))
        return inputs  # input_ids [1, L], attention_mask, pixel_values [1, K+1, 3, S, S], image_sizes, ...


# ------------------------------------------------------------------------------------------ requests


@dataclass
class Timing:
    """perf_counter seconds of one request: when it arrived, when its inputs were ready, each token."""

    arrival: float
    prompt_tokens: int = 0
    prepared: float = 0.0
    tokens: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.tokens[0] - self.arrival

    @property
    def decode_rate(self) -> float:
        return (len(self.tokens) - 1) / max(self.tokens[-1] - self.tokens[0], 1e-9)

    @property
    def end_to_end(self) -> float:
        return self.tokens[-1] - self.arrival


class TimingStreamer(BaseStreamer):
    """A transformers streamer that only takes timestamps: generate calls put(prompt ids) once, then
    put(token) for each new token, then end()."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist()  # a device -> host copy: waits for the token, as a real reader would
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.timing.tokens.append(time.perf_counter())
        self.timing.ids.extend(ids)

    def end(self) -> None:
        pass


def baseline_request(
    model: Phi3VForCausalLM, prep: Preprocess, num_crops: int, new_tokens: int, arrival: float | None = None
) -> Timing:
    """What a user of the original code gets: processor, then generate (batch 1, DynamicCache, greedy)."""
    timing = Timing(arrival=time.perf_counter() if arrival is None else arrival)
    inputs = {k: v.to(model.device) for k, v in prep(num_crops).items()}
    timing.prompt_tokens = int(inputs["input_ids"].shape[1])
    timing.prepared = time.perf_counter()
    generate: Any = model.generate  # type: ignore[misc]  # the stubs want a GenerativePreTrainedModel
    with torch.inference_mode():
        generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=TimingStreamer(timing),
        )
    if len(timing.tokens) != new_tokens:
        raise RuntimeError(f"baseline produced {len(timing.tokens)} tokens, expected {new_tokens}")
    return timing


def engine_request(
    engine: Engine, prep: Preprocess, num_crops: int, new_tokens: int, arrival: float | None = None
) -> Timing:
    """Processor, then a Job on the batching engine with no stop ids (the length is forced)."""
    timing = Timing(arrival=time.perf_counter() if arrival is None else arrival)
    inputs = prep(num_crops)
    timing.prompt_tokens = int(inputs["input_ids"].shape[1])
    timing.prepared = time.perf_counter()
    device = engine.device
    job = Job(
        input_ids=inputs["input_ids"],
        extras={"pixel_values": inputs["pixel_values"], "image_sizes": inputs["image_sizes"]},
        max_new_tokens=new_tokens,
        sampler=Sampler(SamplingParams(), device),
        stop_ids=frozenset(),
        stream=TokenStream(),
    )
    engine.submit(job)
    for token in job.stream:
        timing.tokens.append(time.perf_counter())
        timing.ids.append(token)
    if len(timing.tokens) != new_tokens or job.stream.finish_reason != "length":
        raise RuntimeError(
            f"engine produced {len(timing.tokens)} tokens ({job.stream.finish_reason}), expected {new_tokens}"
        )
    return timing


def concurrent_requests(run_one: Callable[[float], Timing], n: int) -> tuple[float, list[Timing]]:
    """n requests arriving together at t0, each in its own thread (preprocess, submit, read)."""
    results: list[Timing | BaseException | None] = [None] * n
    go = threading.Event()
    t0 = 0.0

    def worker(i: int) -> None:
        go.wait()
        try:
            results[i] = run_one(t0)
        except BaseException as err:  # re-raised below, in the caller's thread
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}") for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return t0, [r for r in results if isinstance(r, Timing)]


def sequential_requests(run_one: Callable[[float], Timing], n: int) -> tuple[float, list[Timing]]:
    """n requests arriving together at t0, served one after the other (the original code's behaviour)."""
    t0 = time.perf_counter()
    return t0, [run_one(t0) for _ in range(n)]


# ------------------------------------------------------------------------------------------ records


@dataclass
class Context:
    """What every record shares: the machine, the model, the bandwidth and bytes per decode step."""

    mode: str
    device: torch.device
    new_tokens: int
    concurrent: int
    bandwidth: float  # bytes/s
    weight_bytes: int
    kv_bytes_per_token: int
    common: dict[str, Any]

    def roofline(self, prompt_tokens: int, batch: int) -> float:
        mean_context = prompt_tokens + self.new_tokens / 2
        return roofline_tokens_per_s(
            self.bandwidth, self.weight_bytes, self.kv_bytes_per_token, mean_context, batch
        )

    def peak_gb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 1e9

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


def single_record(ctx: Context, scenario: str, engine: str, runs: list[Timing]) -> dict[str, Any]:
    """S1/S2: medians over the repeats."""
    prompt = runs[0].prompt_tokens
    decode = statistics.median(r.decode_rate for r in runs)
    roof = ctx.roofline(prompt, 1)
    return {
        **ctx.common,
        "scenario": scenario,
        "engine": engine,
        "num_crops": NUM_CROPS[scenario],
        "concurrent": 1,
        "prompt_tokens": prompt,
        "new_tokens": ctx.new_tokens,
        "repeats": len(runs),
        "time_to_first_token_ms": 1000 * statistics.median(r.ttft for r in runs),
        "preprocess_ms": 1000 * statistics.median(r.prepared - r.arrival for r in runs),
        "decode_tokens_per_s": decode,
        "roofline_tokens_per_s": roof,
        "roofline_percent": 100 * decode / roof,
        "roofline_basis": "batch 1: bandwidth / (decoder weights + KV at prompt + new_tokens/2)",
        "end_to_end_ms": 1000 * statistics.median(r.end_to_end for r in runs),
        "aggregate_output_tokens_per_s": None,
        "p50_time_to_first_token_ms": None,
        "p95_time_to_first_token_ms": None,
        "peak_gpu_memory_gb": ctx.peak_gb(),
        "timed_runs_ttft_ms": [round(1000 * r.ttft, 2) for r in runs],
    }


def concurrent_record(ctx: Context, engine: str, t0: float, runs: list[Timing]) -> dict[str, Any]:
    """S3: every TTFT counts from t0, when all arrived; aggregate = all tokens / (last token - t0)."""
    ttfts = np.array([r.ttft for r in runs]) * 1000
    makespan = max(r.tokens[-1] for r in runs) - t0
    aggregate = sum(len(r.tokens) for r in runs) / makespan
    roof = ctx.roofline(runs[0].prompt_tokens, len(runs))
    return {
        **ctx.common,
        "scenario": "S3",
        "engine": engine,
        "num_crops": NUM_CROPS["S3"],
        "concurrent": len(runs),
        "prompt_tokens": runs[0].prompt_tokens,
        "new_tokens": ctx.new_tokens,
        "repeats": 1,
        "time_to_first_token_ms": float(np.percentile(ttfts, 50)),  # = p50
        "preprocess_ms": 1000 * statistics.median(r.prepared - r.arrival for r in runs),
        "decode_tokens_per_s": statistics.median(r.decode_rate for r in runs),  # per request, median
        "roofline_tokens_per_s": roof,
        "roofline_percent": 100 * aggregate / roof,
        "roofline_basis": (
            f"aggregate output tok/s vs the {len(runs)}-row workload roofline "
            f"{len(runs)} * bandwidth / (decoder weights + {len(runs)} * KV at prompt + new_tokens/2)"
        ),
        "end_to_end_ms": 1000 * makespan,
        "aggregate_output_tokens_per_s": aggregate,
        "p50_time_to_first_token_ms": float(np.percentile(ttfts, 50)),
        "p95_time_to_first_token_ms": float(np.percentile(ttfts, 95)),
        "max_time_to_first_token_ms": float(ttfts.max()),
        "peak_gpu_memory_gb": ctx.peak_gb(),
    }


def add_speedups(records: list[dict[str, Any]]) -> None:
    base = {r["scenario"]: r for r in records if r["engine"] == "baseline"}
    for r in records:
        b = base.get(r["scenario"])
        if r["engine"] != "cerebro" or b is None:
            continue
        r["decode_speedup_vs_baseline"] = r["decode_tokens_per_s"] / b["decode_tokens_per_s"]
        r["ttft_speedup_vs_baseline"] = b["time_to_first_token_ms"] / r["time_to_first_token_ms"]
        if r["aggregate_output_tokens_per_s"]:
            r["aggregate_speedup_vs_baseline"] = (
                r["aggregate_output_tokens_per_s"] / b["aggregate_output_tokens_per_s"]
            )


def fmt(value: Any, spec: str) -> str:
    """format(value, spec), or a dash as wide as the spec for a field this record does not have."""
    return format(value, spec) if value is not None else format("-", spec.split(".")[0])


def print_table(records: list[dict[str, Any]]) -> None:
    head = (
        f"{'scen':<4} {'engine':<8} {'crops':>5} {'prompt':>6} {'TTFT ms':>8} {'p95 TTFT':>8} "
        f"{'decode t/s':>10} {'roofline%':>9} {'e2e ms':>9} {'aggr t/s':>9} {'peak GB':>7} {'x base':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in records:
        speedup = r.get("aggregate_speedup_vs_baseline") or r.get("decode_speedup_vs_baseline")
        print(
            f"{r['scenario']:<4} {r['engine']:<8} {r['num_crops']:>5} {r['prompt_tokens']:>6} "
            f"{r['time_to_first_token_ms']:>8.1f} {fmt(r['p95_time_to_first_token_ms'], '>8.1f')} "
            f"{r['decode_tokens_per_s']:>10.1f} {r['roofline_percent']:>9.1f} {r['end_to_end_ms']:>9.1f} "
            f"{fmt(r['aggregate_output_tokens_per_s'], '>9.1f')} {fmt(r['peak_gpu_memory_gb'], '>7.2f')} "
            f"{fmt(speedup, '>6.2f')}"
        )


def check_targets(records: list[dict[str, Any]]) -> list[str]:
    """The issue's targets against this run (only meaningful in the full mode on a data-centre GPU)."""
    by = {(r["scenario"], r["engine"]): r for r in records}
    lines = []
    if s1 := by.get(("S1", "cerebro")):
        lines.append(f"S1 decode roofline  {s1['roofline_percent']:.1f}% (target >= 75%)")
        if "decode_speedup_vs_baseline" in s1:
            lines.append(f"S1 decode vs base   {s1['decode_speedup_vs_baseline']:.2f}x (target >= 6x)")
        lines.append(f"S1 TTFT             {s1['time_to_first_token_ms']:.1f} ms (target <= 60 ms)")
    if s3 := by.get(("S3", "cerebro")):
        lines.append(f"S3 aggregate        {s3['aggregate_output_tokens_per_s']:.0f} tok/s (target >= 2000)")
        lines.append(f"S3 p95 TTFT         {s3['p95_time_to_first_token_ms']:.1f} ms (target <= 400 ms)")
    return lines


# ------------------------------------------------------------------------------------------ main


def plan(args: argparse.Namespace) -> int:
    """Full-size numbers that need no GPU: bytes per decode step (meta device) and prompt sizes."""
    config = load_config("full")
    model = meta_model(config, torch.bfloat16)
    weights = decoder_weight_bytes(model)
    kv = DecoderShape.from_config(config).bytes_per_token(torch.bfloat16)
    prep = Preprocess(shared_dir() / "fixtures" / "phi35v-real-config", config, synthetic_jpeg(args.seed))
    print("Phi-3.5-vision, bf16, built on the meta device (no storage)")
    print(f"  all parameters                 {param_bytes(model) / 1e9:8.3f} GB")
    print(f"  decoder weights read per step  {weights / 1e9:8.3f} GB ({weights} bytes)")
    print(f"  KV cache per token             {kv} bytes")
    for scenario in ("S1", "S2"):
        prompt = int(prep(NUM_CROPS[scenario])["input_ids"].shape[1])
        total = weights + kv * (prompt + args.new_tokens / 2)
        print(
            f"  {scenario}: num_crops {NUM_CROPS[scenario]:>2}, prompt {prompt} tokens -> bytes per decode "
            f"step {total:.4g} (roofline at a nominal 3.35 TB/s: {3.35e12 / total:.0f} tok/s)"
        )
    print(f"  question ({QUESTION_TOKENS} tokens): {prep.question!r}")
    return 0


def run_baseline(
    ctx: Context,
    model: Phi3VForCausalLM,
    prep: Preprocess,
    args: argparse.Namespace,
    setup: dict[str, Any],
    records: list[dict[str, Any]],
) -> dict[str, list[int]]:
    """Warm-up, then the selected scenarios through `generate`; returns S1/S2 token ids for comparison."""
    n, s3_crops = args.new_tokens, NUM_CROPS["S3"]
    started = time.perf_counter()
    for crops in sorted({NUM_CROPS[s] for s in args.scenarios}):
        baseline_request(model, prep, crops, n)
    setup["baseline_warmup_s"] = time.perf_counter() - started
    ids: dict[str, list[int]] = {}
    for scenario in [s for s in args.scenarios if s != "S3"]:
        ctx.reset_peak()
        runs = [baseline_request(model, prep, NUM_CROPS[scenario], n) for _ in range(args.repeats)]
        ids[scenario] = runs[0].ids
        records.append(single_record(ctx, scenario, "baseline", runs))
        print(f"  baseline {scenario} done")
    if "S3" in args.scenarios:
        ctx.reset_peak()
        t0, runs = sequential_requests(
            lambda t: baseline_request(model, prep, s3_crops, n, t), args.concurrent
        )
        records.append(concurrent_record(ctx, "baseline", t0, runs))
        print("  baseline S3 done")
    return ids


def run_cerebro(
    ctx: Context,
    model: Phi3VForCausalLM,
    prep: Preprocess,
    args: argparse.Namespace,
    setup: dict[str, Any],
    records: list[dict[str, Any]],
    baseline_ids: dict[str, list[int]],
    max_prompt: int,
) -> None:
    """Engine sized for the run (rows = S3's concurrency, capacity = longest prompt + new tokens), every
    CUDA graph captured, warm-ups of each shape, then the selected scenarios."""
    n, s3_crops = args.new_tokens, NUM_CROPS["S3"]
    ctx.reset_peak()
    rows = args.concurrent if "S3" in args.scenarios else 1
    capacity = -(-(max_prompt + n) // SPAN_QUANTUM) * SPAN_QUANTUM
    started = time.perf_counter()
    engine = Engine(phi3v_decoder(model), rows=rows, capacity=capacity, cuda_graphs=True)
    sync(ctx.device)
    setup.update(engine_alloc_s=time.perf_counter() - started, rows=rows, capacity_tokens=capacity)
    setup["kv_cache_gb"] = engine.cache.nbytes / 1e9
    try:
        graphs, graphs_s = engine.capture_graphs()
        setup.update(graph_capture_s=graphs_s, graph_count=graphs, cuda_graphs=engine.forward.cuda_graphs)
        started = time.perf_counter()
        for crops in sorted({NUM_CROPS[s] for s in args.scenarios}):
            engine_request(engine, prep, crops, n)
        if "S3" in args.scenarios:
            concurrent_requests(lambda t: engine_request(engine, prep, s3_crops, n, t), args.concurrent)
        setup["cerebro_warmup_s"] = time.perf_counter() - started
        for scenario in [s for s in args.scenarios if s != "S3"]:
            ctx.reset_peak()
            runs = [engine_request(engine, prep, NUM_CROPS[scenario], n) for _ in range(args.repeats)]
            record = single_record(ctx, scenario, "cerebro", runs)
            ids = baseline_ids.get(scenario, [])
            # Same weights, same greedy rule: a long common prefix says both did the same work. Near-ties
            # of random logits may flip later tokens (other kernels), so this is informational only.
            record["greedy_prefix_match_tokens"] = next(
                (i for i, (a, b) in enumerate(zip(ids, runs[0].ids, strict=False)) if a != b), len(ids)
            )
            records.append(record)
            print(f"  cerebro {scenario} done")
        if "S3" in args.scenarios:
            ctx.reset_peak()
            t0, runs = concurrent_requests(
                lambda t: engine_request(engine, prep, s3_crops, n, t), args.concurrent
            )
            records.append(concurrent_record(ctx, "cerebro", t0, runs))
            print("  cerebro S3 done")
    finally:
        engine.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="full-size model on CUDA; fail without a GPU")
    mode.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script only")
    mode.add_argument("--plan", action="store_true", help="print bytes per step and prompt sizes; no run")
    parser.add_argument("--scenarios", default="S1,S2,S3", help="comma-separated subset of S1,S2,S3")
    parser.add_argument("--new-tokens", type=int, help="forced output length (64 full, 16 smoke)")
    parser.add_argument("--concurrent", type=int, help="requests in S3 (16 full, 4 smoke)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of S1 and S2; median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        help=f"JSON folder (default: {RESULTS.relative_to(REPO_ROOT)} for --full, "
        f"{SMOKE_RESULTS.relative_to(REPO_ROOT)} for --smoke: git-ignored, smoke runs are not results)",
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios or not set(args.scenarios) <= set(SCENARIOS):
        parser.error(f"--scenarios takes a comma-separated subset of {','.join(SCENARIOS)}")
    cuda = torch.cuda.is_available()
    if args.full and not cuda:
        parser.exit(
            2,
            "gpu_speed.py --full needs a CUDA GPU and none is visible to torch "
            f"(torch {torch.__version__}, cuda build {torch.version.cuda}). The full-size figures are only "
            "meaningful on a GPU; run with --smoke to check the script on the CPU.\n",
        )
    args.mode = "smoke" if args.smoke or (not args.full and not cuda) else "full"
    if args.mode == "smoke" and not args.smoke and not args.plan:
        print("no CUDA device: running the CPU smoke mode (tiny model); pass --full to require a GPU\n")
    small = args.mode == "smoke"
    args.out = args.out or (SMOKE_RESULTS if small else RESULTS)
    args.new_tokens = args.new_tokens or (16 if small else 64)
    args.concurrent = args.concurrent or (4 if small else 16)
    if args.new_tokens < 2 or args.concurrent < 1 or args.repeats < 1:
        parser.error("--new-tokens must be at least 2, --concurrent and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        return plan(args)
    transformers.logging.set_verbosity_error()  # generate's per-call notices would bury the table
    smoke = args.mode == "smoke"
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    fixture = shared_dir() / "fixtures" / "phi35v-real-config"  # tokenizer + preprocessor config
    config = load_config(args.mode)
    name = device_name(device)
    print(f"gpu_speed: mode={args.mode} device={name} dtype={str(dtype).removeprefix('torch.')}")

    started = time.perf_counter()
    bandwidth = copy_bandwidth(device, GiB if not smoke else 256 * 1024**2)
    bandwidth_s = time.perf_counter() - started
    started = time.perf_counter()
    model = random_model(config, dtype, device, args.seed)
    sync(device)
    weights_s = time.perf_counter() - started
    prep = Preprocess(fixture, config, synthetic_jpeg(args.seed))
    prompt_tokens = {s: int(prep(NUM_CROPS[s])["input_ids"].shape[1]) for s in args.scenarios}

    common: dict[str, Any] = {
        "device": name,
        "mode": args.mode,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": config._attn_implementation,
        "model": "Phi-3.5-vision, random weights" + (" (tiny config)" if smoke else " (full size)"),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cuda_version": torch.version.cuda,
        "git": git_commit(),
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "copy_bandwidth_note": "CPU memcpy (smoke), not a GPU figure" if smoke else "dst.copy_(src), 1 GiB",
        "decoder_weight_bytes_per_step": decoder_weight_bytes(model),
        "kv_bytes_per_token": DecoderShape.from_config(config).bytes_per_token(dtype),
        "question_tokens": QUESTION_TOKENS,
        "image": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} synthetic JPEG q90, decoded inside the timing",
    }
    ctx = Context(
        mode=args.mode,
        device=device,
        new_tokens=args.new_tokens,
        concurrent=args.concurrent,
        bandwidth=bandwidth,
        weight_bytes=common["decoder_weight_bytes_per_step"],
        kv_bytes_per_token=common["kv_bytes_per_token"],
        common=common,
    )
    setup: dict[str, Any] = {"copy_bandwidth_s": bandwidth_s, "weights_init_s": weights_s}
    records: list[dict[str, Any]] = []

    # Baseline first, before the engine allocates its KV cache, so that its peak memory is its own.
    baseline_ids = run_baseline(ctx, model, prep, args, setup, records)
    run_cerebro(ctx, model, prep, args, setup, records, baseline_ids, max(prompt_tokens.values()))

    add_speedups(records)
    order = {s: i for i, s in enumerate(SCENARIOS)}
    records.sort(key=lambda r: (order[r["scenario"]], r["engine"] != "baseline"))
    for r in records:
        r["setup"] = setup

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}_{slug(name)}_{args.mode}.json"
    path.write_text(json.dumps(records, indent=2) + "\n")

    print()
    label = "CPU SMOKE RUN (tiny model, float32): not GPU figures" if smoke else "full size, bf16"
    print(f"{name} | {label} | {args.new_tokens} new tokens | copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(
        f"decoder bytes/step {ctx.weight_bytes / 1e9:.3f} GB + {ctx.kv_bytes_per_token} B/token of KV | "
        f"weights {weights_s:.1f} s, engine {setup['engine_alloc_s']:.2f} s, "
        f"{setup['graph_count']} graphs in {setup['graph_capture_s']:.1f} s"
    )
    print()
    print_table(records)
    print()
    print("S3: TTFT columns are p50 / p95 from t0 (all requests arrive at t0); decode t/s is the median per")
    print("    request; roofline% is aggregate output tok/s vs the roofline of all S3 rows decoded together.")
    if not smoke:
        print("\ntargets (issue): " + TARGETS)
        for line in check_targets(records):
            print("  " + line)
    print(f"\nwrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
