# Written with AI assistance; review before relying on it.
"""Image preprocessing speed on CPU: the HD transform against its pre-speed-up baseline, then end to end.

A benchmark script, not a test: it prints two tables (and optionally writes JSON).

1. HD transform, new vs baseline: `Phi3VImageProcessor` against `BaselineProcessor` (a frozen copy of the
   implementation before the contiguous, in-place, one-buffer rewrite) on already decoded photo-like images
   of 2000x1500, 1024x768 and 336x336 at num_crops 4 and 16. Both run in this process, interleaved (the
   order alternates run by run), so machine noise hits both alike; the table gives medians and the ratio
   baseline/new, and checks that both return bit-identical pixel_values and image_sizes (torch.equal).
2. End to end: each timed run reopens a 2000x1500 JPEG and calls `Phi3VProcessor(text=prompt,
   images=[image])`, so decoding, the HD transform, the crops and tokenization are all inside the
   measurement, as in serving. Decode alone is timed separately for scale.

    python benchmarks/processor_throughput.py [--model-dir DIR] [--runs 7] [--compare-runs 15] [--json OUT]

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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a plain script from anywhere, without installing cerebro
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from cerebro.models.phi3_v import Phi3VImageProcessor, Phi3VProcessor  # noqa: E402
from cerebro.models.phi3_v.image_processing import to_rgb  # noqa: E402

WIDTH, HEIGHT = 2000, 1500
COMPARE_SIZES = ((2000, 1500), (1024, 768), (336, 336))
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
        box = (int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=3))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def machine() -> str:
    return f"{cpu_name()}, {platform.system()} {platform.machine()}"


class BaselineProcessor(Phi3VImageProcessor):
    """The HD transform as it was before the speed-up (frozen copy of hd_tensor, crops and __call__): PIL
    canvas + paste, float ops on a channel-last view each allocating a new tensor, zeros + stack. Layout and
    token counts are inherited, so only the pixel path differs."""

    def hd_tensor(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        lay = self.layout(*image.size)
        if lay.transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        image = image.resize((lay.resized_w, lay.resized_h), Image.Resampling.BILINEAR)
        padded_h = lay.h_crop * self.crop_size if not lay.transposed else lay.w_crop * self.crop_size
        canvas = Image.new("RGB", (lay.resized_w, padded_h), (255, 255, 255))
        canvas.paste(image, (0, (padded_h - lay.resized_h) // 2))  # top = floor(extra / 2)
        if lay.transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())  # H', W', 3
        chw = pixels.permute(2, 0, 1).to(torch.float32).div(255.0)  # 3, H', W'
        return chw.sub(self.mean).div(self.std)

    def crops(self, hd: torch.Tensor) -> torch.Tensor:
        s = self.crop_size
        _, height, width = hd.shape
        h_crop, w_crop = height // s, width // s
        glb = F.interpolate(hd[None], size=(s, s), mode="bicubic", align_corners=False)  # 1, 3, S, S
        tiles = (
            hd.reshape(3, h_crop, s, w_crop, s)  # 3, h, S, w, S
            .permute(1, 3, 0, 2, 4)  # h, w, 3, S, S
            .reshape(h_crop * w_crop, 3, s, s)
        )
        out = torch.zeros(self.num_crops + 1, 3, s, s, dtype=torch.float32)
        out[0] = glb[0]
        out[1 : 1 + h_crop * w_crop] = tiles
        return out

    def __call__(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        pixel_values, sizes = [], []
        for image in images:
            hd = self.hd_tensor(image)
            _, height, width = hd.shape
            pixel_values.append(self.crops(hd))
            sizes.append([height, width])
        return {
            "pixel_values": torch.stack(pixel_values),  # N, num_crops + 1, 3, S, S
            "image_sizes": torch.tensor(sizes, dtype=torch.long),  # N, 2 as (H', W')
        }


def decoded_photo(width: int, height: int) -> Image.Image:
    """The synthetic photo at this size, through a JPEG q90 round trip (as a served image would be)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        synthetic_photo(width, height).save(path, format="JPEG", quality=90)
        with Image.open(path) as image:
            image.load()
            return image.copy()


