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

__all__ = ["FIGURE_LINE", "Figure", "format_value", "info", "machine_line"]

#: What every figure line looks like (the test and any consumer of the output use this).
FIGURE_LINE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>-?\d+(?:\.\d+)?) (?P<unit>\S+)$")

_STARTED = time.monotonic()


def format_value(value: float) -> str:
    """Three significant digits, never in exponent notation (``1.23e+06`` is hard to read).

    >>> format_value(951_234.5), format_value(12.345), format_value(0.01234), format_value(7)
    ('951000', '12.3', '0.0123', '7')
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
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
