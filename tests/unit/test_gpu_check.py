# Written with AI assistance; review before relying on it.
"""scripts/gpu-check, the prepared GPU run: what can be checked without a GPU or the network."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu-check"


def test_without_a_mode_it_prints_its_usage_and_exits_2() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)

    assert done.returncode == 2
    assert "usage: bash scripts/gpu-check prepare | run" in done.stderr


def test_every_package_it_carries_is_pinned_in_requirements() -> None:
    # The versions come from requirements.txt; a carried name without a pin would download nothing.
    carried = re.search(r'^CARRIED_PINS="([^"]+)"', SCRIPT.read_text(), flags=re.MULTILINE)
    assert carried is not None
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    for name in carried.group(1).split():
        assert re.search(rf"^{re.escape(name)}==\S+$", requirements, flags=re.MULTILINE), name


def test_it_runs_the_gpu_tests_and_the_full_benchmark_within_the_budget() -> None:
    text = SCRIPT.read_text()
    assert "-m gpu tests/integration/test_engine_gpu.py" in text
    assert "benchmarks/gpu_speed.py --full" in text
    budget = int(re.search(r"^BUDGET_S=(\d+)", text, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert budget <= 8 * 60  # the limit, inside the device tool's 10-minute call
