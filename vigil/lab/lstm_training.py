"""Training the worker's LSTM (:mod:`vigil.detectors.lstm`) on recorded telemetry.

The online detector runs over each series of a dataset from a fresh state; the windows of
the steps it considered normal (and that touch no labelled anomaly) are what the network
learns from. Used by ``vigil train`` and by the lab's LSTM entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vigil.detectors.bank import new_state_bank
from vigil.detectors.lstm import WindowLSTM, normal_windows, residuals, sliding_windows
from vigil.detectors.online import DetectorParams, OnlineDetector
from vigil.lab.models import resample_series

__all__ = ["SeriesResiduals", "series_residuals", "train_on_dataset", "training_windows"]


@dataclass
class SeriesResiduals:
    """One series as the online detector saw it, step by step."""

    ts_ms: np.ndarray  # step timestamps
    residual: np.ndarray  # clipped normalised residual (:func:`residuals`)
    z: np.ndarray  # the detector's equivalent z-score (0 during warm-up)
    normal: np.ndarray  # bool: observed, past warm-up, no open incident, not extreme
    incident_start_ms: np.ndarray  # ≥ 0 where a seasonal incident is open
    opened: np.ndarray  # bool: the seasonal detector opened an incident at this step


def series_residuals(
    series: Sequence[tuple[np.ndarray, np.ndarray]],
    step_s: int,
    params=None,
    clip: float = 10.0,
) -> list[SeriesResiduals]:
    """Run the online detector over ``(values, ts_ms)`` series (all in one batch, from fresh
    states, as the lab does) and return each one's residuals and what it considered normal."""
    p = replace(params or DetectorParams(), step_s=step_s)
    detector = OnlineDetector(p)
    stamps = [np.asarray(ts, np.int64) for _, ts in series]
    index = np.concatenate([np.full(len(ts), k) for k, ts in enumerate(stamps)])
    bank = new_state_bank(len(series))
    steps = resample_series(
        np.concatenate(stamps), np.concatenate([np.asarray(v, float) for v, _ in series]),
        p.step_ms, p.max_fill_steps, bank, index,
    )
    res = detector.process_steps(bank, steps)
    r = residuals(steps.value, res.expected, res.upper, p.z_open, clip)
    out = []
    for k in range(len(series)):
        mine = steps.index == k
        warm = np.arange(mine.sum()) >= p.warmup_steps
        normal = (warm & ~steps.filled[mine] & (res.incident_start_ms[mine] < 0)
                  & (res.z[mine] < p.z_open))
        out.append(SeriesResiduals(steps.ts_ms[mine], r[mine], res.z[mine], normal,
                                   res.incident_start_ms[mine], res.event[mine] == 1))
    return out


def training_windows(
    s: SeriesResiduals, window: int, exclude_ms: Sequence[tuple[int, int]] = ()
) -> np.ndarray:
    """The series' windows of normal steps only, none touching an ``exclude_ms`` interval
    (labelled anomalies, ``start ≤ t ≤ end``)."""
    ok = s.normal.copy()
    for start, end in exclude_ms:
        ok &= ~((s.ts_ms >= start) & (s.ts_ms <= end))
    return sliding_windows(s.residual, window)[normal_windows(ok, window)]


def train_on_dataset(
    dataset,
    step_s: int,
    model: WindowLSTM,
    max_windows: int = 50_000,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict:
    """Train ``model`` on a :class:`~vigil.lab.datasets.Dataset`; returns the summary
    of the training data (saved with the model).

    The online detector runs over every series (from fresh states, as a worker would);
    training windows are those of steps it considered normal (past warm-up, observed, no
    incident open, score under ``z_open``) that touch no labelled window, at most
    ``max_windows`` drawn at random with the model's seed.
    """
    ids = list(dataset.series)
    if not ids:
        raise ValueError("the dataset has no series")
    seen = series_residuals(
        [(dataset.series[sid].values, dataset.series[sid].ts_ms) for sid in ids], step_s,
        clip=model.clip,
    )
    labelled = {sid: [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
                for sid in ids}
    parts = [training_windows(s, model.window, labelled[sid])
             for sid, s in zip(ids, seen, strict=True)]
    X = np.vstack(parts) if parts else np.empty((0, model.window), np.float32)
    available = len(X)
    if available > max_windows:
        rng = np.random.default_rng(model.seed)
        X = X[np.sort(rng.choice(available, max_windows, replace=False))]
    if len(X) < 10:
        raise ValueError(
            f"only {len(X)} normal windows of {model.window} steps in the data: too little "
            "to train on (longer series, or a shorter --window)"
        )
    steps = sum(len(s.ts_ms) for s in seen)
    normal = sum(int(s.normal.sum()) for s in seen)
    model.fit_windows(X, progress=progress)
    return {
        "source": dataset.source,
        "path": str(dataset.meta.get("path", "")),
        "series": len(ids),
        "points": dataset.n_points,
        "steps": steps,
        "normal_steps": normal,
        "labelled_windows_excluded": len(dataset.labels),
        "windows_available": available,
        "windows_used": len(X),
        "step_s": step_s,
        "summary": f"{len(ids)} series, {steps:,} steps of {step_s} s, {len(X):,} normal "
        f"windows ({dataset.source})",
    }
