"""Rolling-origin cross-validation of one series, with a gap and an untouched test period.

The earlier ``1 − test_fraction`` of the rows is the *development* part; the rest, after a
gap, is the *test* period. The development part is cut into ``n_folds`` rolling-origin folds:
fold ``k`` trains on rows ``[0, t_k)``, skips ``gap`` rows, and validates on the next block;
the origin ``t_k`` rolls forward by one block per fold, so training always grows and every
validation row comes after every training row. Nothing of the test period is in any fold.

::

    rows:   |<------------- development ------------->|gap|<----- test ----->|
    fold 0: |train              |gap|val|
    fold 1: |train                  |gap|val|
    fold 2: |train                      |gap|val|

The lab chooses thresholds and hyperparameters on the validation blocks, refits on the whole
development part and measures once on the test period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Fold", "Splits", "clip_windows", "rolling_origin_splits"]


@dataclass(frozen=True)
class Fold:
    """Row ranges of one fold: ``train`` always starts at row 0."""

    train: range
    validation: range


@dataclass(frozen=True)
class Splits:
    """The folds, the development part they cover, and the test period."""

    folds: list[Fold]
    development: range
    test: range


def rolling_origin_splits(
    n: int, n_folds: int = 3, gap: int = 0, test_fraction: float = 0.3
) -> Splits:
    """Rolling-origin folds over the first ``1 − test_fraction`` of ``n`` rows, then the test.

    The development part (``d = floor(n · (1 − test_fraction))`` rows) ends with ``n_folds``
    validation blocks of ``d // (n_folds + 1)`` rows each; fold ``k``'s training ends ``gap``
    rows before its block. The test period starts ``gap`` rows after the development part.

    >>> s = rolling_origin_splits(100, n_folds=3, gap=2, test_fraction=0.2)
    >>> [(f.train.stop, f.validation.start, f.validation.stop) for f in s.folds]
    [(18, 20, 40), (38, 40, 60), (58, 60, 80)]
    >>> s.development, s.test
    (range(0, 80), range(82, 100))
    """
    if n_folds < 1:
        raise ValueError("n_folds must be at least 1")
    if gap < 0:
        raise ValueError("gap must not be negative")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must lie strictly between 0 and 1")
    dev = int(np.floor(n * (1.0 - test_fraction)))
    block = dev // (n_folds + 1)
    first_val = dev - n_folds * block
    if block < 1 or first_val - gap < 1 or dev + gap >= n:
        raise ValueError(
            f"{n} rows are too few for {n_folds} folds with a gap of {gap} and a test "
            f"fraction of {test_fraction}"
        )
    folds = []
    for k in range(n_folds):
        start = first_val + k * block
        folds.append(Fold(range(0, start - gap), range(start, start + block)))
    return Splits(folds, range(0, dev), range(dev + gap, n))


def clip_windows(
    ts_ms: np.ndarray, windows: list[tuple[int, int]], rows: range
) -> list[tuple[int, int]]:
    """The parts of ``windows`` (start, end ms) inside ``rows``, snapped to row timestamps.

    >>> clip_windows(np.arange(10) * 10, [(5, 35), (80, 200)], range(2, 9))
    [(20, 30), (80, 80)]
    """
    ts = np.asarray(ts_ms, np.int64)[rows.start : rows.stop]
    out = []
    for start, end in windows:
        inside = np.flatnonzero((ts >= start) & (ts <= end))
        if len(inside):
            out.append((int(ts[inside[0]]), int(ts[inside[-1]])))
    return out
