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

A Redis that restarts, drops the connection or cannot write for now (out of memory,
READONLY, MISCONF) is retried with capped exponential backoff while ``/health`` reports 503
(the batch waits; nothing is lost and the worker does not crash). Any other error stops the
worker without committing the batch's offsets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import redis.asyncio as aioredis

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


class RedisStateStore:
    """Batched state reads and writes; the worker's in-memory copy sits in front of it.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis`` (binary responses, i.e. ``decode_responses=False``).
    prefix
        Prefix of every key, so several deployments (or tests) share one Redis.
    idle_expiry_ms
        Time to live of every key written, renewed by each write (0 = keys never expire).
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "vigil:",
                 idle_expiry_ms: int = 0) -> None:
        self.client = client
        self.prefix = prefix
        self.idle_expiry_ms = int(idle_expiry_ms)
        self._set_with_expiry = client.register_script(SET_WITH_EXPIRY) if client else None
        #: The instance marker this process has seen (``{prefix}instance``): a random id
        #: written with the first save, so a Redis that lost its data is told from a new one.
        self.instance: bytes | None = None
        #: Set once Redis was found emptied: series without state count as restarted.
        self.data_lost = False

    def key(self, series: str) -> str:
        return f"{self.prefix}state:{series}"

    def held_key(self, series: str) -> str:
        return f"{self.prefix}held:{series}"

    async def load_held(self, series: Sequence[str]) -> list[bytes | None]:
        """The held-back points of ``series`` (see :func:`pack_held`), in one MGET."""
        if not series:
            return []
        async for attempt in redis_retrying():
            with attempt:
                values = await self.client.mget([self.held_key(s) for s in series])
        STORE_OUTAGE.recovered()
        return values

    @property
    def instance_key(self) -> str:
        return f"{self.prefix}instance"

    async def load(self, series: Sequence[str], resumed: bool = False) -> list[bytes | None]:
        """The stored values of ``series`` (None where a series is new), in one MGET.

        ``resumed`` says the caller's stream had been processed before (its first batch
        started past offset 0): a Redis without an instance marker then lost its data.
        """
        if not series:
            return []
        keys = [self.key(s) for s in series] + [self.instance_key]
        started = time.perf_counter()
        async for attempt in redis_retrying():
            with attempt:
                *values, marker = await self.client.mget(keys)
        STORE_OUTAGE.recovered()
        STATE_LATENCY.observe(time.perf_counter() - started)
        if marker is None and self.instance is None and resumed:
            # Upgraded from a version without the marker: its processed count is still there.
            async for attempt in redis_retrying():
                with attempt:
                    resumed = not await self.client.exists(f"{self.prefix}stats")
        self._check_instance(marker, resumed)
        if self.data_lost:
            SERIES_RESTARTED.inc(sum(v is None for v in values))
        return values

    def _check_instance(self, marker: bytes | None, resumed: bool) -> None:
        if marker is not None:
            if self.instance is None:
                self.instance = marker
            elif marker != self.instance:
                self._lost("its instance marker changed")
                self.instance = marker
            return
        if self.instance is not None:
            self._lost("its instance marker is gone")
        elif resumed:
            self._lost("it holds no instance marker, yet this worker resumes a stream "
                       "processed before")

    def _lost(self, why: str) -> None:
        self.data_lost = True
        self.instance = None
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
        """Write states (and count ``points`` processed) atomically, in one pipeline;
        ``held`` (one per series, None = nothing held) the points they hold back."""
        if not series:
            return
        mapping = {self.key(s): v for s, v in zip(series, values, strict=True)}
        released: list[str] = []
        if held is not None:
            for s, h in zip(series, held, strict=True):
                if h is None:
                    released.append(self.held_key(s))
                else:
                    mapping[self.held_key(s)] = h
        if self.instance is None:
            candidate = os.urandom(8).hex().encode()
        started = time.perf_counter()
        async for attempt in redis_retrying():
            with attempt:
                async with self.client.pipeline(transaction=True) as pipe:
                    if self.instance is None:
                        pipe.set(self.instance_key, candidate, nx=True)
                        pipe.get(self.instance_key)
                    if self.idle_expiry_ms > 0:
                        await self._set_with_expiry(
                            keys=list(mapping), args=[self.idle_expiry_ms, *mapping.values()],
                            client=pipe)
                    else:
                        pipe.mset(mapping)
                    if released:
                        pipe.delete(*released)
                    if points:
                        pipe.hincrby(f"{self.prefix}stats", "points_processed", points)
                    replies = await pipe.execute()
        STORE_OUTAGE.recovered()
        STATE_LATENCY.observe(time.perf_counter() - started)
        if self.instance is None:
            self.instance = replies[1]

    async def count_processed(self, field: str = "points_processed") -> int:
        value = await self.client.hget(f"{self.prefix}stats", field)
        return int(value or 0)
