"""Series state in Redis: one compact binary key per series, read and written in batches.

Key ``{prefix}state:{series id}`` holds ``b"VGS" + version byte + one STATE_DTYPE record``
(about 1.8 KB). Records of the previous formats (versions 2 to 6) are read too: the fields
they have are kept and the ones added since start fresh. The record carries the series'
watermark, so the state and the watermark are written together, in one pipeline per batch,
before the batch's offsets are committed.
Redis is the source of truth across restarts and rebalances; the worker keeps a copy of
the states it owns in memory and only reads Redis on first touch.

With an allowed lateness (``VIGIL_ALLOWED_LATENESS_STEPS``), the raw points a series holds
back (see :func:`vigil.detectors.resample.hold_back`) live beside its state, in key
``{prefix}held:{series id}`` (``b"VGH\x01"`` + timestamps as int64 + values as float64),
written in the same transaction as the state; the state record itself is unchanged.

With an idle expiry (``VIGIL_IDLE_EXPIRY_DAYS``, default 30), every write sets the keys'
time to live again (one Lua script per batch, :data:`SET_WITH_EXPIRY`): a series that stops
for good leaves Redis after that long.

On a Redis Cluster (``VIGIL_REDIS_CLUSTER``) the keys carry a hash tag: ``{prefix}{g}state:
{series id}``, ``{prefix}{g}held:…`` and one instance marker ``{prefix}{g}instance`` per
group, where ``g`` is the series' slot group (CRC-32 of its id modulo
``VIGIL_REDIS_SLOT_GROUPS``, :class:`StateKeys`). A group's keys share one hash slot, so a
batch is read with one MGET and written with one transaction per group it touches, sent to
the groups' masters at once; the points-processed counter is incremented after them.

A Redis that restarts, drops the connection or cannot write for now (out of memory,
READONLY, MISCONF) is retried with capped exponential backoff while ``/health`` reports 503
(the batch waits; nothing is lost and the worker does not crash). Any other error stops the
worker without committing the batch's offsets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vigil.detectors.bank import (
    ADDED_IN_V3,
    ADDED_IN_V4,
    ADDED_IN_V5,
    ADDED_IN_V6,
    ADDED_IN_V7,
    STATE_DTYPE,
    StateBank,
    new_state_bank,
)
from vigil.retrying import STORE_OUTAGE, redis_retrying
from vigil.sinks.metrics import REDIS_DATA_LOST, SERIES_RESTARTED, STATE_LATENCY

__all__ = [
    "FORMAT_VERSION",
    "RedisStateStore",
    "StateFormatError",
    "StateKeys",
    "connect",
    "connect_sync",
    "copy_states",
    "pack",
    "pack_held",
    "readable",
    "unpack",
    "unpack_held",
]

log = logging.getLogger(__name__)

MAGIC = b"VGS"
UPGRADED_DRIFT_SPREAD = 1.0  # see _upgrade
# 7: the capacity forecast's trend lines and warning; 6: operators' teaching; 5: the open
# incident's family and direction; 4: drift state; 3: burst state; 2: rarity and recurrence
FORMAT_VERSION = 7
HEADER = MAGIC + bytes([FORMAT_VERSION])
RECORD_BYTES = STATE_DTYPE.itemsize
VALUE_BYTES = len(HEADER) + RECORD_BYTES
# Older layouts still read: version → record dtype (the current one without later fields).
def _without(*added: tuple[str, ...]) -> np.dtype:
    dropped = {name for fields in added for name in fields}
    return np.dtype([(name, STATE_DTYPE.fields[name][0]) for name in STATE_DTYPE.names
                     if name not in dropped])


_LEGACY = {
    2: _without(ADDED_IN_V3, ADDED_IN_V4, ADDED_IN_V5, ADDED_IN_V6, ADDED_IN_V7),
    3: _without(ADDED_IN_V4, ADDED_IN_V5, ADDED_IN_V6, ADDED_IN_V7),
    4: _without(ADDED_IN_V5, ADDED_IN_V6, ADDED_IN_V7),
    5: _without(ADDED_IN_V6, ADDED_IN_V7),
    6: _without(ADDED_IN_V7),
}


#: ``SET key value PX ttl`` for every key: KEYS the keys, ARGV[1] the ttl in ms, then values.
SET_WITH_EXPIRY = """
for i = 1, #KEYS do
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
"""


class StateFormatError(ValueError):
    """A stored state that this version of vigil cannot read."""


_STORED = np.dtype([("header", "V4"), ("state", STATE_DTYPE)])


def pack(bank: StateBank) -> list[bytes]:
    """One Redis value per series of ``bank``."""
    stored = np.empty(len(bank), _STORED)
    stored["header"] = np.frombuffer(HEADER, "V4")[0]
    stored["state"] = bank.to_records()
    raw = stored.tobytes()
    return [raw[i : i + VALUE_BYTES] for i in range(0, len(raw), VALUE_BYTES)]


def _size(version: int) -> int | None:
    if version == FORMAT_VERSION:
        return VALUE_BYTES
    legacy = _LEGACY.get(version)
    return None if legacy is None else len(HEADER) + legacy.itemsize


def readable(value: bytes | None) -> bool:
    """Whether ``value`` is a state record this version can read (current or legacy)."""
    return (
        value is not None
        and len(value) >= 4
        and value[:3] == MAGIC
        and len(value) == _size(value[3])
    )


def _upgrade(value: bytes) -> bytes:
    """A legacy record as a current one: its fields kept, the ones added since fresh."""
    old = np.frombuffer(value, np.dtype([("header", "V4"), ("state", _LEGACY[value[3]])]))
    new = np.empty(1, _STORED)
    new["header"] = np.frombuffer(HEADER, "V4")[0]
    new["state"] = new_state_bank(1).to_records()
    for name in old.dtype["state"].names:
        new["state"][name] = old["state"][name]
    if "drift_spread" not in old.dtype["state"].names:
        # A series with history but no drift statistic yet: start insensitive (a spread no
        # drift can pass) and let the spread learn the series' own within a day or two.
        new["state"]["drift_spread"] = UPGRADED_DRIFT_SPREAD
        new["state"]["drift_armed"] = 1
    return new.tobytes()


def unpack(values: Sequence[bytes | None]) -> tuple[StateBank, np.ndarray]:
    """A bank with one series per value (fresh where None) and the mask of found ones.

    >>> bank = new_state_bank(2); bank["n_steps"] = [3, 4]
    >>> restored, found = unpack(pack(bank) + [None])
    >>> restored["n_steps"].tolist(), found.tolist()
    ([3, 4, 0], [True, True, False])
    """
    found = np.fromiter((v is not None for v in values), bool, len(values))
    present = [v for v in values if v is not None]
    for k, value in enumerate(present):
        if len(value) < 4 or value[:3] != MAGIC:
            raise StateFormatError(f"not a vigil state record ({len(value)} bytes)")
        size = _size(value[3])
        if size is None:
            raise StateFormatError(f"state format version {value[3]}, expected {FORMAT_VERSION}")
        if len(value) != size:
            raise StateFormatError(f"not a vigil state record ({len(value)} bytes)")
        if value[3] != FORMAT_VERSION:
            present[k] = _upgrade(value)
    if found.all():
        return StateBank.from_records(np.frombuffer(b"".join(present), _STORED)["state"]), found
    records = new_state_bank(len(values)).to_records()
    if present:
        records[found] = np.frombuffer(b"".join(present), _STORED)["state"]
    return StateBank.from_records(records), found


HELD_HEADER = b"VGH\x01"


def pack_held(ts_ms: np.ndarray, values: np.ndarray) -> bytes:
    """The held-back points of one series as a Redis value.

    >>> unpack_held(pack_held(np.array([5, 7]), np.array([1.5, 2.0])))
    (array([5, 7]), array([1.5, 2. ]))
    """
    return (HELD_HEADER + np.asarray(ts_ms, "<i8").tobytes()
            + np.asarray(values, "<f8").tobytes())


def unpack_held(value: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """``(ts_ms, values)`` of a :func:`pack_held` value (empty for None)."""
    if value is None:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    body = value[len(HELD_HEADER):]
    if value[: len(HELD_HEADER)] != HELD_HEADER or len(body) % 16:
        raise StateFormatError(f"not a vigil held-points record ({len(value)} bytes)")
    n = len(body) // 16
    return (np.frombuffer(body, "<i8", n).astype(np.int64),
            np.frombuffer(body, "<f8", n, 8 * n).astype(np.float64))


def connect(url: str, cluster: bool = False) -> aioredis.Redis | RedisCluster:
    """An asyncio client (binary replies) for the Redis at ``url``; with ``cluster``, for
    the Redis Cluster whose node ``url`` names (its other nodes are discovered)."""
    if cluster:
        return RedisCluster.from_url(url)
    return aioredis.from_url(url, decode_responses=False)


def connect_sync(url: str, cluster: bool = False) -> redis.Redis | redis.RedisCluster:
    """The blocking twin of :func:`connect`, for the CLI's one-off commands."""
    if cluster:
        return redis.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def copy_states(source: redis.Redis | redis.RedisCluster, source_keys: StateKeys,
                target: redis.Redis | redis.RedisCluster, target_keys: StateKeys,
                chunk: int = 1000) -> int:
    """Copy every series' state and held points from ``source`` to ``target`` under the
    target's key names (one Redis → a Redis Cluster, or back), and the points-processed
    counter, so that a worker resuming its streams there does not take the target for a
    Redis that lost its data. Keys already in the target are overwritten; their time to
    live is kept. Returns the series copied (``vigil series copy``)."""
    copied = 0
    pattern = source_keys.state_pattern()
    batch: list[str] = []

    def flush() -> None:
        pairs = ([(source_keys.state(s), target_keys.state(s)) for s in batch]
                 + [(source_keys.held(s), target_keys.held(s)) for s in batch])
        with source.pipeline(transaction=False) as pipe:  # value and time to live of each
            for key, _ in pairs:
                pipe.get(key)
                pipe.pttl(key)
            found = pipe.execute()
        with target.pipeline(transaction=False) as pipe:
            for (_, key), value, ttl in zip(pairs, found[0::2], found[1::2], strict=True):
                if value is not None:
                    pipe.set(key, value, px=ttl if ttl > 0 else None)
            pipe.execute()

    for key in source.scan_iter(pattern, count=chunk):
        batch.append(source_keys.series_of(key))
        if len(batch) == chunk:
            flush()
            copied += len(batch)
            batch = []
    if batch:
        flush()
        copied += len(batch)
    stats = source.hgetall(f"{source_keys.prefix}stats")
    if stats:
        target.hset(f"{target_keys.prefix}stats", mapping=stats)
    return copied


