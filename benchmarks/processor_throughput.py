# Written with AI assistance; review before relying on it.
"""Phi3VProcessor throughput on CPU for one 2000x1500 photo-like JPEG, at num_crops 4 and 16.

A benchmark script, not a test: it prints a table (and optionally writes JSON). Each timed run reopens the
JPEG and calls `Phi3VProcessor(text=prompt, images=[image])`, so decoding, the HD transform, the crops and
tokenization are all inside the measurement, as in serving. Decode alone is timed separately for scale.

    python benchmarks/processor_throughput.py [--model-dir DIR] [--runs 7] [--json OUT]

The model folder needs the tokenizer files and preprocessor_config.json (weights are not read); the
default is ../shared/fixtures/phi35v-tiny (or $CEREBRO_SHARED_DIR/fixtures/phi35v-tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a plain script from anywhere, without installing cerebro
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from cerebro.models.phi3_v import Phi3VProcessor  # noqa: E402

WIDTH, HEIGHT = 2000, 1500
PROMPT_TEXT = "<|image_1|>\nDescribe this photo in detail."


def default_model_dir() -> Path:
    shared = Path(os.environ.get("CEREBRO_SHARED_DIR") or REPO_ROOT.parent / "shared")
    return shared / "fixtures" / "phi35v-tiny"


def synthetic_photo(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """Deterministic photo-like content: smooth colour gradients, soft shapes and sensor-like noise, so
    that JPEG size and decode cost resemble a real photo rather than a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= width
    y /= height
    base = np.stack(
        [
            0.55 + 0.35 * np.sin(2.1 * x + 0.7) * (1 - y),  # sky-to-ground
            0.45 + 0.30 * np.cos(3.3 * y - 1.1 * x),
            0.40 + 0.35 * y * (1 - 0.5 * x),
        ],
        axis=-1,
    )
    image = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        rx, ry = rng.integers(20, width // 5), rng.integers(20, height // 5)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=3))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def machine() -> str:
    return f"{cpu_name()}, {platform.system()} {platform.machine()}"


def time_runs(fn, runs: int, warmup: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def bench(model_dir: Path, image_path: Path, num_crops: int, runs: int, warmup: int) -> dict[str, float]:
    processor = Phi3VProcessor.from_pretrained(model_dir, num_crops=num_crops)
    prompt = processor.apply_chat_template([{"role": "user", "content": PROMPT_TEXT}])

    def process() -> None:
        with Image.open(image_path) as image:
            out = processor(text=prompt, images=[image])
        assert out["pixel_values"].shape[1] == num_crops + 1

    def decode() -> None:
        with Image.open(image_path) as image:
            image.load()

    seconds = time_runs(process, runs, warmup)
    decode_s = time_runs(decode, runs, warmup)
    with Image.open(image_path) as image:
        out = processor(text=prompt, images=[image])
    median = statistics.median(seconds)
    return {
        "num_crops": num_crops,
        "images_per_s": 1.0 / median,
        "median_ms": 1000 * median,
        "min_ms": 1000 * min(seconds),
        "max_ms": 1000 * max(seconds),
        "decode_median_ms": 1000 * statistics.median(decode_s),
        "image_tokens": int(out["num_img_tokens"][0]),
        "sequence_tokens": int(out["input_ids"].shape[1]),
        "hd_size": "x".join(str(v) for v in reversed(out["image_sizes"][0].tolist())),  # W'xH'
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=default_model_dir(), help="tokenizer + configs")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--num-crops", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--image", type=Path, help="use this file instead of the synthetic 2000x1500 JPEG")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.model_dir / "tokenizer.json").is_file():
        parser.error(f"{args.model_dir} has no tokenizer.json; pass --model-dir")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        if args.image:
            image_path, source = args.image, str(args.image)
        else:
            image_path = Path(tmp) / "photo.jpg"
            synthetic_photo().save(image_path, format="JPEG", quality=90)
            source = "synthetic photo, JPEG q90"
        with Image.open(image_path) as image:
            size = f"{image.width}x{image.height} {image.format}"
        file_kb = image_path.stat().st_size / 1024
        results = [bench(args.model_dir, image_path, n, args.runs, args.warmup) for n in args.num_crops]

    header = {
        "image": f"{size}, {file_kb:.0f} KiB ({source})",
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model_dir": str(args.model_dir),
        "warmup": args.warmup,
    }
    print(f"Phi3VProcessor throughput on CPU ({args.runs} runs after {args.warmup} warm-ups, median)")
    for key in ("image", "machine", "torch_threads", "torch"):
        print(f"  {key:<14}{header[key]}")
    print()
    print(
        f"{'num_crops':>9} {'images/s':>9} {'ms/image':>9} {'min ms':>8} {'max ms':>8} {'decode ms':>10} "
        f"{'HD size':>10} {'img tokens':>10}"
    )
    for r in results:
        print(
            f"{r['num_crops']:>9} {r['images_per_s']:>9.2f} {r['median_ms']:>9.1f} {r['min_ms']:>8.1f} "
            f"{r['max_ms']:>8.1f} {r['decode_median_ms']:>10.1f} {r['hd_size']:>10} {r['image_tokens']:>10}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**header, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
