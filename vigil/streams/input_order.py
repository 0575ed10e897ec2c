"""Event-time order across the input partitions one worker reads.

Producers that do not key their messages by series (collectd's ``write_kafka`` sets a random
key, Telegraf none by default) spread one series over every partition of the input topic.
Live, the worker reads each partition as it is written, so a series' points reach it in time
order, give or take a fetch. After an outage it reads a backlog one partition's chunk at a
time (partition 0's hour, then partition 1's…), and a series' points would reach the
detector hours out of order, far beyond any allowed lateness, and be dropped as late.

So the ingest merges its partitions by event time, as Kafka Streams and Flink do with
per-partition watermarks. The points parsed from a batch go on to detection only up to the
*input watermark*: the oldest "newest point read" among the partitions that still have
records to read. Newer points wait, their messages unacked, until the lagging partitions
have caught up; what is released goes on in time order.

- A partition read to its end (its next offset reached the broker's high watermark) holds
  nothing back. Live, every partition is read as it is written, so nothing waits and
  detection is as prompt as without the merge.
- A partition whose state is unknown (no high watermark yet, or not yet read and no
  committed offset) holds everything back, until it delivers or for at most ``idle_s``.
- A partition that delivers nothing for ``idle_s`` stops holding the others back (Flink's
  idleness): a paused or stalled partition cannot stop the worker.
- At most ``max_held`` points wait; beyond, the oldest go on (counted), and a lagging
  partition's points older than them may then be dropped as late by the detector.

One worker merges only the partitions it owns: with several workers reading one input topic,
an unkeyed series is still split between them (docs/inputs.md#order).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Generic, TypeVar

import numpy as np

from vigil.streams.records import ParseResult

__all__ = ["InputOrder", "Released"]

Token = TypeVar("Token")

#: ``(committed offset, high watermark)`` of a partition, each None when not known.
Offsets = Callable[[Hashable], tuple[int | None, int | None]]


@dataclass(slots=True)
class _Partition:
    active_s: float  # when it last delivered a record (or was first assigned)
    next_offset: int | None = None  # the offset after the last record read from it
    newest_ms: int | None = None  # the newest point read from it


@dataclass(slots=True)
class _Held(Generic[Token]):
    """What one message's points still waiting are, and the message to ack once none are."""

    partition: Hashable
    token: Token
    points: ParseResult
    oldest: int = 0  # its points' time span
    newest: int = 0


@dataclass(slots=True)
class Released(Generic[Token]):
    """Points that may go on to detection, and the messages now wholly released (to ack)."""

    results: list[ParseResult] = field(default_factory=list)
    done: list = field(default_factory=list)
    sources: list = field(default_factory=list)  # the messages whose points are released
    forced: int = 0  # points released early because more than ``max_held`` waited

    def __len__(self) -> int:
        return sum(len(r) for r in self.results)


