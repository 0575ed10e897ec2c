"""Matching detections against labelled anomaly windows, and the lab's detection metrics.

:func:`match_incidents` matches incident openings (series, time) to labels with a tolerance.
The corpus metrics below take per-row detections of :class:`~vigil.lab.nab.ScoredFile`
files instead, so they see exactly the rows and windows the NAB score sees; every one of them
ignores NAB's probation rows and adds counts over all files before dividing (micro average):

* **event-wise** (:func:`event_metrics`): a window is *found* if any detection falls in it
  (recall = found / windows); an *alarm* is a run of consecutive detected rows, *true* when
  one of its rows is in a window (precision = true alarms / alarms); F1 their harmonic mean.
* **point-wise F1** (:func:`point_f1`): every row is a sample, labelled by its window.
* **point-adjusted F1** (:func:`point_adjusted_f1`): as point-wise, but one detection in a
  window counts the whole window as detected. Widely reported, and inflated: a detector that
  fires once in a long window scores as if it had flagged every row of it.
* **detection delay** (:func:`mean_detection_delay_ms`): from a found window's first row to
  its first detection, averaged over found windows.

Undefined ratios (no alarms, no windows) count as 0.

An incident *finds* a label when it opens on the same series inside the label's window,
extended by ``tolerance_ms`` on each side (a detector may need a step or two to be sure,
and the label's first point may precede the visible change). Every labelled window is
found at most once; an incident that finds no label is a false alarm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vigil.lab.datasets import AnomalyLabel
from vigil.lab.nab import PROBATION, ScoredFile

__all__ = [
    "EventMetrics",
    "MatchReport",
    "event_metrics",
    "match_incidents",
    "mean_detection_delay_ms",
    "point_adjusted_f1",
    "point_f1",
]


@dataclass
class MatchReport:
    found: list[tuple[AnomalyLabel, int]] = field(default_factory=list)  # (label, delay ms)
    missed: list[AnomalyLabel] = field(default_factory=list)
    false_alarms: list[tuple[str, int]] = field(default_factory=list)  # (series, open ts)

    @property
    def recall(self) -> float:
        total = len(self.found) + len(self.missed)
        return len(self.found) / total if total else float("nan")

    @property
    def precision(self) -> float:
        hits = len(self.found)
        total = hits + len(self.false_alarms)
        return hits / total if total else float("nan")

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """``kind -> (found, labelled)``."""
        return self.count_by("kind")

    def count_by(self, attribute: str) -> dict[str, tuple[int, int]]:
        """``value of the label attribute (kind, type, series) -> (found, labelled)``."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for label, _ in self.found:
            counts[getattr(label, attribute)][0] += 1
            counts[getattr(label, attribute)][1] += 1
        for label in self.missed:
            counts[getattr(label, attribute)][1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(counts.items())}

    @property
    def mean_delay_ms(self) -> float:
        return float(np.mean([d for _, d in self.found])) if self.found else float("nan")


def match_incidents(
    opens: Iterable[tuple[str, int]], labels: Iterable[AnomalyLabel], tolerance_ms: int
) -> MatchReport:
    """Match incident openings ``(series, ts_ms)`` to labelled windows.

    >>> lab = AnomalyLabel("cpu", 1_000, 2_000, "point", "spike")
    >>> r = match_incidents([("cpu", 1_060), ("cpu", 9_000)], [lab], tolerance_ms=120)
    >>> len(r.found), len(r.missed), r.false_alarms
    (1, 0, [('cpu', 9000)])
    """
    by_series: dict[str, list[AnomalyLabel]] = defaultdict(list)
    for label in labels:
        by_series[label.series].append(label)
    report = MatchReport()
    taken: set[AnomalyLabel] = set()
    for series, ts in sorted(opens, key=lambda o: o[1]):
        hit = None
        for label in by_series.get(series, ()):
            if label.start_ms - tolerance_ms <= ts <= label.end_ms + tolerance_ms:
                hit = label
                break
        if hit is None:
            report.false_alarms.append((series, ts))
        elif hit not in taken:
            taken.add(hit)
            report.found.append((hit, max(0, ts - hit.start_ms)))
        # A second incident inside an already found window is neither a hit nor a false alarm.
    report.missed = [lab for labs in by_series.values() for lab in labs if lab not in taken]
    return report


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


