"""Resampling alone: the compiled pass against the numpy version it replaced (issue 15).

:func:`vigil.detectors.resample.resample_batch` and ``bench/reference_resample.py`` on the
same batch, into fresh state banks: one point per step per series, in order (the common
case), for two shapes — 20 series × 40,000 points (a history) and 10,000 series × 10 points
(a fleet's batch). Best of ``--repeats`` wall times after one warm-up call (the compiled
pass is loaded or compiled then).

Run::

    PYTHONPATH=. python -m bench.resample [--repeats 5]

Prints ``resample_<shape>_compiled`` and ``resample_<shape>_numpy`` in points per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench import reference_resample
from bench.report import Figure, machine_line
from vigil.detectors.bank import new_state_bank
from vigil.detectors.resample import resample_batch

SHAPES = {"20_series_x40k": (20, 40_000), "10k_series_x10": (10_000, 10)}
STEP_MS = 60_000
T0 = 1_700_000_000_000  # a whole minute


def points_per_second(resample, n_series: int, n_steps: int, repeats: int) -> float:
    index = np.repeat(np.arange(n_series), n_steps).astype(np.int64)
    ts = (T0 + np.tile(np.arange(n_steps), n_series) * STEP_MS).astype(np.int64)
    values = np.random.default_rng(0).normal(size=len(index))
    resample(new_state_bank(n_series), index, ts, values, STEP_MS, 5)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        bank = new_state_bank(n_series)
        started = time.perf_counter()
        resample(bank, index, ts, values, STEP_MS, 5)
        best = min(best, time.perf_counter() - started)
    return len(index) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    for shape, (n_series, n_steps) in SHAPES.items():
        for name, resample in (("compiled", resample_batch),
                               ("numpy", reference_resample.resample_batch)):
            rate = points_per_second(resample, n_series, n_steps, args.repeats)
            print(Figure(f"resample_{shape}_{name}", rate, "points/s").line(), flush=True)


if __name__ == "__main__":
    main()
