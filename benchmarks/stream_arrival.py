# Written with AI assistance; review before relying on it.
"""When the pieces of a long answer arrive: over HTTP (the real Cog server, server-sent events) and
in-process (`iterate(predictor.run(...))`, what `cerebro predict --model-dir` does), in one run.

A benchmark script, not a test. It writes a tiny random checkpoint, starts `python -m cerebro.serving
cerebro/predict.py:Predictor` on it and sets up the same runner in this process with the same settings,
then alternates one request of each kind per round: a 2,000-token answer (temperature 1 with a seed the
tiny model never stops for, so every request makes all its tokens). For each it records

    first_s   request sent -> first piece received (SSE `output` event, or the first piece in-process)
    last_s    request sent -> last piece received
    pieces    pieces received (token pieces; a token can decode to no text)

and prints the medians over --rounds. A buffered server would show first_s close to last_s.

    python benchmarks/stream_arrival.py [--rounds 3] [--tokens 2000] [--tokenizer-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a plain script from anywhere, without installing cerebro
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cold_start import default_tokenizer_dir, free_port, status  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402

RUNNER = "cerebro/predict.py:Predictor"
SEED = 1  # at temperature 1 the tiny model (seed 0) meets no stop token with this seed
SETTINGS = {"CEREBRO_LOG_LEVEL": "WARNING", "CEREBRO_MAX_BATCH": "1"}


def request_inputs(tokens: int) -> dict[str, Any]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "prompt": "Describe the image.",
        "image": image,
        "max_new_tokens": tokens,
        "temperature": 1.0,
        "seed": SEED,
        "num_crops": 1,
    }


def over_http(url: str, inputs: dict[str, Any]) -> dict[str, float]:
    body = json.dumps({"input": inputs}).encode()
    request = urllib.request.Request(
        f"{url}/predictions",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    started = time.perf_counter()
    first = last = None
    pieces, event, tokens = 0, "", 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "output":
                last = time.perf_counter() - started
                first = first if first is not None else last
                pieces += 1
            elif line.startswith("data:") and event == "completed":
                done = json.loads(line.removeprefix("data:"))
                if done["status"] != "succeeded":
                    raise RuntimeError(f"prediction {done['status']}: {done.get('error')}")
                tokens = done["metrics"]["output_token_count"]
    assert first is not None and last is not None
    return {"first_s": first, "last_s": last, "pieces": pieces, "tokens": tokens}


def in_process(predictor: Any, inputs: dict[str, Any]) -> dict[str, float]:
    from cerebro.predict import iterate, run_inputs

    started = time.perf_counter()
    first = last = None
    pieces = 0
    for _ in iterate(predictor.run(**run_inputs(**inputs))):
        last = time.perf_counter() - started
        first = first if first is not None else last
        pieces += 1
    assert first is not None and last is not None
    return {
        "first_s": first,
        "last_s": last,
        "pieces": pieces,
        "tokens": predictor.metrics["output_token_count"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--tokenizer-dir", type=Path, default=default_tokenizer_dir())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from cerebro.models.phi3_v.tiny import write_tiny_model
    from tests.support import set_up_predictor

    inputs = request_inputs(args.tokens)
    figures: dict[str, list[dict[str, float]]] = {"http": [], "in-process": []}
    with tempfile.TemporaryDirectory(prefix="cerebro-stream-") as tmp:
        scratch = Path(tmp)
        model_dir = write_tiny_model(scratch / "model", args.tokenizer_dir, seed=0, num_crops=4)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CEREBRO_")},
            **SETTINGS,
            "CEREBRO_MODEL_DIR": str(model_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        command = [
            sys.executable,
            "-m",
            "cerebro.serving",
            RUNNER,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        command += ["--workdir", str(scratch)]
        with (scratch / "server.log").open("wb") as log:
            server = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 300
            while status(url) != "READY":
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server not READY; log {scratch / 'server.log'}")
                time.sleep(0.1)
            predictor = set_up_predictor(model_dir, **SETTINGS)
            for _ in range(args.rounds):
                figures["http"].append(over_http(url, inputs))
                figures["in-process"].append(in_process(predictor, inputs))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    print(f"Arrival of a {args.tokens}-token answer on the tiny model, median of {args.rounds} rounds")
    print(f"  machine  {cpu_name()}, {platform.system()} {platform.machine()}")
    print()
    print(f"{'path':>10} {'first_s':>8} {'last_s':>8} {'pieces':>7} {'tokens':>7}")
    medians = {}
    for name, runs in figures.items():
        row = {
            key: statistics.median(run[key] for run in runs)
            for key in ("first_s", "last_s", "pieces", "tokens")
        }
        medians[name] = row
        print(
            f"{name:>10} {row['first_s']:8.3f} {row['last_s']:8.3f} {row['pieces']:7.0f} {row['tokens']:7.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": cpu_name(), "runs": figures, "medians": medians}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
