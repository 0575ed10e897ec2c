"""The Numenta Anomaly Benchmark score, as NAB v1.1 computes it (nab/sweeper.py, optimizer.py).

* The first ``min(floor(0.15·n), 750)`` rows of a file are probation: never scored.
* A detection inside a labelled window at relative position ``y = −(right − i + 1)/width``
  earns ``tp · σ(y)/σ(−1)`` with ``σ(y) = 2/(1 + e^{5y}) − 1`` (``−1`` for ``y ≥ 3``); only the
  best (earliest) detection of a window counts; a window without one costs ``−fn``.
* A detection outside windows costs ``fp · σ(|i − prev_right| / (prev_width − 1))`` — little
  just after a window, ``−fp`` far from one or before the first.
* Normalised score = ``100 · (raw − null) / (perfect − null)``: null = nothing detected
  (``−fn`` per window), perfect = every window at its left edge (``tp`` per window).
* A detector with a continuous score is thresholded once for the whole corpus, at the value
  that maximises the raw score (per profile).

``vigil evaluate --data PATH --protocol nab --detectors online`` scores the online detector's
incident openings on a NAB folder (``data/`` and ``combined_windows.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PROFILES",
    "ScoredFile",
    "detection_counts",
    "normalised",
    "probation_length",
    "raw_score",
    "scaled_sigmoid",
    "sweep_threshold",
]

#: (tp weight, fp weight, fn weight) of NAB's three application profiles.
PROFILES = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}

PROBATION = -2  # window_of_row value of probation rows
OUTSIDE = -1  # ... of rows outside every window


def scaled_sigmoid(x: float) -> float:
    """NAB's ``scaledSigmoid``: 1 → −1 over y in [−1, 3], exactly −1 from 3 on.

    >>> round(scaled_sigmoid(-1.0), 4), scaled_sigmoid(0.0), scaled_sigmoid(3.0)
    (0.9866, 0.0, -1.0)
    """
    if x >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are never scored."""
    return int(min(math.floor(0.15 * n_rows), 0.15 * 5000))


@dataclass
class ScoredFile:
    """One file's rows, labelled windows and, per profile, each row's NAB weight.

    ``window_of_row[i]`` is the window index of row ``i``, :data:`OUTSIDE` or
    :data:`PROBATION`. ``windows`` are ``(start_ms, end_ms)`` that match row timestamps.
    ``probation_rows`` overrides NAB's probation length (the lab's cross-validation scores
    blocks cut from a series, which have none).
    """

    ts_ms: np.ndarray
    windows: list[tuple[int, int]]
    probation_rows: int | None = None

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts_ms, np.int64)
        n = len(ts)
        window_of_row = np.full(n, OUTSIDE, np.int64)
        bounds = []
        for k, (start, end) in enumerate(self.windows):
            left, right = int(np.searchsorted(ts, start)), int(np.searchsorted(ts, end))
            if left >= n or ts[left] != start or right >= n or ts[right] != end:
                raise ValueError(f"window {k} does not start and end on row timestamps")
            window_of_row[left : right + 1] = k
            bounds.append((left, right))
        probation = probation_length(n) if self.probation_rows is None else self.probation_rows
        window_of_row[:probation] = PROBATION
        self.window_of_row = window_of_row
        self._bounds = bounds

    def weights(self, tp: float, fp: float) -> np.ndarray:
        """The score a detection at each row would earn (NAB's ``calcSweepScore``)."""
        n = len(self.window_of_row)
        out = np.empty(n)
        top = scaled_sigmoid(-1.0)
        prev_right: int | None = None
        prev_width = 0.0
        bounds = iter(self._bounds)
        current = next(bounds, None)
        for i in range(n):
            if current is not None and current[0] <= i <= current[1]:
                left, right = current
                width = float(right - left + 1)
                out[i] = tp * scaled_sigmoid(-(right - i + 1) / width) / top
                if i == right:
                    prev_right, prev_width = right, width
                    current = next(bounds, None)
            elif prev_right is None:
                out[i] = -fp
            else:
                # NAB divides by (width − 1); a one-row window (never in NAB's corpus, but
                # possible in generated or hand-labelled data) counts as two rows wide.
                out[i] = fp * scaled_sigmoid(abs(i - prev_right) / max(prev_width - 1, 1.0))
        return out


