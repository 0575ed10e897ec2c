"""Matching detected incidents against labelled anomaly windows (found / missed / false alarms).

An incident *finds* a label when it opens on the same series inside the label's window,
extended by ``tolerance_ms`` on each side (a detector may need a step or two to be sure,
and the label's first point may precede the visible change). Every labelled window is
found at most once; an incident that finds no label is a false alarm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from vigil.detectors.datasets import AnomalyLabel

__all__ = ["MatchReport", "match_incidents"]


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
