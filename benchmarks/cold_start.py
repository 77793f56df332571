# Written with AI assistance; review before relying on it.
"""Cold start: seconds from starting the Cog server on a tiny model to READY, this tree against a baseline.

A benchmark script, not a test. In one run it starts the real server (`python -m cerebro.serving
cerebro/predict.py:Predictor`, as `cerebro serve` does) from two source trees, alternately: this checkout
and a baseline revision checked out into a temporary git worktree (default: 6083eab, main before the
hostile-callers and first-hour issues). Both serve the same tiny random checkpoint with the same settings
and the same interpreter and packages (PYTHONPATH puts each tree's `cerebro` first). For each start it
records:

    ready_s    server process started -> /health-check says READY (what an operator waits for)
    import_s   setup()'s own import time, from its log line (imports done inside setup)
    setup_s    setup() in all, from the same line

Medians over --runs starts of each tree, alternating so machine noise hits both alike. Note that import_s
means different things in the two trees: the baseline's runner module imported torch and transformers
before setup() began (so its import_s left them out), this tree's imports them inside setup().

    python benchmarks/cold_start.py [--baseline REV] [--runs 5] [--tokenizer-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
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

from benchmarks.machine import cpu_name  # noqa: E402

DEFAULT_BASELINE = "6083eab"
RUNNER = "cerebro/predict.py:Predictor"
READY_TIMEOUT_S = 300.0
SETUP_LINE = re.compile(r"setup_s=([\d.]+) import_s=([\d.]+)")


def default_tokenizer_dir() -> Path:
    shared = Path(os.environ.get("CEREBRO_SHARED_DIR") or REPO_ROOT.parent / "shared")
    return shared / "fixtures" / "phi35v-tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/health-check", timeout=2) as response:
            return str(json.load(response).get("status"))
    except (OSError, ValueError):
        return "DOWN"


def start_once(tree: Path, model_dir: Path, workdir: Path) -> dict[str, float]:
    """One cold start of the server from `tree`; returns its figures, then stops it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / f"server-{port}.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CEREBRO_")},
        "CEREBRO_MODEL_DIR": str(model_dir),
        "PYTHONPATH": str(tree),
    }
    command = [sys.executable, "-m", "cerebro.serving", RUNNER, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workdir", str(workdir)]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while (state := status(url)) != "READY":
            if process.poll() is not None or state in ("SETUP_FAILED", "DEFUNCT"):
                raise RuntimeError(f"{tree}: server {state}; log {log_path}")
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"{tree}: not READY after {READY_TIMEOUT_S:.0f} s; log {log_path}")
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    match = None
    for _ in range(50):  # coglet copies the worker's stderr asynchronously: the line may come late
        match = SETUP_LINE.search(log_path.read_text(errors="replace"))
        if match:
            break
        time.sleep(0.1)
    if match is None:
        raise RuntimeError(f"{tree}: no setup line in {log_path}")
    return {"ready_s": ready_s, "setup_s": float(match.group(1)), "import_s": float(match.group(2))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare against")
    parser.add_argument("--runs", type=int, default=5, help="cold starts of each tree (default 5)")
    parser.add_argument("--tokenizer-dir", type=Path, default=default_tokenizer_dir())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from cerebro.models.phi3_v.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="cerebro-cold-") as tmp:
        scratch = Path(tmp)
        baseline = scratch / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(baseline), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            model_dir = write_tiny_model(scratch / "model", args.tokenizer_dir, seed=0, num_crops=4)
            trees = {"baseline": baseline, "this tree": REPO_ROOT}
            figures: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for run in range(args.runs):
                order = list(trees) if run % 2 == 0 else list(reversed(trees))
                for name in order:
                    figures[name].append(start_once(trees[name], model_dir, scratch))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(baseline)],
                check=False,
                capture_output=True,
            )

    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in ("ready_s", "setup_s", "import_s")}
        for name, runs in figures.items()
    }
    print(f"Cold start to READY on a tiny model ({args.runs} alternating starts each, median)")
    print(f"  machine   {cpu_name()}, {platform.system()} {platform.machine()}")
    print(f"  baseline  {args.baseline}")
    print()
    print(f"{'tree':>10} {'ready_s':>8} {'setup_s':>8} {'import_s':>9}")
    for name, row in medians.items():
        print(f"{name:>10} {row['ready_s']:8.2f} {row['setup_s']:8.2f} {row['import_s']:9.2f}")
    ratio = medians["baseline"]["ready_s"] / medians["this tree"]["ready_s"]
    print(f"\nready_s baseline / this tree: {ratio:.2f}x")
    if args.json:
        result: dict[str, Any] = {
            "machine": cpu_name(),
            "baseline": args.baseline,
            "runs": figures,
            "medians": medians,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
