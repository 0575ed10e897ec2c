"""False alarms on bursty, heavy-tailed counts with no labelled anomaly (issue 16's weak spot).

vigil's held-out scores fall on social-media volume counts: hundreds of openings outside the
labelled windows. Those files are not ours to look at, so this is a stand-in built from first
principles, with nothing to find: 5-minute counts over 50 days, a daily cycle and a slow
random walk in the rate, about three bursts a day (the rate multiplied by 1 + a lognormal
size, median 2, σ 1, decaying over 1–6 steps) and negative-binomial noise (dispersion 5)
at four base rates (3, 20, 80, 400 per step). Every opening after the series' first two days
is a false alarm by construction. Run::

    PYTHONPATH=. python -m bench.bursty_noise [--series 12]

It prints ``bursty_openings_per_series_week: value openings`` (mean over the series) and the
range. A detector that learns each series' own normal should drive it towards 0 without
losing the development corpora (``vigil evaluate``).
"""

from __future__ import annotations

import argparse

import numpy as np

from vigil.detectors.online import DetectorParams
from vigil.lab.models import OnlineModel

__all__ = ["bursty_series", "openings_per_week"]

STEP_S = 300
START_MS = 1_700_006_400_000


def bursty_series(seed: int, days: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ts_ms)`` of one bursty count series (see the module text)."""
    rng = np.random.default_rng(seed)
    n = days * 86_400 // STEP_S
    t = START_MS + np.arange(n) * STEP_S * 1000
    hours = (t / 3.6e6) % 24
    base = [3, 20, 80, 400][seed % 4]
    daily = 1 + 0.6 * np.sin(2 * np.pi * (hours - 9) / 24)
    walk = np.cumsum(rng.normal(0, 0.01, n))
    walk -= np.linspace(0, walk[-1], n)
    boost = np.zeros(n)
    for start in np.flatnonzero(rng.random(n) < 3 / (86_400 / STEP_S)):
        size, tau = np.exp(rng.normal(np.log(2), 1.0)), rng.uniform(1, 6)
        k = np.arange(min(40, n - start))
        boost[start : start + len(k)] += size * np.exp(-k / tau)
    mean = base * daily * np.exp(walk) * (1 + boost)
    dispersion = 5.0
    values = rng.negative_binomial(dispersion, dispersion / (dispersion + mean)).astype(float)
    return values, t


def openings_per_week(params: DetectorParams | None = None, series: int = 12) -> np.ndarray:
    """Incident openings per series-week after each series' first two days."""
    data = [bursty_series(seed) for seed in range(series)]
    model = OnlineModel(step_s=STEP_S, params=params).fit(None, None)
    skip = 2 * 86_400 // STEP_S
    out = []
    for (values, _), (_, opened) in zip(data, model.score_and_openings_many(data), strict=True):
        out.append(opened[skip:].sum() / ((len(values) - skip) * STEP_S / 86_400 / 7))
    return np.array(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=12)
    args = parser.parse_args(argv)
    rates = openings_per_week(series=args.series)
    print(f"bursty_openings_per_series_week: {rates.mean():.2f} openings")
    print(f"bursty_openings_per_series_week_min: {rates.min():.2f} openings")
    print(f"bursty_openings_per_series_week_max: {rates.max():.2f} openings")


if __name__ == "__main__":
    main()
