"""Stopped series: which series that reported regularly have gone quiet, judged by a clock.

A step is scored only when the series' next point arrives, so a series that stops raises
nothing by itself. :class:`SilenceTracker` keeps, per series, the newest data time seen and
its usual interval between points (at least the detector's step), and is asked now and then
(:meth:`SilenceTracker.check`) which series have been quiet for longer than

.. math:: \\max(\\text{silent\\_steps} \\cdot \\text{interval},\\ \\text{min\\_silent\\_ms})

The clock a series is judged against is its *partition's*: the newest data time seen on the
partition plus the wall-clock time since that point arrived. Live, that is the wall clock;
while a worker works through a backlog (after a restart or a rebalance) it is the backlog's
time, so series whose points are still further down the backlog are not judged silent — no
flood. A partition is judged only once its owner has seen *recent* data on it since it was
assigned (newest data time within ``recent_ms`` of the wall clock when it arrived): replays
of history are never judged.

A partition with nothing left to read (no consumer lag) and no point for ``idle_partition_ms``
takes the clock of the worker's most advanced judged partition (at most the wall clock): it is
as live as they are, and every series on it may have stopped.

A partition mixes series read from several input partitions, which a backlog can bring in
unevenly (days apart in data time, seconds apart on the wall clock): a series is silent only
if, besides, none of its points has *arrived* for ``arrival_quiet_ms`` of wall-clock time.

A series is judged once it has shown a regular interval (two gaps between points seen, or an
interval restored from the store). Its ``no_data`` incident opens once and resolves when a
newer point arrives. Series idle for longer than ``expiry_ms`` are dropped, and
:meth:`SilenceTracker.forget` retires series on purpose.

Pure logic: the caller persists :meth:`SilenceTracker.dirty` / :meth:`SilenceTracker.restore`
(see :mod:`vigil.streams.silence`) and publishes what :meth:`SilenceTracker.check` returns.

>>> t = SilenceTracker(step_ms=60_000, silent_steps=5, min_silent_ms=300_000)
>>> for minute in range(4):  # a series reporting every minute, live
...     t.observe(["cpu"], [minute * 60_000], [0], wall_ms=minute * 60_000)
>>> t.check(wall_ms=5 * 60_000).opened  # 2 min quiet: not yet
[]
>>> [(s.series, s.last_ms) for s in t.check(wall_ms=9 * 60_000).opened]  # 6 min quiet
[('cpu', 180000)]
>>> t.check(wall_ms=10 * 60_000).opened  # told once
[]
>>> t.observe(["cpu"], [600_000], [0], wall_ms=600_000)
>>> [(s.series, s.last_ms) for s in t.check(wall_ms=601_000).resolved]
[('cpu', 600000)]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

__all__ = ["Silence", "SilenceCheck", "SilenceTracker"]

#: Smoothing of the learned interval between a series' points (exponential average of gaps).
INTERVAL_ALPHA = 0.3
#: A gap counts towards the interval at most as this many intervals (a return after a long
#: silence must not teach the series that it reports rarely).
GAP_CAP = 4.0
#: Gaps seen before a series is judged: it must have been reporting regularly.
GAPS_TO_JUDGE = 2


@dataclass(frozen=True)
class Silence:
    """One series' ``no_data`` transition: silent since ``last_ms`` (its newest point), judged
    at ``clock_ms`` (its partition's clock), usual interval ``interval_ms``; for a resolve,
    ``last_ms`` is the returning point's time and ``since_ms`` the silence's start."""

    series: str
    partition: int
    last_ms: int
    interval_ms: int
    clock_ms: int
    since_ms: int = 0
    why: str = "data"  # for a resolve: "data" (it reports again), "forgotten", "expired"


@dataclass
class SilenceCheck:
    """What one :meth:`SilenceTracker.check` found."""

    opened: list[Silence]
    resolved: list[Silence]
    expired: list[str]


class SilenceTracker:
    """Last data time and usual interval of every series of the partitions a worker owns.

    Parameters
    ----------
    step_ms
        The detector's step: the smallest usual interval.
    silent_steps
        A series is silent after this many usual intervals without a point…
    min_silent_ms
        …and at least this long.
    recent_ms
        A partition is judged once data at most this old (by the wall clock, when it
        arrived) has been seen on it since it was assigned.
    expiry_ms
        Series idle for longer than this are dropped (0 = never).
    idle_partition_ms
        A partition with nothing left to read and no point for this long takes the clock of
        the worker's most advanced partition.
    arrival_quiet_ms
        A series is silent only if no point of it has *arrived* for this long either (wall
        clock): one still being read from a backlog is not silent, however old its data.
    together_ms
        When a check finds silent series, those within this much of being silent are opened
        with them (a host's series stop together but cross the threshold seconds apart, maybe
        on both sides of a check).
    """

    def __init__(self, step_ms: int = 60_000, silent_steps: float = 5, min_silent_ms: int = 300_000,
                 recent_ms: int = 300_000, expiry_ms: int = 30 * 86_400_000,
                 idle_partition_ms: int = 30_000, arrival_quiet_ms: int = 60_000,
                 together_ms: int = 60_000) -> None:
        self.together_ms = int(together_ms)
        self.idle_partition_ms = int(idle_partition_ms)
        self.arrival_quiet_ms = int(arrival_quiet_ms)
        self.step_ms = int(step_ms)
        self.silent_steps = float(silent_steps)
        self.min_silent_ms = int(min_silent_ms)
        self.recent_ms = int(recent_ms)
        self.expiry_ms = int(expiry_ms)
        self._row: dict[str, int] = {}
        self._names: list[str | None] = []
        self._free: list[int] = []
        self._allocate(0)
        # partition → (newest data ms seen since assigned, wall ms when it arrived)
        self._clock: dict[int, tuple[int, int]] = {}
        self._gated: set[int] = set()  # partitions whose data has been recent
        self._shrunk: set[int] = set()  # partitions that lost series since take_dirty

    _COLUMNS = (("last_ms", np.int64, -1), ("interval_ms", np.float64, 0.0),
                ("gaps", np.int8, 0), ("partition", np.int32, -1), ("open_ms", np.int64, -1),
                ("dirty", bool, False), ("arrival_ms", np.int64, -1))

    def _allocate(self, capacity: int) -> None:
        """Room for ``capacity`` series (existing rows kept)."""
        for name, dtype, fill in self._COLUMNS:
            column = np.full(capacity, fill, dtype)
            old = getattr(self, name, None)
            if old is not None:
                column[: len(old)] = old
            setattr(self, name, column)

    def _rows(self, series: Sequence[str],
              partitions: Sequence[int] | Callable[[str], int]) -> np.ndarray:
        """The rows of ``series`` (added where new, in the partition ``partitions`` gives:
        one per entry, or a function of the series id, called for new series only)."""
        rows = np.array(list(map(self._row.get, series, repeat(-1))), np.int64)
        for k in np.flatnonzero(rows < 0).tolist():
            s = series[k]
            row = self._row.get(s)
            if row is None:
                row = self._add(s, partitions(s) if callable(partitions) else int(partitions[k]))
            rows[k] = row
        return rows

    def _add(self, series: str, partition: int) -> int:
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._names)
            if row >= len(self.last_ms):
                self._allocate(max(1024, 2 * len(self.last_ms)))
            self._names.append(None)
        self._names[row] = series
        self._row[series] = row
        self.last_ms[row] = -1
        self.interval_ms[row] = self.step_ms
        self.gaps[row] = 0
        self.partition[row] = partition
        self.open_ms[row] = -1
        self.dirty[row] = False
        return row

    def _drop(self, row: int) -> None:
        self._shrunk.add(int(self.partition[row]))
        name = self._names[row]
        if name is not None:
            del self._row[name]
        self._names[row] = None
        self.partition[row] = -1
        self.last_ms[row] = -1
        self.open_ms[row] = -1
        self.dirty[row] = False
        self._free.append(row)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, series: str) -> bool:
        return series in self._row

    def observe(self, series: Sequence[str], ts_ms: Sequence[int] | np.ndarray,
                partitions: Sequence[int] | np.ndarray | Callable[[str], int],
                wall_ms: int) -> None:
        """Points arrived (one entry per point, any order): move each series' newest data
        time, learn its interval, and move its partition's clock. ``partitions``: each
        point's partition, or a function of the series id (called for new series only)."""
        if not len(series):
            return
        ts = np.asarray(ts_ms, np.int64)
        rows = self._rows(series, partitions)
        parts = self.partition[rows]
        for p in np.unique(parts).tolist():
            newest = int(ts[parts == p].max())
            known = self._clock.get(p)
            if known is None or newest >= known[0]:
                self._clock[p] = (newest, wall_ms)
            if newest >= wall_ms - self.recent_ms:
                self._gated.add(p)
        order = np.lexsort((ts, rows))  # per series, in time order
        rows, ts = rows[order], ts[order]
        last = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True])
        first = np.r_[0, last[:-1] + 1]
        # One gap per series and batch: the mean spacing of its new points since its previous
        # newest one (a batch of a backlog holds many points of a series).
        prev = self.last_ms[rows[first]]
        newest = ts[last]
        newer = np.maximum(newest, prev)
        fresh = np.add.reduceat((ts > np.repeat(prev, last - first + 1)).astype(np.int64),
                                first)
        gap = (newest - prev) / np.maximum(fresh, 1)
        u = rows[last]
        learn = (prev >= 0) & (gap > 0)
        interval = self.interval_ms[u]
        capped = np.minimum(gap, GAP_CAP * interval)
        self.interval_ms[u] = np.where(
            learn, np.maximum(interval + INTERVAL_ALPHA * (capped - interval), self.step_ms),
            interval)
        self.gaps[u] = np.where(learn, np.minimum(self.gaps[u] + 1, 100), self.gaps[u])
        self.dirty[u] |= newer != prev
        self.last_ms[u] = newer
        self.arrival_ms[u] = wall_ms

    def threshold_ms(self, interval_ms: np.ndarray | float) -> np.ndarray:
        """How long a series with this usual interval may be quiet."""
        return np.maximum(self.silent_steps * np.asarray(interval_ms, np.float64),
                          self.min_silent_ms)

    def clocks(self, wall_ms: int, caught_up: Iterable[int] = ()) -> dict[int, int]:
        """The clock of each judged partition (see the module's docstring). A partition with
        nothing left to read (``caught_up``) is as live as the worker's most advanced one,
        and takes its clock: a partition whose newest point came from a series that then
        stopped would otherwise wait for the wall clock alone."""
        clocks = {p: newest + max(0, wall_ms - seen) for p, (newest, seen)
                  in self._clock.items() if p in self._gated}
        if clocks:
            # Never past the wall clock: one source's clock running ahead must not make
            # every other series look quieter than it is.
            ahead = min(max(clocks.values()), wall_ms)
            for p in caught_up:
                seen = self._clock.get(p, (0, -self.idle_partition_ms))[1]
                if wall_ms - seen >= self.idle_partition_ms:  # and no point came for a while
                    clocks[p] = max(clocks.get(p, ahead), ahead)
        return clocks

    def check(self, wall_ms: int, caught_up: Iterable[int] = ()) -> SilenceCheck:
        """The series gone silent since the last check, those that came back, and those
        dropped after ``expiry_ms`` idle. ``caught_up``: the partitions whose owner has read
        everything there is (no consumer lag)."""
        found = SilenceCheck([], [], [])
        n = len(self._names)
        if not n:
            return found
        clocks = self.clocks(wall_ms, caught_up)
        if not clocks:
            return found
        by_partition = np.full(int(self.partition[:n].max()) + 1 if n else 0, -1, np.int64)
        for p, c in clocks.items():
            if p < len(by_partition):
                by_partition[p] = c
        parts = self.partition[:n]
        clock = np.where(parts >= 0, by_partition[np.maximum(parts, 0)], -1)
        last = self.last_ms[:n]
        judged = (clock >= 0) & (last >= 0)
        quiet = clock - last
        open_ = self.open_ms[:n] >= 0
        returned = open_ & (last > self.open_ms[:n])
        for row in np.flatnonzero(returned).tolist():
            found.resolved.append(self._silence(row, int(clock[row]), why="data"))
            self.open_ms[row] = -1
        candidate = judged & ~open_ & (self.gaps[:n] >= GAPS_TO_JUDGE)
        over = quiet - self.threshold_ms(self.interval_ms[:n])
        arrival_over = wall_ms - self.arrival_ms[:n] - self.arrival_quiet_ms
        silent = candidate & (over > 0) & (arrival_over > 0)
        if silent.any() and self.together_ms > 0:
            # Series that stopped together (a host) cross the threshold seconds apart; take
            # those within ``together_ms`` of it now, so they are told in one message.
            silent |= candidate & (over > -self.together_ms) & (arrival_over > -self.together_ms)
        for row in np.flatnonzero(silent).tolist():
            self.open_ms[row] = last[row]
            found.opened.append(self._silence(row, int(clock[row])))
        if self.expiry_ms > 0:
            for row in np.flatnonzero(judged & (quiet > self.expiry_ms)).tolist():
                if self.open_ms[row] >= 0:
                    found.resolved.append(self._silence(row, int(clock[row]), why="expired"))
                found.expired.append(self._names[row])
                self._drop(row)
        return found

    def _silence(self, row: int, clock_ms: int, why: str = "data") -> Silence:
        return Silence(
            series=self._names[row], partition=int(self.partition[row]),
            last_ms=int(self.last_ms[row]), interval_ms=int(self.interval_ms[row]),
            clock_ms=clock_ms, since_ms=int(self.open_ms[row]), why=why)

    def forget(self, pattern: str, before_ms: int | None = None
               ) -> tuple[list[Silence], list[str]]:
        """Stop tracking the series whose id matches the glob ``pattern`` (and whose newest
        point is not after ``before_ms``); returns the resolves of their open silences and
        the series forgotten."""
        resolved, forgotten = [], []
        for series, row in list(self._row.items()):
            if not fnmatch.fnmatchcase(series, pattern):
                continue
            if before_ms is not None and self.last_ms[row] > before_ms:
                continue  # it reported again after it was forgotten: a live series
            if self.open_ms[row] >= 0:
                clock = self.last_ms[row] if before_ms is None else before_ms
                resolved.append(self._silence(row, int(clock), why="forgotten"))
            self._drop(row)
            forgotten.append(series)
        return resolved, forgotten

    def revoke(self, partitions: Iterable[int]) -> None:
        """Another worker owns these partitions now: drop their series and clocks."""
        gone = set(partitions)
        for p in gone:
            self._clock.pop(p, None)
            self._gated.discard(p)
        for row in np.flatnonzero(np.isin(self.partition[: len(self._names)],
                                          list(gone))).tolist():
            self._drop(row)
        self._shrunk -= gone  # not ours to write any more

    def partitions(self) -> set[int]:
        """The partitions with tracked series or a clock."""
        return set(self._clock) | {int(p) for p in np.unique(self.partition[: len(self._names)])
                                   if p >= 0}

    def take_dirty(self) -> set[int]:
        """The partitions with a series whose newest data time moved since the last call
        (to persist with :meth:`snapshot`), and clears the marks."""
        n = len(self._names)
        out = {int(p) for p in np.unique(self.partition[:n][self.dirty[:n]]) if p >= 0}
        out |= self._shrunk
        self._shrunk = set()
        self.dirty[:n] = False
        return out

    def snapshot(self, partition: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The series of ``partition`` with their newest data ms and interval ms."""
        rows = np.flatnonzero(self.partition[: len(self._names)] == partition)
        return ([self._names[r] for r in rows.tolist()], self.last_ms[rows].copy(),
                self.interval_ms[rows].astype(np.int64))

    def restore(self, partition: int, names: Sequence[str], last_ms: Sequence[int],
                interval_ms: Sequence[int], open_since: dict[str, int] | None = None,
                wall_ms: int = 0) -> None:
        """Series of ``partition`` as persisted (:meth:`snapshot`) and their open silences
        (``series → silent since ms``), restored at ``wall_ms`` (it counts as their last
        arrival); newer knowledge in memory wins. A restored interval counts as learned."""
        rows = self._rows(list(names), [partition] * len(names))
        last = np.asarray(last_ms, np.int64)
        newer = last > self.last_ms[rows]
        take = rows[newer]
        self.last_ms[take] = last[newer]
        self.interval_ms[take] = np.maximum(np.asarray(interval_ms, np.float64)[newer],
                                            self.step_ms)
        self.gaps[take] = np.maximum(self.gaps[take], GAPS_TO_JUDGE)
        self.arrival_ms[rows] = np.maximum(self.arrival_ms[rows], wall_ms)
        for s, since in (open_since or {}).items():
            row = self._row.get(s)
            if row is not None and self.open_ms[row] < 0:
                self.open_ms[row] = since
