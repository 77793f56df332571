# Written with AI assistance; review before relying on it.
"""What the benchmarks write down about the CPU they ran on (not a benchmark itself)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """E.g. "AMD EPYC 7B13 (2 logical CPUs)": /proc/cpuinfo's model name where there is one."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} logical CPUs)"
