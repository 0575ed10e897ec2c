"""One corpus-wide NAB threshold over a development corpus mixed with bursty count series.

The held-out corpus that hurts vigil most mixes ten bursty social-media count series with
twenty quieter ones, and NAB's optimiser picks *one* threshold for all of them. This builds
the same situation from what we may look at: a development corpus (nab-dev or cmd-dev) plus
ten bursty series of :mod:`bench.bursty_noise`, each with two labelled "news" spikes (the
counts multiplied by ``1 + spike · e^(−k/6)`` for two hours, ``--spike`` 5, 10 and 30: from
inside the bursts' own range to far above it) and NAB windows around them (10 % of the file,
as NAB sizes them). It prints the NAB standard / reward_low_FP score of the ``vigil score``
output swept over the mix and over the bursty series alone, with every opening at 1.0
(``flat``) and with openings graded by their novelty (``graded``, what ``vigil score``
writes, :func:`vigil.lab.score_files.opening_novelty`)::

    PYTHONPATH=. python -m bench.bursty_mix ../shared/data/nab-dev ../shared/data/cmd-dev
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.bursty_noise import STEP_S, bursty_series
from vigil.lab.datasets import load_dataset, series_steps
from vigil.lab.models import OnlineModel
from vigil.lab.nab import ScoredFile, normalised, sweep_threshold
from vigil.lab.score_files import anomaly_score

__all__ = ["labelled_bursty", "main"]

PROFILES = ("standard", "reward_low_FP_rate")


def labelled_bursty(seed: int, spike: float) -> tuple[np.ndarray, np.ndarray, list]:
    """``(values, ts_ms, windows)``: a bursty series with two spikes of size ``spike``."""
    values, ts = bursty_series(seed)
    rng = np.random.default_rng(1000 + seed)
    n = len(values)
    at = sorted(rng.choice(np.arange(int(n * 0.3), int(n * 0.95)), 2, replace=False))
    for i in at:
        k = np.arange(min(24, n - i))
        values[i:i + len(k)] = np.round(values[i:i + len(k)] * (1 + spike * np.exp(-k / 6)))
    half = int(0.1 * n / len(at)) // 2
    windows = [(int(ts[max(i - half, 0)]), int(ts[min(i + half, n - 1)])) for i in at]
    return values, ts, windows


def _scores(results, stamps, graded: bool) -> list[np.ndarray]:
    return [anomaly_score(z, o, ts if graded else None)
            for (z, o), ts in zip(results, stamps, strict=True)]


def _nab(files: list[ScoredFile], scores: list[np.ndarray]) -> str:
    n = sum(len(f.windows) for f in files)
    return " / ".join(f"{normalised(sweep_threshold(files, scores, p)[1], n, p):5.1f}"
                      for p in PROFILES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", help="NAB-layout development corpora")
    parser.add_argument("--spike", type=float, nargs="+", default=[5.0, 10.0, 30.0])
    parser.add_argument("--series", type=int, default=10)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"{'corpus':10s} {'spike':>5s}  {'scoring':7s}  {'mix: standard / low FP':>22s}  "
          f"{'bursty alone':>13s}")
    for path in args.corpora:
        dataset = load_dataset(path)
        ids = list(dataset.series)
        steps = series_steps(dataset)
        dev = OnlineModel.score_and_openings_at_steps(
            [(dataset.series[s].values, dataset.series[s].ts_ms) for s in ids],
            [steps[s] for s in ids])
        dev_ts = [dataset.series[s].ts_ms for s in ids]
        dev_files = [ScoredFile(dataset.series[s].ts_ms,
                                sorted((lab.start_ms, lab.end_ms) for lab in dataset.labels
                                       if lab.series == s)) for s in ids]
        for spike in args.spike:
            data = [labelled_bursty(seed, spike) for seed in range(args.series)]
            bursty = OnlineModel.score_and_openings_at_steps(
                [(v, t) for v, t, _ in data], [STEP_S] * len(data))
            b_ts = [t for _, t, _ in data]
            b_files = [ScoredFile(t, w) for _, t, w in data]
            for graded in (False, True):
                dev_scores, b_scores = _scores(dev, dev_ts, graded), _scores(bursty, b_ts, graded)
                scoring = "graded" if graded else "flat"
                print(f"{Path(path).name[:10]:10s} {spike:5.0f}  {scoring:7s}"
                      f"  {_nab(dev_files + b_files, dev_scores + b_scores):>22s}"
                      f"  {_nab(b_files, b_scores):>13s}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
