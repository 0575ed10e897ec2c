"""Throughput of the detector's batch path alone: no Kafka, no Redis, no parsing.

The worker calls ``OnlineDetector().process(bank, index, ts_ms, values)`` once per batch
with the gathered states of the series in it. Here the bank holds every series and each
round brings one point per series at the next minute — the live steady state of a fleet
that reports once a minute. Each round closes the previous minute of every series, so one
round scores and learns one step per series.

The states are *mature*: a small bank learns two days of data first (long enough for the
hourly noise scale and the daily profile to switch on) and is tiled out to the full size.
Fresh states would take other code paths (warm-up, first day) and would not be the steady
state the target is about.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench.report import CpuMeter, Figure, info
from vigil.detectors.bank import StateBank
from vigil.detectors.online import OnlineDetector, new_state_bank
from vigil.streams.state import VALUE_BYTES

__all__ = [
    "SHAPES", "detector_figures", "kernel_figures", "mature_bank", "points_per_second",
    "steps_per_second",
]

MINUTE_MS = 60_000
T0_MS = 1_699_833_600_000  # Monday 2023-11-13 00:00 UTC


def mature_bank(
    n_series: int, learn_steps: int = 2 * 1440, distinct: int = 64, seed: int = 0
) -> tuple[StateBank, int]:
    """``n_series`` learned states and the timestamp of the minute they expect next.

    ``distinct`` series learn ``learn_steps`` minutes of noisy data with a daily bump; the
    bank repeats them (learning 100k series for two days would take minutes).
    """
    small, next_ts = _learned(learn_steps, distinct, seed)
    # A new bank repeating the small bank's series.
    return StateBank.from_records(np.resize(small, n_series)), next_ts


@lru_cache(maxsize=4)
def _learned(learn_steps: int, distinct: int, seed: int) -> tuple[np.ndarray, int]:
    # Cached: every bank size starts from the same learned states (1 s of work each time).
    detector = OnlineDetector()
    rng = np.random.default_rng(seed)
    small = new_state_bank(distinct)
    rows = np.arange(distinct)
    level = rng.uniform(10.0, 100.0, distinct)
    for step in range(learn_steps):
        ts = T0_MS + step * MINUTE_MS
        hour = (ts % 86_400_000) / 3_600_000
        bump = 0.3 * level * np.exp(-(((hour - 14.0) / 3.0) ** 2))
        values = level + bump + rng.normal(0.0, 0.05, distinct) * level
        detector.process(small, rows, np.full(distinct, ts), values)
    records = small.to_records()
    records.flags.writeable = False  # shared by every caller: copies only
    return records, T0_MS + learn_steps * MINUTE_MS


def points_per_second(
    n_series: int, rounds: int, skip: int = 3, learn_steps: int = 2 * 1440, seed: int = 1
) -> float:
    """Points/s over ``rounds`` timed rounds of one point per series, after ``skip`` rounds.

    The skipped rounds absorb first-call costs (allocations, page faults of the new bank).
    """
    bank, next_ts = mature_bank(n_series, learn_steps)
    detector = OnlineDetector()
    rng = np.random.default_rng(seed)
    index = np.arange(n_series)
    base = bank["level"].copy()
    # Draw all values first: the RNG is not part of the detector's cost.
    noise = rng.normal(0.0, 0.05, (skip + rounds, n_series))
    elapsed = 0.0
    for r in range(skip + rounds):
        ts = np.full(n_series, next_ts + r * MINUTE_MS, np.int64)
        values = base * (1.0 + noise[r])
        started = time.perf_counter()
        detector.process(bank, index, ts, values)
        if r >= skip:
            elapsed += time.perf_counter() - started
    return n_series * rounds / elapsed


def _label(n_series: int) -> str:
    return f"{n_series // 1000}k" if n_series % 1000 == 0 else str(n_series)


def detector_figures(
    sizes: dict[int, int], skip: int = 3, learn_steps: int = 2 * 1440
) -> list[Figure]:
    """One ``detector_core_<n>_series`` figure per ``{n_series: timed rounds}``, plus the
    state size per series."""
    figures = []
    for n_series, rounds in sizes.items():
        info(f"detector core: {n_series:,} series, {rounds} timed rounds after {skip}")
        meter = CpuMeter({"bench": os.getpid()})
        rate = points_per_second(n_series, rounds, skip=skip, learn_steps=learn_steps)
        info(f"detector core: {n_series:,} series: {rate:,.0f} points/s; {meter.report()}")
        figures.append(Figure(f"detector_core_{_label(n_series)}_series", rate, "points/s"))
    # What Redis stores per series: a 4-byte header (magic + format version) + one record.
    figures.append(Figure("state_bytes_per_series", VALUE_BYTES, "bytes"))
    return figures


#: The batch shapes of the step-kernel figures: name → (series, steps per series per batch).
SHAPES = {
    "10k_series_x10_steps": (10_000, 10),
    "100k_series_x10_steps": (100_000, 10),
    "20_series_x40k_steps": (20, 40_000),
}


def steps_per_second(
    n_series: int, steps: int, rounds: int = 2, skip: int = 1, seed: int = 1
) -> float:
    """Closed steps/s of batches of ``steps`` points per series (one a minute) over
    ``rounds`` timed batches after ``skip`` (first-call costs), on mature states."""
    bank, next_ts = mature_bank(n_series)
    detector = OnlineDetector()
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(n_series), steps)
    minutes = np.tile(np.arange(steps, dtype=np.int64), n_series)
    base = np.repeat(bank["level"].copy(), steps)
    closed, elapsed = 0, 0.0
    for r in range(skip + rounds):
        ts = next_ts + (r * steps + minutes) * MINUTE_MS
        values = base * (1.0 + rng.normal(0.0, 0.05, len(base)))
        started = time.perf_counter()
        result = detector.process(bank, index, ts, values)
        if r >= skip:
            elapsed += time.perf_counter() - started
            closed += len(result.steps)
    return closed / elapsed


_FIRST_CALL = (
    "import time; t = time.perf_counter()\n"
    "from vigil.detectors.online import SeriesDetector\n"
    "d = SeriesDetector()\n"
    "for m in range(3): d.learn_one(m * 60_000, 0.0)\n"
    "print(time.perf_counter() - t)\n"
)


def start_seconds(cache_dir: str) -> float:
    """Seconds a fresh process takes to import the detector and score its first steps
    (compiling the step kernel, or loading it from numba's cache in ``cache_dir``)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def score_nab_seconds(folder: Path) -> float:
    """``vigil score``'s own time on the NAB folder (after the kernel is compiled)."""
    from vigil.lab.score_files import score_csv_files

    with tempfile.TemporaryDirectory(prefix="vigil-bench-score-") as out:
        score_csv_files(folder, out, progress=False)  # compile / warm the caches
        return score_csv_files(folder, out, progress=False).seconds


def kernel_figures(nab_folder: Path | None = None) -> list[Figure]:
    """Steps/s for every batch shape of :data:`SHAPES`, the first process's compile time and
    a cached start, and ``vigil score`` on ``nab_folder`` (when given and present)."""
    figures = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-numba-") as cache:
        figures.append(Figure("detector_first_start", start_seconds(cache), "s"))
        figures.append(Figure("detector_cached_start", start_seconds(cache), "s"))
    for name, (n_series, steps) in SHAPES.items():
        rounds, skip = (1, 0) if steps * n_series > 500_000 and n_series < 100 else (2, 1)
        info(f"detector steps: {n_series:,} series × {steps:,} steps, {rounds} timed batches")
        meter = CpuMeter({"bench": os.getpid()})
        rate = steps_per_second(n_series, steps, rounds=rounds, skip=skip)
        info(f"detector steps: {name}: {rate:,.0f} steps/s; {meter.report()}")
        figures.append(Figure(f"detector_{name}", rate, "steps/s"))
    if nab_folder is not None and nab_folder.is_dir():
        figures.append(Figure("score_nab_dev", score_nab_seconds(nab_folder), "s"))
    return figures