@dataclass(frozen=True)
class EventMetrics:
    """Event-wise counts and scores of a corpus (see the module docstring)."""

    windows: int
    found: int
    alarms: int
    true_alarms: int

    @property
    def recall(self) -> float:
        return _ratio(self.found, self.windows)

    @property
    def precision(self) -> float:
        return _ratio(self.true_alarms, self.alarms)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)


def event_metrics(files: Sequence[ScoredFile], detections: Sequence[np.ndarray]) -> EventMetrics:
    """Windows found and alarms (runs of detected rows) that touch a window.

    >>> f = ScoredFile(np.arange(100), [(40, 49), (70, 79)])  # rows 0-14 are probation
    >>> det = np.zeros(100, bool); det[[5, 20, 21, 38, 39, 40, 45]] = True
    >>> m = event_metrics([f], [det])
    >>> m.found, m.windows, m.true_alarms, m.alarms, round(m.f1, 3)
    (1, 2, 2, 3, 0.571)
    """
    windows = found = alarms = true_alarms = 0
    for f, detected in zip(files, detections, strict=True):
        k = f.window_of_row
        hit = np.asarray(detected, bool) & (k != PROBATION)
        windows += len(f.windows)
        found += len(np.unique(k[hit & (k >= 0)]))
        starts = np.flatnonzero(hit & ~np.r_[False, hit[:-1]])
        ends = np.flatnonzero(hit & ~np.r_[hit[1:], False])
        in_window = np.r_[0, np.cumsum(k >= 0)]  # rows in a window before each row
        alarms += len(starts)
        true_alarms += int(((in_window[ends + 1] - in_window[starts]) > 0).sum())
    return EventMetrics(windows, found, alarms, true_alarms)


def _point_counts(files, detections, adjusted: bool) -> tuple[int, int, int]:
    tp = fp = fn = 0
    for f, detected in zip(files, detections, strict=True):
        k = f.window_of_row
        scored = k != PROBATION
        truth = k >= 0
        pred = np.asarray(detected, bool) & scored
        if adjusted:
            found = np.unique(k[pred & truth])
            pred = pred | np.isin(k, found)
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth & scored).sum())
    return tp, fp, fn


def point_f1(files: Sequence[ScoredFile], detections: Sequence[np.ndarray]) -> float:
    """F1 over rows: a row is positive when it lies in a labelled window.

    >>> f = ScoredFile(np.arange(100), [(40, 49)])
    >>> det = np.zeros(100, bool); det[[40, 41, 80]] = True
    >>> round(point_f1([f], [det]), 3)  # precision 2/3, recall 2/10
    0.308
    """
    tp, fp, fn = _point_counts(files, detections, adjusted=False)
    return _f1(_ratio(tp, tp + fp), _ratio(tp, tp + fn))


def point_adjusted_f1(files: Sequence[ScoredFile], detections: Sequence[np.ndarray]) -> float:
    """Point-wise F1 after marking every row of a found window detected (inflated).

    >>> f = ScoredFile(np.arange(100), [(40, 49)])
    >>> det = np.zeros(100, bool); det[[40, 80]] = True
    >>> round(point_adjusted_f1([f], [det]), 3)  # precision 10/11, recall 1
    0.952
    """
    tp, fp, fn = _point_counts(files, detections, adjusted=True)
    return _f1(_ratio(tp, tp + fp), _ratio(tp, tp + fn))


def mean_detection_delay_ms(
    files: Sequence[ScoredFile], detections: Sequence[np.ndarray]
) -> float:
    """Mean time from a found window's start to its first detection (``nan`` if none found).

    >>> f = ScoredFile(np.arange(100) * 60_000, [(40 * 60_000, 49 * 60_000)])
    >>> det = np.zeros(100, bool); det[[43, 45]] = True
    >>> mean_detection_delay_ms([f], [det])
    180000.0
    """
    delays = []
    for f, detected in zip(files, detections, strict=True):
        k = f.window_of_row
        ts = np.asarray(f.ts_ms, np.int64)
        for w, (start_ms, _) in enumerate(f.windows):
            rows = np.flatnonzero(np.asarray(detected, bool) & (k == w))
            if len(rows):
                delays.append(int(ts[rows[0]]) - start_ms)
    return float(np.mean(delays)) if delays else float("nan")
