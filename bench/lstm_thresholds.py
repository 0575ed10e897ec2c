"""How the worker's LSTM combination scores at several LSTM thresholds (the README's table).

``vigil evaluate`` scores ``online+lstm`` at one threshold
(:data:`~vigil.detectors.lab.LSTM_Z_OPEN`). This trains the fold models once (the lab's
protocol: 4 series folds, each scored by a model trained on the other series' normal
windows) and scores the combination — the online detector's incident openings plus the
LSTM's own — at each threshold, next to the online detector alone::

    PYTHONPATH=. python -m bench.lstm_thresholds ../shared/data/nab-dev autoencoder

One-row label windows (generated point anomalies) are widened to two rows: NAB's scoring in
``vigil/detectors/nab.py`` divides by a window's rows − 1.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

from vigil.detectors.datasets import load_dataset
from vigil.detectors.evaluation import event_metrics
from vigil.detectors.lab import (
    LSTM_EPOCHS,
    LSTM_MAX_WINDOWS,
    LSTM_WINDOW,
    SUPERVISED_FOLDS,
    _scored_file,
    infer_step_s,
)
from vigil.detectors.lstm import LstmIncidents, WindowLSTM, series_residuals, training_windows
from vigil.detectors.models import _to_rows
from vigil.detectors.nab import PROFILES, normalised, raw_score
from vigil.detectors.online import DetectorParams
from vigil.detectors.perceptron import series_folds

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
    seen = dict(zip(ids, series_residuals(
        [(ds.series[sid].values, ds.series[sid].ts_ms) for sid in ids], step_s), strict=True))
    labelled = {sid: [(lab.start_ms, lab.end_ms) for lab in ds.labels if lab.series == sid]
                for sid in ids}
    train_x = {sid: training_windows(seen[sid], LSTM_WINDOW, labelled[sid]) for sid in ids}
    rng = np.random.default_rng(seed)
    z: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for k, held_out in enumerate(series_folds(ids, SUPERVISED_FOLDS, seed)):
        X = np.vstack([train_x[sid] for sid in ids if sid not in held_out])
        if len(X) > LSTM_MAX_WINDOWS:
            X = X[np.sort(rng.choice(len(X), LSTM_MAX_WINDOWS, replace=False))]
        model = WindowLSTM(window=LSTM_WINDOW, kind=kind, epochs=LSTM_EPOCHS, seed=seed + k,
                           device="cpu").fit_windows(X)
        for sid in held_out:
            z[sid] = model.score_series(seen[sid].residual)
    print(f"folds trained and scored in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    def report(name: str, detections: list[np.ndarray]) -> None:
        nab = {p: normalised(raw_score(files, detections, p), n_windows, p) for p in PROFILES}
        ev = event_metrics(files, detections)
        print(f"{name:30} " + "  ".join(f"{p} {v:6.1f}" for p, v in nab.items())
              + f"  event F1 {ev.f1:.2f} (P {ev.precision:.2f}, R {ev.recall:.2f})")

    def rows(sid: str, per_step: np.ndarray) -> np.ndarray:
        return _to_rows(ds.series[sid].ts_ms, seen[sid].ts_ms, per_step, step_ms) == 1.0

    report("online_incidents", [rows(sid, seen[sid].opened.astype(float)) for sid in ids])
    p = DetectorParams()
    for threshold in THRESHOLDS:
        detections = []
        for sid in ids:
            incidents = LstmIncidents(threshold, p.z_close, max(p.z_critical, threshold),
                                      p.resolve_steps)
            found = incidents.step([sid], np.zeros(len(z[sid]), np.int64), seen[sid].ts_ms,
                                   z[sid], seen[sid].incident_start_ms)
            opened = seen[sid].opened.astype(float)
            opened[[i for i, code, _ in found if code == 1]] = 1.0
            detections.append(rows(sid, opened))
        report(f"online+{kind} at {threshold}", detections)
    scores = np.concatenate([v[~np.isnan(v)] for v in z.values()])
    q = np.quantile(scores, [0.5, 0.99, 0.999, 1.0])
    print("LSTM z quantiles 50 / 99 / 99.9 / 100 %: " + " / ".join(f"{v:.1f}" for v in q))


if __name__ == "__main__":
    main(*sys.argv[1:])