def compare(num_crops_list: list[int], runs: int, warmup: int) -> list[dict[str, object]]:
    """Baseline vs new on the same decoded images, interleaved; medians, ratio, and a bit-identity check."""
    settings = []
    for width, height in COMPARE_SIZES:
        image = decoded_photo(width, height)
        for n in num_crops_list:
            settings.append(
                ((width, height, n), image, BaselineProcessor(num_crops=n), Phi3VImageProcessor(n))
            )
    times: dict[tuple[int, int, int], dict[str, list[float]]] = {
        key: {"baseline": [], "new": []} for key, *_ in settings
    }
    for run in range(warmup + runs):
        for key, image, base, new in settings:
            pair = [("baseline", base), ("new", new)]
            for name, proc in pair if run % 2 == 0 else pair[::-1]:  # alternate who goes first
                start = time.perf_counter()
                proc([image])
                if run >= warmup:
                    times[key][name].append(time.perf_counter() - start)
    results = []
    for key, image, base, new in settings:
        want, got = base([image]), new([image])
        identical = torch.equal(want["pixel_values"], got["pixel_values"]) and torch.equal(
            want["image_sizes"], got["image_sizes"]
        )
        baseline_s = statistics.median(times[key]["baseline"])
        new_s = statistics.median(times[key]["new"])
        results.append(
            {
                "size": f"{key[0]}x{key[1]}",
                "num_crops": key[2],
                "baseline_ms": 1000 * baseline_s,
                "new_ms": 1000 * new_s,
                "speedup": baseline_s / new_s,
                "bit_identical": identical,
                "hd_size": "x".join(str(v) for v in reversed(got["image_sizes"][0].tolist())),  # W'xH'
                "runs": runs,
            }
        )
    return results


def time_runs(fn: Callable[[], None], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def bench(model_dir: Path, image_path: Path, num_crops: int, runs: int, warmup: int) -> dict[str, object]:
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
    parser.add_argument(
        "--compare-runs", type=int, default=15, help="timed runs per setting, new vs baseline"
    )
    parser.add_argument("--no-end-to-end", action="store_true", help="only the new-vs-baseline table")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.model_dir / "tokenizer.json").is_file():
        parser.error(f"{args.model_dir} has no tokenizer.json; pass --model-dir")
    if args.runs < 1 or args.compare_runs < 1:
        parser.error("--runs and --compare-runs must be at least 1")

    comparison = compare(args.num_crops, args.compare_runs, args.warmup)
    print(
        f"HD transform, Phi3VImageProcessor vs BaselineProcessor ({args.compare_runs} interleaved runs after "
        f"{args.warmup} warm-ups, median; decoded images, no tokenization)"
    )
    print(f"  {'machine':<14}{machine()}")
    print(f"  {'torch_threads':<14}{torch.get_num_threads()}")
    print()
    print(
        f"{'image':>9} {'num_crops':>9} {'HD size':>10} {'baseline ms':>11} {'new ms':>8} {'speedup':>8} "
        f"{'bit-identical':>13}"
    )
    for c in comparison:
        print(
            f"{c['size']:>9} {c['num_crops']:>9} {c['hd_size']:>10} {c['baseline_ms']:>11.2f} "
            f"{c['new_ms']:>8.2f} {c['speedup']:>7.2f}x {'yes' if c['bit_identical'] else 'NO':>13}"
        )
    print()
    if args.no_end_to_end:
        results: list[dict[str, object]] = []
        return _finish(args, comparison, results, {"machine": machine()})

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
    return _finish(args, comparison, results, header)


def _finish(
    args: argparse.Namespace,
    comparison: list[dict[str, object]],
    results: list[dict[str, object]],
    header: dict,
) -> int:
    """Write the JSON if asked; exit status 1 when any output was not bit-identical to the baseline."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **header,
            "torch_threads": torch.get_num_threads(),
            "comparison": comparison,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if not all(c["bit_identical"] for c in comparison):
        print("error: the new HD transform is not bit-identical to the baseline", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
