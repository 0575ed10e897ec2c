"""How the benchmarks talk: figures on stdout as ``name: value unit``, progress on stderr.

Stdout carries only the machine line and the figures, so a script (or a CI job comparing
runs) can parse it line by line; everything meant for a person watching goes to stderr.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass

__all__ = [
    "FIGURE_LINE",
    "CpuMeter",
    "Figure",
    "cpu_seconds",
    "format_value",
    "info",
    "machine_line",
]

#: What every figure line looks like (the test and any consumer of the output use this).
FIGURE_LINE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>-?\d+(?:\.\d+)?) (?P<unit>\S+)$")

_STARTED = time.monotonic()


def format_value(value: float) -> str:
    """Three significant digits, never in exponent notation (``1.23e+06`` is hard to read).

    Whole numbers (sizes, counts) are exact: rounding 1372 bytes to 1370 would misreport.

    >>> format_value(951_234.5), format_value(12.345), format_value(0.01234), format_value(1372)
    ('951000', '12.3', '0.0123', '1372')
    """
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    digits = 3 - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, digits)
    if digits <= 0:
        return str(int(rounded))
    text = f"{rounded:.{digits}f}".rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True)
class Figure:
    """One measured figure."""

    name: str
    value: float
    unit: str

    def line(self) -> str:
        return f"{self.name}: {format_value(self.value)} {self.unit}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """``machine: <cores> cores, <cpu model>, Python x.y`` — the first line of the output."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    python = ".".join(platform.python_version_tuple()[:2])
    return f"machine: {cores} cores, {_cpu_model()}, Python {python}"


def info(message: str) -> None:
    """Progress for a person: stderr, with seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU each of some processes used from construction to :meth:`report`, and the rest.

    "others" is every other process on the machine: a benchmark next to a busy neighbour
    measures the neighbour too, and this says so.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine_start = _machine_busy_seconds()
        self.started = time.monotonic()

    def report(self) -> str:
        wall = time.monotonic() - self.started
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        used["others"] = max(_machine_busy_seconds() - self.machine_start - sum(used.values()), 0.0)
        parts = [f"{name} {seconds / wall:.0%}" for name, seconds in used.items()]
        return f"CPU over {wall:.1f} s (100 % = one core): " + ", ".join(parts)
