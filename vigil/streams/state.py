"""Series state in Redis: one compact binary key per series, read and written in batches.

Key ``{prefix}state:{series id}`` holds ``b"VGS" + version byte + one STATE_DTYPE record``
(about 1.8 KB). Records of the previous formats (versions 2 and 3) are read too: the fields
they have are kept and the ones added since start fresh. The record carries the series'
watermark, so the state and the watermark are written together, in one pipeline per batch,
before the batch's offsets are committed.
Redis is the source of truth across restarts and rebalances; the worker keeps a copy of
the states it owns in memory and only reads Redis on first touch.

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
    "readable",
    "unpack",
]

log = logging.getLogger(__name__)

MAGIC = b"VGS"
UPGRADED_DRIFT_SPREAD = 1.0  # see _upgrade
# 5: the open incident's family and direction; 4: drift state; 3: burst state; 2: rarity and
# recurrence state
FORMAT_VERSION = 5
HEADER = MAGIC + bytes([FORMAT_VERSION])
RECORD_BYTES = STATE_DTYPE.itemsize
VALUE_BYTES = len(HEADER) + RECORD_BYTES
# Older layouts still read: version → record dtype (the current one without later fields).
def _without(*added: tuple[str, ...]) -> np.dtype:
    dropped = {name for fields in added for name in fields}
    return np.dtype([(name, STATE_DTYPE.fields[name][0]) for name in STATE_DTYPE.names
                     if name not in dropped])


_LEGACY = {
    2: _without(ADDED_IN_V3, ADDED_IN_V4, ADDED_IN_V5),
    3: _without(ADDED_IN_V4, ADDED_IN_V5),
    4: _without(ADDED_IN_V5),
}


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


class RedisStateStore:
    """Batched state reads and writes; the worker's in-memory copy sits in front of it.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis`` (binary responses, i.e. ``decode_responses=False``).
    prefix
        Prefix of every key, so several deployments (or tests) share one Redis.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "vigil:") -> None:
        self.client = client
        self.prefix = prefix
        #: The instance marker this process has seen (``{prefix}instance``): a random id
        #: written with the first save, so a Redis that lost its data is told from a new one.
        self.instance: bytes | None = None
        #: Set once Redis was found emptied: series without state count as restarted.
        self.data_lost = False

    def key(self, series: str) -> str:
        return f"{self.prefix}state:{series}"

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

    async def save(self, series: Sequence[str], values: Sequence[bytes], points: int = 0) -> None:
        """Write states (and count ``points`` processed) atomically, in one pipeline."""
        if not series:
            return
        mapping = {self.key(s): v for s, v in zip(series, values, strict=True)}
        if self.instance is None:
            candidate = os.urandom(8).hex().encode()
        started = time.perf_counter()
        async for attempt in redis_retrying():
            with attempt:
                async with self.client.pipeline(transaction=True) as pipe:
                    if self.instance is None:
                        pipe.set(self.instance_key, candidate, nx=True)
                        pipe.get(self.instance_key)
                    pipe.mset(mapping)
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
