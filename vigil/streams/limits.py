"""Bounded growth: at most so many series per worker and per metric name.

A worker holds state for every series it owns (about 5 KB in memory with the chart history,
1.8 KB in Redis), so an input that invents series without end — a label carrying a request
id, a timestamp, a random container name — would grow both without bound. :class:`SeriesLimits`
admits the series a worker already knows and new ones while there is room; the points of a
new series beyond ``VIGIL_MAX_SERIES_PER_WORKER`` or ``VIGIL_MAX_SERIES_PER_METRIC`` (series
of one metric name on this worker) are refused: the worker dead-letters them with the reason
and counts them (``vigil_points_refused_total{limit}``, ``vigil_series_refused_total{limit}``).

A series is known once admitted, or when the worker restores it from Redis (its last data
time, see :mod:`vigil.streams.silence`); it stops counting when it is forgotten (``vigil
series forget``), expires, or its partition moves to another worker.

>>> limits = SeriesLimits(per_worker=3, per_metric=2)
>>> limits.admit(['cpu{h="a"}', 'cpu{h="b"}', 'cpu{h="c"}', 'mem{h="a"}', 'cpu{h="a"}'])
(array([ True,  True, False,  True,  True]), {'cpu{h="c"}': 'metric'})
>>> limits.admit(['disk{h="a"}'])[1]  # the worker is full
{'disk{h="a"}': 'worker'}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from vigil.series import parse_series
from vigil.sinks import metrics

__all__ = ["SeriesLimits"]


class SeriesLimits:
    """The series a worker admits (0 = no limit).

    Parameters
    ----------
    per_worker
        Series one worker holds at most.
    per_metric
        Series of one metric name one worker holds at most.
    """

    def __init__(self, per_worker: int = 0, per_metric: int = 0) -> None:
        self.per_worker = int(per_worker)
        self.per_metric = int(per_metric)
        self._known: dict[str, str] = {}  # series → its metric name
        self._per_name: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._known)

    @property
    def enabled(self) -> bool:
        return self.per_worker > 0 or self.per_metric > 0

    def _add(self, series: str, name: str) -> None:
        self._known[series] = name
        self._per_name[name] += 1

    def know(self, series: Iterable[str]) -> None:
        """Series the worker already holds (restored): admitted whatever the limits."""
        for s in series:
            if s not in self._known:
                self._add(s, parse_series(s)[0])

    def release(self, series: Iterable[str]) -> None:
        """Series no longer held (forgotten, expired, or on another worker now)."""
        for s in series:
            name = self._known.pop(s, None)
            if name is not None:
                self._per_name[name] -= 1
                if self._per_name[name] <= 0:
                    del self._per_name[name]

    def revoke(self, owned: Callable[[str], bool]) -> None:
        """Release the series for which ``owned`` is false (their partitions moved)."""
        self.release([s for s in self._known if not owned(s)])

    def split(self, series: list[str], ts_ms: np.ndarray, values: np.ndarray
              ) -> tuple[tuple[list[str], np.ndarray, np.ndarray], dict[str, tuple]]:
        """The admitted points' columns, and per limit (``worker``, ``metric``) the refused
        points' ``(reason, series, ts_ms, values)`` (counted in ``vigil_points_refused``)."""
        ok, refused = self.admit(series)
        if not refused:
            return (series, ts_ms, values), {}
        out = {}
        for limit in sorted(set(refused.values())):
            mask = np.array([refused.get(s) == limit for s in series], bool)
            names = [s for s, m in zip(series, mask, strict=True) if m]
            first = next(s for s, why in refused.items() if why == limit)
            count = sum(1 for why in refused.values() if why == limit)
            reason = self.reason(first, limit) + (f" (and {count - 1} more new series)"
                                                  if count > 1 else "")
            out[limit] = (reason, names, ts_ms[mask].tolist(), values[mask].tolist())
            metrics.POINTS_REFUSED.labels(limit=limit).inc(len(names))
        kept = [s for s, m in zip(series, ok, strict=True) if m]
        return (kept, ts_ms[ok], values[ok]), out

    def admit(self, series: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
        """Which points (one entry per point) are admitted, and the series refused, each
        with the limit that refused it (``worker`` or ``metric``)."""
        if not self.enabled or not len(series):
            return np.ones(len(series), bool), {}
        known = np.array(list(map(self._known.__contains__, series)), bool)
        if known.all():
            return known, {}
        refused: dict[str, str] = {}
        for k in np.flatnonzero(~known).tolist():
            s = series[k]
            if s in self._known or s in refused:
                continue
            name = parse_series(s)[0]
            if self.per_worker and len(self._known) >= self.per_worker:
                refused[s] = "worker"
            elif self.per_metric and self._per_name[name] >= self.per_metric:
                refused[s] = "metric"
            else:
                self._add(s, name)
        if not refused:
            return np.ones(len(series), bool), {}
        ok = ~np.array(list(map(refused.__contains__, series)), bool)
        for limit, count in Counter(refused.values()).items():
            metrics.SERIES_REFUSED.labels(limit=limit).inc(count)
        return ok, refused

    def reason(self, series: str, limit: str) -> str:
        """The dead letter's reason for a refused series."""
        if limit == "worker":
            return (f"series limit: this worker holds {len(self._known)} series "
                    f"(VIGIL_MAX_SERIES_PER_WORKER={self.per_worker}); new series {series}")
        name = parse_series(series)[0]
        return (f"series limit: metric {name} has {self._per_name[name]} series on this worker "
                f"(VIGIL_MAX_SERIES_PER_METRIC={self.per_metric}); new series {series}")
