"""Stopped series in the worker: a wall-clock check that opens ``no_data`` incidents.

Every ``nodata_check_s`` the worker asks its :class:`~vigil.detectors.silence.SilenceTracker`
which of the series it owns went quiet (or came back), and publishes ``no_data`` events
(:class:`~vigil.events.AnomalyEvent`, ``anomaly_type="no_data"``, ``kind`` ``open`` /
``resolve``) on the anomalies topic, where the notifier groups them like any other event (50
series of one host: one message). See docs/stopped-series.md.

Redis keeps what a restart must not forget, per partition of the points topic:

- ``{prefix}seen:{partition}`` — the partition's series with their newest data ms and usual
  interval ms (JSON ``{"s": [...], "t": [...], "i": [...]}``), rewritten at a check when one
  of them moved (one value per partition: a hash field per series cost 9 µs a series to
  write, a third of the detection's own cost at 100k series);
- ``{prefix}nodata:{partition}`` — hash, series → silent-since ms, the open incidents;
- ``{prefix}forgotten`` — hash, glob → wall ms, written by ``vigil series forget``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

import faust
import numpy as np
import orjson
import redis.asyncio as aioredis

from vigil.detectors.silence import Silence, SilenceTracker
from vigil.events import AnomalyEvent, stable_id
from vigil.retrying import STORE_OUTAGE, redis_retrying
from vigil.series import parse_series
from vigil.sinks import metrics
from vigil.streams.limits import SeriesLimits
from vigil.streams.pipeline import partition_for
from vigil.streams.settings import Settings
from vigil.times import iso

__all__ = ["StoppedSeries", "attach_stopped_series", "no_data_event"]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def _minutes(ms: int) -> str:
    return f"{ms / 60_000:.0f} min" if ms >= 120_000 else f"{ms / 1000:.0f} s"


def no_data_event(silence: Silence, kind: str) -> AnomalyEvent:
    """The ``no_data`` event of a silence that opens (``kind="open"``) or ends."""
    name, labels = parse_series(silence.series)
    since = silence.last_ms if kind == "open" else silence.since_ms
    if kind == "open":
        ts_ms = silence.clock_ms
        reason = (f"no data for {_minutes(silence.clock_ms - since)} (usually every "
                  f"{_minutes(silence.interval_ms)}); last point at {iso(since)}")
    else:
        ts_ms = silence.last_ms if silence.why == "data" else silence.clock_ms
        reason = {"data": f"reporting again after {_minutes(silence.last_ms - since)}",
                  "forgotten": "retired on purpose (vigil series forget)",
                  "expired": "idle past the expiry; no longer tracked"}[silence.why]
    return AnomalyEvent(
        event_id=stable_id(silence.series, "no_data", since, kind),
        incident_id=stable_id(silence.series, "no_data", since),
        kind=kind, series=silence.series, name=name, labels=labels, ts=iso(ts_ms), ts_ms=ts_ms,
        value=0.0, expected=0.0, lower=0.0, upper=0.0, score=1.0 if kind == "open" else 0.0,
        severity="warning", anomaly_type="no_data", detectors=["silence"], reason=reason,
    )


def read_seen(value: bytes | None) -> tuple[list[str], list[int], list[int]]:
    """The series, newest data ms and interval ms of a ``seen:{partition}`` value."""
    if not value:
        return [], [], []
    doc = orjson.loads(value)
    return doc["s"], doc["t"], doc["i"]


class StoppedSeries:
    """The tracker of the worker's partitions, kept in Redis (see the module's docstring)."""

    def __init__(self, client: aioredis.Redis, settings: Settings,
                 limits: SeriesLimits | None = None) -> None:
        self.client = client
        # The series limits learn the series restored here, and forget those dropped here.
        self.limits = limits or SeriesLimits()
        self.prefix = settings.redis_prefix
        self.partitions = settings.points_partitions
        self.tracker = SilenceTracker(
            step_ms=settings.detector.step_ms, silent_steps=settings.nodata_steps,
            min_silent_ms=int(settings.nodata_min_s * 1000),
            recent_ms=int(settings.nodata_recent_s * 1000),
            expiry_ms=int(settings.idle_expiry_days * DAY_MS),
            idle_partition_ms=int(2_000 * settings.nodata_check_s),
            together_ms=int(2_000 * settings.nodata_check_s),
            arrival_quiet_ms=int(1000 * min(settings.nodata_min_s,
                                            max(2 * settings.nodata_check_s, 30))))
        self._loaded: set[int] = set()
        # A partition's seen-times are rewritten at most this often (a restart finds them at
        # most that stale: well under the silence threshold, and the backlog refreshes them).
        self.persist_ms = int(1000 * max(settings.nodata_check_s,
                                         min(120.0, settings.nodata_min_s / 2)))
        self._persisted: dict[int, int] = {}  # partition → wall ms of its last snapshot
        self._unsaved: set[int] = set()
        self._forgotten: dict[bytes, int] = {}
        self._opened: dict[int, dict[str, int]] = {}  # to write once published
        self._closed: dict[int, list[str]] = {}
        self._expired: dict[int, list[str]] = {}

    def _partition(self, series: str) -> int:
        return partition_for(series, self.partitions)

    def seen_key(self, partition: int) -> str:
        return f"{self.prefix}seen:{partition}"

    def nodata_key(self, partition: int) -> str:
        return f"{self.prefix}nodata:{partition}"

    def observe(self, series: Sequence[str], ts_ms: np.ndarray, wall_ms: int) -> None:
        """A detection batch's points (one entry per point)."""
        if not series:
            return
        self.tracker.observe(series, ts_ms, self._partition, wall_ms)

    async def _redis(self, coroutine_factory):
        async for attempt in redis_retrying():
            with attempt:
                result = await coroutine_factory()
        STORE_OUTAGE.recovered()
        return result

    async def load(self, assigned: Iterable[int]) -> None:
        """Restore the series of newly assigned partitions; drop those no longer owned."""
        assigned = set(assigned)
        gone = (self._loaded | self.tracker.partitions()) - assigned
        if gone:
            await self.revoke(gone)
        for p in sorted(assigned - self._loaded):
            async def read(p=p):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.get(self.seen_key(p))
                    pipe.hgetall(self.nodata_key(p))
                    return await pipe.execute()
            seen, nodata = await self._redis(read)
            names, last, interval = read_seen(seen)
            self.limits.know(names)
            self.tracker.restore(p, names, last, interval,
                                 {k.decode(): int(v) for k, v in nodata.items()},
                                 wall_ms=int(time.time() * 1000))
            self._loaded.add(p)
            if names:
                log.info("partition %d: %d series' last data times restored (%d silent)", p,
                         len(names), len(nodata))

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Save what moved, then forget the partitions (another worker owns them now)."""
        partitions = set(partitions)
        await self.save(force=True)
        self.tracker.revoke(partitions)
        self._loaded -= partitions

    async def check(self, wall_ms: int | None = None, caught_up: Iterable[int] = ()
                    ) -> tuple[list[AnomalyEvent], int]:
        """The ``no_data`` events to publish now, and how many series were forgotten on
        purpose since the last check (the caller drops their cached states). ``caught_up``:
        the partitions with no consumer lag."""
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        silences: list[tuple[Silence, str]] = []
        forgotten = 0
        patterns = await self._redis(lambda: self.client.hgetall(f"{self.prefix}forgotten"))
        for pattern, at in patterns.items():
            if self._forgotten.get(pattern) != int(at):
                self._forgotten[pattern] = int(at)
                resolved, names = self.tracker.forget(pattern.decode(), before_ms=int(at))
                for s in resolved:
                    silences.append((s, "resolve"))
                    self._closed.setdefault(s.partition, []).append(s.series)
                forgotten += len(names)
                self.limits.release(names)
        found = self.tracker.check(wall_ms, caught_up)
        for s in found.opened:
            silences.append((s, "open"))
            self._opened.setdefault(s.partition, {})[s.series] = s.last_ms
        for s in found.resolved:
            silences.append((s, "resolve"))
            self._closed.setdefault(s.partition, []).append(s.series)
        for series in found.expired:
            self._expired.setdefault(partition_for(series, self.partitions), []).append(series)
        self.limits.release(found.expired)
        metrics.SILENT_SERIES.set(int(np.count_nonzero(self.tracker.open_ms >= 0)))
        metrics.TRACKED_SERIES.set(len(self.tracker))
        return [no_data_event(s, kind) for s, kind in silences], forgotten

    async def save(self, force: bool = False) -> None:
        """Write the opened / closed incidents (after the events of :meth:`check` are
        published) and the moved last-data times (each partition's at most every
        ``persist_ms``, unless ``force``)."""
        now = int(time.time() * 1000)
        self._unsaved |= self.tracker.take_dirty() | set(self._expired)
        dirty = {p for p in self._unsaved
                 if force or now - self._persisted.get(p, 0) >= self.persist_ms}
        self._unsaved -= dirty
        for p in dirty:
            self._persisted[p] = now
        parts = dirty | set(self._opened) | set(self._closed)
        if not parts:
            return
        async def write():
            async with self.client.pipeline(transaction=False) as pipe:
                for p in parts:
                    if p in dirty:
                        names, last, interval = self.tracker.snapshot(p)
                        pipe.set(self.seen_key(p), orjson.dumps(
                            {"s": names, "t": last, "i": interval},
                            option=orjson.OPT_SERIALIZE_NUMPY))
                    if self._opened.get(p):
                        pipe.hset(self.nodata_key(p), mapping=self._opened[p])
                    if self._closed.get(p):
                        pipe.hdel(self.nodata_key(p), *self._closed[p])
                    if self._expired.get(p):
                        pipe.hdel(self.nodata_key(p), *self._expired[p])
                return await pipe.execute()
        await self._redis(write)
        for p in parts:
            self._opened.pop(p, None)
            self._closed.pop(p, None)
            self._expired.pop(p, None)


def attach_stopped_series(app: faust.App, settings: Settings, client: aioredis.Redis,
                          anomalies_topic: faust.types.TopicT, on_forgotten=None,
                          limits: SeriesLimits | None = None) -> StoppedSeries | None:
    """The ``nodata_check_s`` timer of the worker (None when ``nodata_check_s`` is 0)."""
    if settings.nodata_check_s <= 0:
        return None
    stopped = StoppedSeries(client, settings, limits)

    @app.timer(settings.nodata_check_s)
    async def stopped_series() -> None:
        consumer = app.consumer
        try:
            owned = [tp for tp in consumer.assignment() if tp.topic == settings.points_topic]
            # The highwaters the fetches last saw (no request of our own to the broker).
            ends = {tp: consumer.highwater(tp) for tp in owned}
        except Exception:  # noqa: BLE001 - no consumer yet (starting)
            return
        caught_up = {tp.partition for tp, end in ends.items()
                     if end is not None and (consumer._committed_offset.get(tp) or 0) >= end}
        await stopped.load(tp.partition for tp in owned)
        events, forgotten = await stopped.check(caught_up=caught_up)
        sent = [await anomalies_topic.send(key=e.series.encode(), value=e) for e in events]
        for e in events:
            metrics.EVENTS_OUT.labels(kind=e.kind, severity=e.severity).inc()
        if sent:
            await asyncio.gather(*sent)
        await stopped.save()
        if forgotten:
            log.info("%d series forgotten on purpose (vigil series forget)", forgotten)
            if on_forgotten is not None:
                on_forgotten()

    @app.on_partitions_revoked.connect
    async def stopped_series_revoked(app, revoked, **kwargs) -> None:
        await stopped.revoke({tp.partition for tp in revoked
                              if tp.topic == settings.points_topic})

    return stopped


def forget_series(settings: Settings, pattern: str, dry_run: bool = False) -> list[str]:
    """``vigil series forget``: remove the series whose id matches the glob ``pattern`` —
    their state, held points, last data times and open silences — and tell the workers (the
    ``forgotten`` hash) to stop judging them. Returns the series found."""
    import fnmatch

    from vigil.streams.state import connect_sync

    client = connect_sync(settings.redis_url, settings.redis_cluster)
    prefix = settings.redis_prefix
    keys = settings.state_keys()
    found: set[str] = set()
    for key in client.scan_iter(keys.state_pattern(), count=1000):
        series = keys.series_of(key)
        if fnmatch.fnmatchcase(series, pattern):
            found.add(series)
    seen = {p: read_seen(client.get(f"{prefix}seen:{p}"))
            for p in range(settings.points_partitions)}
    for names, _, _ in seen.values():
        found.update(s for s in names if fnmatch.fnmatchcase(s, pattern))
    if dry_run or not found:
        return sorted(found)
    now_ms = int(time.time() * 1000)
    ordered = sorted(found)
    with client.pipeline(transaction=False) as pipe:
        # Told before the keys go: a worker that saves the last data times meanwhile
        # forgets them at its next check anyway.
        pipe.hset(f"{prefix}forgotten", pattern, now_ms)
        for lo in range(0, len(ordered), 1000):
            chunk = ordered[lo:lo + 1000]
            gone = [keys.state(s) for s in chunk] + [keys.held(s) for s in chunk]
            if keys.cluster:  # one by one: the keys are in many slots
                for key in gone:
                    pipe.delete(key)
            else:
                pipe.delete(*gone)
            by_partition: dict[int, list[str]] = {}
            for s in chunk:
                by_partition.setdefault(partition_for(s, settings.points_partitions), []).append(s)
            for p, names in by_partition.items():
                pipe.hdel(f"{prefix}nodata:{p}", *names)
        # The workers rewrite seen:{p} without them at their next check; rewritten here too
        # for a deployment with no worker running.
        for p, (names, last, interval) in seen.items():
            kept = [k for k, s in enumerate(names) if s not in found]
            if len(kept) < len(names):
                pipe.set(f"{prefix}seen:{p}", orjson.dumps({
                    "s": [names[k] for k in kept], "t": [last[k] for k in kept],
                    "i": [interval[k] for k in kept]}))
        pipe.execute()
    # Old requests need not be kept: their series are gone from Redis and from the workers.
    horizon = now_ms - max(settings.idle_expiry_days, 1) * DAY_MS
    old = [k for k, v in client.hgetall(f"{prefix}forgotten").items() if int(v) < horizon]
    if old:
        client.hdel(f"{prefix}forgotten", *old)
    return ordered
