"""The step kernel alone, and the river-style single-series calls (issue 15).

``vigil bench --detector-only`` times the whole batch path (resampling, the result arrays,
the compiled step). This times :func:`vigil.detectors.kernel.run_steps` by itself on steps
resampled beforehand, from the mature states of :func:`bench.detector.mature_bank`, for two
shapes: 20 series × 40,000 steps (a history) and 10,000 series × 10 steps (a fleet's batch).
Each run starts from a copy of the same states; best of ``--repeats`` wall times. Then
``SeriesDetector.learn_one`` and ``score_one`` on one learned series, microseconds per call.

Run::

    PYTHONPATH=. python -m bench.kernel [--repeats 5]

Prints ``kernel_<shape>`` in steps per second and ``kernel_<shape>_ns_per_step``, then
``series_learn_one_us`` and ``series_score_one_us``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.detector import MINUTE_MS, mature_bank
from bench.report import Figure, machine_line
from vigil.detectors.kernel import run_steps
from vigil.detectors.online import OnlineDetector, SeriesDetector
from vigil.detectors.resample import resample_batch

__all__ = ["kernel_steps_per_second", "series_call_us"]

SHAPES = {"20_series_x40k": (20, 40_000), "10k_series_x10": (10_000, 10)}


def kernel_steps_per_second(n_series: int, n_steps: int, repeats: int) -> float:
    """Steps/s of ``run_steps`` alone on ``n_series`` mature series × ``n_steps`` steps."""
    bank, next_ts = mature_bank(n_series)
    detector = OnlineDetector()
    p = detector.params
    index = np.repeat(np.arange(n_series), n_steps)
    ts = next_ts + np.tile(np.arange(n_steps, dtype=np.int64), n_series) * MINUTE_MS
    base = np.repeat(bank["level"].copy(), n_steps)
    values = base * (1.0 + np.random.default_rng(1).normal(0.0, 0.05, len(base)))
    steps = resample_batch(bank, index, ts, values, p.step_ms, p.max_fill_steps)
    n = len(steps)
    sign = np.zeros(len(bank))
    best = float("inf")
    for _ in range(repeats + 1):  # the first run loads (or compiles) the kernel
        records = bank.records.copy()
        out = (np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.int8), np.zeros(n, bool),
               np.zeros(n, np.int8), np.zeros(n, np.int8), np.full(n, -1, np.int64),
               np.zeros(n, np.int8), np.zeros(n, np.int8), np.zeros(n, bool))
        started = time.perf_counter()
        run_steps(records, np.ascontiguousarray(steps.index, np.int64), steps.ts_ms,
                  steps.value, steps.filled, steps.after_gap, sign, detector.constants, *out)
        best = min(best, time.perf_counter() - started)
    return n / best


def series_call_us(calls: int = 20_000) -> tuple[float, float]:
    """Microseconds per ``learn_one`` and per ``score_one`` call on a series with two days
    learned (a sine wave, one point a minute)."""
    detector = SeriesDetector()
    t0 = 1_700_006_400_000
    minutes = 2 * 1440
    started = time.perf_counter()
    for m in range(minutes):
        detector.learn_one(t0 + m * MINUTE_MS, 50.0 + np.sin(m / 30.0))
    learn = (time.perf_counter() - started) / minutes
    probe_ts = t0 + minutes * MINUTE_MS
    started = time.perf_counter()
    for _ in range(calls):
        detector.score_one(probe_ts, 50.5)
    score = (time.perf_counter() - started) / calls
    return learn * 1e6, score * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    for shape, (n_series, n_steps) in SHAPES.items():
        rate = kernel_steps_per_second(n_series, n_steps, args.repeats)
        print(Figure(f"kernel_{shape}", rate, "steps/s").line(), flush=True)
        print(Figure(f"kernel_{shape}_ns_per_step", 1e9 / rate, "ns").line(), flush=True)
    learn, score = series_call_us()
    print(Figure("series_learn_one_us", learn, "us").line())
    print(Figure("series_score_one_us", score, "us").line())


if __name__ == "__main__":
    main()