@dataclass(frozen=True)
class StateKeys:
    """The names of a series' keys. On one Redis (``groups == 1``): ``{prefix}state:{id}``.
    On a Redis Cluster the series' slot group is a hash tag after the prefix, so the keys
    of one group live in one hash slot and one transaction can write them:

    >>> keys = StateKeys("vigil:", groups=16)
    >>> keys.state('cpu{host="a"}'), keys.group('cpu{host="a"}')
    ('vigil:{6}state:cpu{host="a"}', 6)
    >>> keys.series_of(b'vigil:{6}state:cpu{host="a"}'), keys.state_pattern("cpu*")
    ('cpu{host="a"}', 'vigil:{*}state:cpu*')
    >>> StateKeys("vigil:").state('cpu{host="a"}')
    'vigil:state:cpu{host="a"}'
    """

    prefix: str = "vigil:"
    groups: int = 1

    @property
    def cluster(self) -> bool:
        """Whether the keys are laid out for a Redis Cluster (hash-tagged by group)."""
        return self.groups > 1

    def __post_init__(self) -> None:
        if self.cluster and "{" in self.prefix:
            raise ValueError("on a Redis Cluster the key prefix may not hold '{' (it would "
                             "become the hash tag)")

    def group(self, series: str) -> int:
        return zlib.crc32(series.encode()) % self.groups if self.cluster else 0

    def _tag(self, group: int) -> str:
        return f"{{{group}}}" if self.cluster else ""

    def state(self, series: str) -> str:
        return f"{self.prefix}{self._tag(self.group(series))}state:{series}"

    def held(self, series: str) -> str:
        return f"{self.prefix}{self._tag(self.group(series))}held:{series}"

    def instance(self, group: int = 0) -> str:
        return f"{self.prefix}{self._tag(group)}instance"

    def state_pattern(self, match: str = "*") -> str:
        """A SCAN pattern for the state keys of the series matching ``match``."""
        return f"{self.prefix}{'{*}' if self.cluster else ''}state:{match}"

    def series_of(self, key: bytes | str) -> str:
        """The series id of a state key."""
        key = key.decode() if isinstance(key, bytes) else key
        rest = key[len(self.prefix):]
        return rest.split("}state:", 1)[1] if self.cluster else rest[len("state:"):]

    def by_group(self, series: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``series`` by slot group, in order."""
        out: dict[int, list[int]] = {}
        for i, s in enumerate(series):
            out.setdefault(self.group(s), []).append(i)
        return out


class RedisStateStore:
    """Batched state reads and writes; the worker's in-memory copy sits in front of it.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis`` (binary responses, i.e. ``decode_responses=False``), or a
        ``RedisCluster`` (:func:`connect`).
    prefix
        Prefix of every key, so several deployments (or tests) share one Redis.
    idle_expiry_ms
        Time to live of every key written, renewed by each write (0 = keys never expire).
    slot_groups
        On a Redis Cluster, the hash-tag groups of the keys (:class:`StateKeys`); ignored on
        one Redis.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str = "vigil:",
                 idle_expiry_ms: int = 0, slot_groups: int = 16) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = StateKeys(prefix, slot_groups if isinstance(client, RedisCluster) else 1)
        self.idle_expiry_ms = int(idle_expiry_ms)
        self._set_with_expiry = client.register_script(SET_WITH_EXPIRY) if client else None
        #: Per slot group, the instance marker this process has seen (``{prefix}instance``):
        #: a random id written with the first save, so a Redis that lost its data is told
        #: from a new one (on a cluster, per group: a master that lost its data is noticed).
        self.instances: dict[int, bytes | None] = {}
        #: Set once Redis was found emptied: series without state count as restarted.
        self.data_lost = False

    def key(self, series: str) -> str:
        return self.keys.state(series)

    def held_key(self, series: str) -> str:
        return self.keys.held(series)

    @property
    def instance(self) -> bytes | None:
        """The instance marker seen in slot group 0 (the only one on one Redis)."""
        return self.instances.get(0)

    @property
    def instance_key(self) -> str:
        return self.keys.instance(0)

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        """MGET on one Redis; on a cluster, one MGET per hash slot, sent at once."""
        if self.keys.cluster:
            return await self.client.mget_nonatomic(keys)
        return await self.client.mget(keys)

    async def load_held(self, series: Sequence[str]) -> list[bytes | None]:
        """The held-back points of ``series`` (see :func:`pack_held`), in one MGET."""
        if not series:
            return []
        async for attempt in redis_retrying():
            with attempt:
                values = await self._mget([self.held_key(s) for s in series])
        STORE_OUTAGE.recovered()
        return values

    async def load(self, series: Sequence[str], resumed: bool = False) -> list[bytes | None]:
        """The stored values of ``series`` (None where a series is new), in one MGET (on a
        cluster, one per slot group).

        ``resumed`` says the caller's stream had been processed before (its first batch
        started past offset 0): a Redis without an instance marker then lost its data.
        """
        if not series:
            return []
        groups = self.keys.by_group(series)
        markers = [self.keys.instance(g) for g in groups]
        started = time.perf_counter()
        async for attempt in redis_retrying():
            with attempt:
                found = await self._mget([self.key(s) for s in series] + markers)
        STORE_OUTAGE.recovered()
        STATE_LATENCY.observe(time.perf_counter() - started)
        values, found_markers = found[:len(series)], found[len(series):]
        if resumed and not self.instances and not any(found_markers):
            # Upgraded from a version without the marker: its processed count is still there.
            async for attempt in redis_retrying():
                with attempt:
                    resumed = not await self.client.exists(f"{self.prefix}stats")
        for g, marker in zip(groups, found_markers, strict=True):
            self._check_instance(g, marker, resumed)
        if self.data_lost:
            SERIES_RESTARTED.inc(sum(v is None for v in values))
        return values

    def _check_instance(self, group: int, marker: bytes | None, resumed: bool) -> None:
        seen = self.instances.get(group)
        where = f" (slot group {group})" if self.keys.cluster else ""
        if marker is not None:
            if seen is None:
                self.instances[group] = marker
            elif marker != seen:
                self._lost(f"its instance marker changed{where}")
                self.instances[group] = marker
            return
        if seen is not None:
            self._lost(f"its instance marker is gone{where}")
            del self.instances[group]
        elif resumed:
            self._lost("it holds no instance marker, yet this worker resumes a stream "
                       f"processed before{where}")

    def _lost(self, why: str) -> None:
        self.data_lost = True
        REDIS_DATA_LOST.inc()
        log.error("Redis has lost its data (%s): every series without a stored state starts "
                  "learning from scratch (counted in vigil_series_restarted_total). Enable "
                  "persistence (appendonly yes) to keep the learned states across restarts.",
                  why)

    async def save(
        self,
        series: Sequence[str],
        values: Sequence[bytes],
        points: int = 0,
        held: Sequence[bytes | None] | None = None,
    ) -> None:
        """Write states (and count ``points`` processed) atomically, in one transaction (on
        a cluster, one per slot group, and the count after them); ``held`` (one per series,
        None = nothing held) the points they hold back."""
        if not series:
            return
        if len(values) != len(series) or (held is not None and len(held) != len(series)):
            raise ValueError("one value (and one held entry) per series")
        groups = self.keys.by_group(series)
        count_inside = not self.keys.cluster
        started = time.perf_counter()
        async for attempt in redis_retrying():
            with attempt:
                await asyncio.gather(*(
                    self._save_group(g, [series[i] for i in rows], [values[i] for i in rows],
                                     None if held is None else [held[i] for i in rows],
                                     points if count_inside else 0)
                    for g, rows in groups.items()))
        if not count_inside:
            async for attempt in redis_retrying():
                with attempt:
                    if points:
                        await self.client.hincrby(f"{self.prefix}stats", "points_processed",
                                                  points)
                    await self._mark_every_group()
        STORE_OUTAGE.recovered()
        STATE_LATENCY.observe(time.perf_counter() - started)

    async def _mark_every_group(self) -> None:
        """Put the instance markers of the groups no save has touched yet (on a cluster), so
        that a later batch finding a group without its marker knows that master lost it."""
        missing = [g for g in range(self.keys.groups) if self.instances.get(g) is None]
        if not missing:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for g in missing:
                pipe.set(self.keys.instance(g), os.urandom(8).hex().encode(), nx=True)
                pipe.get(self.keys.instance(g))
            replies = await pipe.execute()
        self.instances.update(zip(missing, replies[1::2], strict=True))

    async def _save_group(self, group: int, series: list[str], values: list[bytes],
                          held: list[bytes | None] | None, points: int) -> None:
        """One transaction: the states of one slot group (on one Redis, the whole batch)."""
        mapping = {self.key(s): v for s, v in zip(series, values, strict=True)}
        released: list[str] = []
        if held is not None:
            for s, h in zip(series, held, strict=True):
                if h is None:
                    released.append(self.held_key(s))
                else:
                    mapping[self.held_key(s)] = h
        marker_key = self.keys.instance(group)
        fresh = self.instances.get(group) is None
        async with self.client.pipeline(transaction=True) as pipe:
            if fresh:
                pipe.set(marker_key, os.urandom(8).hex().encode(), nx=True)
                pipe.get(marker_key)
            if self.keys.cluster:
                # A cluster pipeline refuses multi-key commands (even within one slot) and
                # does not load scripts: one SET each, inside the group's transaction.
                expiry = self.idle_expiry_ms or None
                for key, value in mapping.items():
                    pipe.set(key, value, px=expiry)
            elif self.idle_expiry_ms > 0:
                # EVALSHA inside the transaction (redis-py loads the script first).
                await self._set_with_expiry(
                    keys=list(mapping), args=[self.idle_expiry_ms, *mapping.values()],
                    client=pipe)
            else:
                pipe.mset(mapping)
            if released and self.keys.cluster:
                for key in released:  # one by one, as above
                    pipe.delete(key)
            elif released:
                pipe.delete(*released)
            if points:
                pipe.hincrby(f"{self.prefix}stats", "points_processed", points)
            replies = await pipe.execute()
        if fresh:
            self.instances[group] = replies[1]

    async def count_processed(self, field: str = "points_processed") -> int:
        value = await self.client.hget(f"{self.prefix}stats", field)
        return int(value or 0)
