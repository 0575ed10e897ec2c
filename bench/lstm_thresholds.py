"""How the worker's LSTM combination scores at several LSTM thresholds (the README's table).

``vigil evaluate`` scores ``online+lstm`` at one threshold
(:data:`~vigil.detectors.lstm.LSTM_Z_OPEN`). This trains the fold models once (the lab's
protocol: 4 series folds, each scored by a model trained on the other series' normal
windows) and scores the combination — the online detector's incident openings plus the
LSTM's own — at each threshold, next to the online detector alone::

    PYTHONPATH=. python -m bench.lstm_thresholds ../shared/data/nab-dev autoencoder

One-row label windows (generated point anomalies) are widened to two rows, as they were when
the README's generated-telemetry figures were measured.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

from vigil.lab.datasets import infer_step_s, load_dataset
from vigil.lab.evaluation import event_metrics
from vigil.lab.models import _to_rows
from vigil.lab.nab import PROFILES, normalised, raw_score
from vigil.lab.run import _scored_file, combined_openings, lstm_fold_scores

THRESHOLDS = (6, 8, 10, 12, 16, 24)


def main(path: str, kind: str = "autoencoder", seed: int = 0) -> None:
    ds = load_dataset(path)
    step_s = infer_step_s(ds)
    step_ms = step_s * 1000
    ds.labels = [replace(lab, end_ms=max(lab.end_ms, lab.start_ms + step_ms))
                 for lab in ds.labels]
    ids = list(ds.series)
    files = [_scored_file(ds, sid) for sid in ids]
    n_windows = sum(len(f.windows) for f in files)
    started = time.perf_counter()
    seen, z = lstm_fold_scores(ds, ids, kind, step_s, seed=int(seed))
    print(f"folds trained and scored in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    def report(name: str, detections: list[np.ndarray]) -> None:
        nab = {p: normalised(raw_score(files, detections, p), n_windows, p) for p in PROFILES}
        ev = event_metrics(files, detections)
        print(f"{name:30} " + "  ".join(f"{p} {v:6.1f}" for p, v in nab.items())
              + f"  event F1 {ev.f1:.2f} (P {ev.precision:.2f}, R {ev.recall:.2f})")

    def rows(sid: str, per_step: np.ndarray) -> np.ndarray:
        return _to_rows(ds.series[sid].ts_ms, seen[sid].ts_ms, per_step, step_ms) == 1.0

    report("online_incidents", [rows(sid, seen[sid].opened.astype(float)) for sid in ids])
    for threshold in THRESHOLDS:
        detections = [rows(sid, combined_openings(sid, seen[sid], z[sid], threshold, step_s))
                      for sid in ids]
        report(f"online+{kind} at {threshold}", detections)
    scores = np.concatenate([v[~np.isnan(v)] for v in z.values()])
    q = np.quantile(scores, [0.5, 0.99, 0.999, 1.0])
    print("LSTM z quantiles 50 / 99 / 99.9 / 100 %: " + " / ".join(f"{v:.1f}" for v in q))


if __name__ == "__main__":
    main(*sys.argv[1:])
