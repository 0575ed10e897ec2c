"""Throughput of the detector's numpy batch path alone: no Kafka, no Redis, no parsing.

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
import time
from functools import lru_cache

import numpy as np

from bench.report import CpuMeter, Figure, info
from vigil.detectors.bank import StateBank
from vigil.detectors.online import OnlineDetector, new_state_bank
from vigil.streams.state import VALUE_BYTES

__all__ = ["detector_figures", "mature_bank", "points_per_second"]

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