def raw_score(
    files: Sequence[ScoredFile], detections: Sequence[np.ndarray], profile: str
) -> float:
    """The raw NAB score of boolean ``detections`` (one array per file) under ``profile``.

    >>> f = ScoredFile(np.arange(100), [(40, 49)])
    >>> det = np.zeros(100, bool); det[40] = True
    >>> normalised(raw_score([f], [det], "standard"), 1, "standard")
    100.0
    """
    tp, fp, fn = PROFILES[profile]
    total = 0.0
    for f, detected in zip(files, detections, strict=True):
        w = f.weights(tp, fp)
        hits = np.flatnonzero(detected & (f.window_of_row != PROBATION))
        best = np.full(len(f.windows), -fn)
        for i in hits:
            k = f.window_of_row[i]
            if k == OUTSIDE:
                total += w[i]
            else:
                best[k] = max(best[k], w[i])
        total += best.sum()
    return float(total)


def normalised(raw: float, n_windows: int, profile: str) -> float:
    """``100 · (raw − null) / (perfect − null)``."""
    tp, _, fn = PROFILES[profile]
    null, perfect = -fn * n_windows, tp * n_windows
    return 100.0 * (raw - null) / (perfect - null)


def sweep_threshold(
    files: Sequence[ScoredFile], scores: Sequence[np.ndarray], profile: str
) -> tuple[float, float]:
    """The corpus-wide threshold (detection = score ≥ threshold) with the best raw score.

    Returns ``(threshold, raw score)``; NAB's ``optimizer`` does the same sweep.

    >>> f = ScoredFile(np.arange(100), [(40, 49)])
    >>> s = np.zeros(100); s[40] = 0.9; s[70] = 0.5
    >>> sweep_threshold([f], [s], "standard")[0]
    0.9
    """
    tp, fp, fn = PROFILES[profile]
    values, weights, windows = [], [], []
    offset = 0  # window ids unique across files
    for f, score in zip(files, scores, strict=True):
        keep = f.window_of_row != PROBATION
        values.append(np.asarray(score, np.float64)[keep])
        weights.append(f.weights(tp, fp)[keep])
        k = f.window_of_row[keep]
        windows.append(np.where(k >= 0, k + offset, OUTSIDE))
        offset += len(f.windows)
    values, weights, windows = map(np.concatenate, (values, weights, windows))
    n_windows = sum(len(f.windows) for f in files)
    best = np.full(n_windows, -fn)
    total = float(best.sum())
    order = np.argsort(-values, kind="stable")
    best_threshold, best_total = math.inf, total
    i = 0
    while i < len(order):
        threshold = values[order[i]]
        while i < len(order) and values[order[i]] == threshold:
            row = order[i]
            k = windows[row]
            if k == OUTSIDE:
                total += weights[row]
            elif weights[row] > best[k]:
                total += weights[row] - best[k]
                best[k] = weights[row]
            i += 1
        if total > best_total:
            best_threshold, best_total = float(threshold), total
    return best_threshold, best_total


def detection_counts(
    files: Sequence[ScoredFile], detections: Sequence[np.ndarray]
) -> tuple[int, int]:
    """``(windows with a detection, detections outside every window)``, probation excluded.

    >>> f = ScoredFile(np.arange(100), [(40, 49)])
    >>> det = np.zeros(100, bool); det[[5, 41, 45, 80]] = True
    >>> detection_counts([f], [det])
    (1, 1)
    """
    hit = outside = 0
    for f, detected in zip(files, detections, strict=True):
        k = f.window_of_row[detected & (f.window_of_row != PROBATION)]
        hit += len(np.unique(k[k >= 0]))
        outside += int((k == OUTSIDE).sum())
    return hit, outside