class InputOrder(Generic[Token]):
    """Hold back parsed points until every lagging input partition has read up to them.

    >>> order = InputOrder(idle_s=5.0)
    >>> order.assign(["p0", "p1"], now_s=0.0)
    >>> a = ParseResult(); a.add("cpu", 120_000, 1.0); a.add("cpu", 180_000, 2.0)
    >>> order.add("p0", 0, a, "m0", now_s=0.1)
    >>> ends = {"p0": (None, 1), "p1": (None, 1)}  # p1 has one record still to read
    >>> r = order.release(ends.get, now_s=0.1); len(r), r.done, order.held
    (0, [], 2)
    >>> b = ParseResult(); b.add("cpu", 150_000, 3.0)
    >>> order.add("p1", 0, b, "m1", now_s=0.2)
    >>> r = order.release(ends.get, now_s=0.2)  # both read to their end: all, in time order
    >>> r.results[0].ts_ms, sorted(r.done), order.held
    ([120000, 150000, 180000], ['m0', 'm1'], 0)
    """

    def __init__(self, idle_s: float = 2.0, max_held: int = 200_000) -> None:
        self.idle_s = idle_s
        self.max_held = max_held
        self._partitions: dict[Hashable, _Partition] = {}
        self._waiting: list[_Held[Token]] = []
        self.held = 0  # points waiting

    @property
    def waiting(self) -> int:
        """Messages not acked yet: some of their points wait (or they came while none could go)."""
        return len(self._waiting)

    def assign(self, partitions: Iterable[Hashable], now_s: float) -> None:
        """The partitions this worker reads now. Newly assigned ones hold back until known;
        revoked ones are forgotten with their waiting points (their new owner reads them
        again from the last committed offset)."""
        current = set(partitions)
        for key in current - self._partitions.keys():
            self._partitions[key] = _Partition(active_s=now_s)
        for key in self._partitions.keys() - current:
            del self._partitions[key]
        if any(h.partition not in current for h in self._waiting):
            self._waiting = [h for h in self._waiting if h.partition in current]
            self.held = sum(len(h.points) for h in self._waiting)

    def add(self, partition: Hashable, offset: int, points: ParseResult, token: Token,
            now_s: float) -> None:
        """The points parsed from one message (possibly none) at ``offset`` of ``partition``."""
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(active_s=now_s)
        part.active_s = now_s
        part.next_offset = max(offset + 1, part.next_offset or 0)
        oldest = newest = 0
        if len(points):
            oldest, newest = min(points.ts_ms), max(points.ts_ms)
            part.newest_ms = newest if part.newest_ms is None else max(part.newest_ms, newest)
        self._waiting.append(_Held(partition, token, points, oldest, newest))
        self.held += len(points)

    def watermark(self, offsets: Offsets, now_s: float) -> float | None:
        """Points up to this time may go on (None: any point; ``-inf``: none yet)."""
        bound: float | None = None
        for key, part in self._partitions.items():
            if now_s - part.active_s >= self.idle_s:
                continue  # idle: holds nothing back
            committed, end = offsets(key)
            at = part.next_offset if part.next_offset is not None else committed
            if end is not None and (end == 0 or (at is not None and at >= end)):
                continue  # read to its end
            newest = -np.inf if part.newest_ms is None else float(part.newest_ms)
            bound = newest if bound is None else min(bound, newest)
        return bound

    def release(self, offsets: Offsets, now_s: float) -> Released[Token]:
        """Take out the points that may go on now (see the module's docstring)."""
        out: Released[Token] = Released()
        bound = self.watermark(offsets, now_s)
        if bound is None and len({h.partition for h in self._waiting}) <= 1:
            # Nothing lags and one partition: everything goes, as it came.
            out.results = [h.points for h in self._waiting if len(h.points)]
            out.done = [h.token for h in self._waiting]
            out.sources = [h.token for h in self._waiting if len(h.points)]
            self._waiting, self.held = [], 0
            return out
        if bound is None:
            bound = np.inf
        if self.held > self.max_held and any(h.newest > bound for h in self._waiting):
            # Too many points wait: the oldest go on whether or not their turn has come.
            ts = np.fromiter((t for h in self._waiting for t in h.points.ts_ms), np.int64,
                             self.held)
            waiting = np.sort(ts[ts > bound])
            if len(waiting) > self.max_held:
                bound = float(waiting[len(waiting) - self.max_held - 1])
                out.forced = int(np.count_nonzero(waiting <= bound))
        merged = ParseResult()
        keep: list[_Held[Token]] = []
        for h in self._waiting:
            points = h.points
            if h.newest <= bound or not len(points):  # all its points go (or it has none)
                out.done.append(h.token)
                if len(points):
                    out.sources.append(h.token)
                    merged.series += points.series
                    merged.ts_ms += points.ts_ms
                    merged.values += points.values
                    merged.counters |= points.counters
                continue
            if h.oldest > bound:  # none of them goes yet
                keep.append(h)
                continue
            out.sources.append(h.token)
            merged.counters |= points.counters
            rest = ParseResult(counters=points.counters)
            for s, t, v in zip(points.series, points.ts_ms, points.values, strict=True):
                (merged if t <= bound else rest).add(s, t, v)
            keep.append(_Held(h.partition, h.token, rest, min(rest.ts_ms), max(rest.ts_ms)))
        self._waiting = keep
        self.held = sum(len(h.points) for h in keep)
        if not merged.ts_ms:
            return out
        ts = np.fromiter(merged.ts_ms, np.int64, len(merged.ts_ms))
        if len(ts) < 2 or (ts[1:] >= ts[:-1]).all():
            out.results = [merged]
            return out
        pick = itemgetter(*np.argsort(ts, kind="stable").tolist())
        sorted_ = ParseResult(counters=merged.counters)
        sorted_.series = list(pick(merged.series))
        sorted_.ts_ms = list(pick(merged.ts_ms))
        sorted_.values = list(pick(merged.values))
        out.results = [sorted_]
        return out
