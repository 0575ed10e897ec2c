"""The state record format and the Redis state store over a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import numpy as np
import pytest

from vigil.detectors.bank import (
    ADDED_IN_V3,
    ADDED_IN_V4,
    ADDED_IN_V5,
    ADDED_IN_V6,
    ADDED_IN_V7,
    STATE_DTYPE,
    new_state_bank,
)
from vigil.detectors.online import OnlineDetector
from vigil.streams.state import (
    FORMAT_VERSION,
    VALUE_BYTES,
    RedisStateStore,
    StateFormatError,
    connect,
    pack,
    readable,
    unpack,
)

T0 = 1_699_833_600_000


@contextlib.asynccontextmanager
async def _store(redis_url: str, cluster: bool = False):
    """A store under a unique key prefix on the real Redis (or Redis Cluster, 16 slot
    groups), emptied afterwards."""
    client = connect(redis_url, cluster)
    prefix = f"vigil-test-store-{uuid.uuid4().hex[:8]}:"
    try:
        yield client, RedisStateStore(client, prefix, slot_groups=16)
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _learned_bank(n: int):
    bank = new_state_bank(n)
    rng = np.random.default_rng(3)
    steps = 200
    index = np.repeat(np.arange(n), steps)
    ts = np.tile(T0 + 60_000 * np.arange(steps), n)
    OnlineDetector().process(bank, index, ts, rng.normal(10, 1, n * steps))
    return bank


@pytest.mark.parametrize("n", [1, 2, 7])
def test_unpacked_states_are_writable_and_round_trip(n: int):
    bank = _learned_bank(n)
    values = pack(bank)
    assert len(values) == n and all(len(v) == VALUE_BYTES for v in values)
    restored, found = unpack(values)
    assert found.all()
    assert restored.tobytes() == bank.tobytes()
    # The detector updates restored states in place (they must not share the bytes).
    OnlineDetector().process(restored, np.zeros(1, int), [T0 + 600 * 60_000], [10.0])
    assert restored["watermark_ms"][0] == T0 + 600 * 60_000


def test_missing_states_come_back_fresh():
    bank = _learned_bank(2)
    restored, found = unpack([None, pack(bank)[1], None])
    assert found.tolist() == [False, True, False]
    assert restored["n_steps"].tolist() == [0, bank["n_steps"][1], 0]
    assert restored["watermark_ms"][0] == -1


def _as_version(value: bytes, version: int, added: tuple[str, ...]) -> bytes:
    """The same state as an older worker wrote it (without the fields added since)."""
    record = np.frombuffer(value[4:], STATE_DTYPE)
    old = np.dtype([(n, STATE_DTYPE.fields[n][0]) for n in STATE_DTYPE.names
                    if n not in added])
    out = np.empty(1, old)
    for name in old.names:
        out[name] = record[name]
    return b"VGS" + bytes([version]) + out.tobytes()


@pytest.mark.parametrize(("version", "added"), [
    (2, ADDED_IN_V3 + ADDED_IN_V4 + ADDED_IN_V5 + ADDED_IN_V6 + ADDED_IN_V7),
    (3, ADDED_IN_V4 + ADDED_IN_V5 + ADDED_IN_V6 + ADDED_IN_V7),
    (4, ADDED_IN_V5 + ADDED_IN_V6 + ADDED_IN_V7),
    (5, ADDED_IN_V6 + ADDED_IN_V7), (6, ADDED_IN_V7),
])
def test_older_formats_are_read_with_the_new_fields_fresh(version, added):
    bank = _learned_bank(2)
    # An older record has no such fields: they must come back fresh.
    bank["burst_mean"][:] = 0.5
    bank["drift_spread"][:] = 0.7
    bank["incident_family"][:] = 2
    bank["taught_family"][:] = 1
    bank["taught_until_ms"][:] = T0
    bank["fit_weight"][:] = 3.0
    bank["forecast_severity"][:] = 1
    bank["forecast_start_ms"][:] = T0
    old = [_as_version(v, version, added) for v in pack(bank)]
    assert FORMAT_VERSION == 7 and len(old[0]) < VALUE_BYTES and readable(old[0])
    restored, found = unpack([old[0], None, old[1]])
    assert found.tolist() == [True, False, True]
    fresh = new_state_bank(2)
    fresh["drift_spread"][:] = 1.0  # no drift statistic yet: starts insensitive
    fresh["drift_armed"][:] = 1
    for name in STATE_DTYPE.names:
        want = bank[name] if name not in added else fresh[name]
        np.testing.assert_array_equal(restored[name][[0, 2]], want, err_msg=name)
    # ... and the detector goes on from them.
    OnlineDetector().process(restored, np.zeros(1, int), [T0 + 600 * 60_000], [10.0])
    assert restored["watermark_ms"][0] == T0 + 600 * 60_000
    assert not readable(old[0][:-1]) and not readable(b"VGS")


def test_foreign_or_future_records_are_refused():
    good = pack(new_state_bank(1))[0]
    with pytest.raises(StateFormatError, match="not a vigil state"):
        unpack([b"something else"])
    with pytest.raises(StateFormatError, match="version"):
        unpack([good[:3] + bytes([FORMAT_VERSION + 1]) + good[4:]])


def test_store_saves_and_loads_in_batches_over_real_redis(redis_url: str):
    async def run():
        async with _store(redis_url) as (client, store):
            bank = _learned_bank(3)
            series = ['cpu{host="a"}', 'cpu{host="b"}', 'cpu{host="c"}']
            await store.save(series, pack(bank), points=600)
            loaded = await store.load([*series, 'cpu{host="new"}'])
            assert loaded[3] is None
            restored, found = unpack(loaded)
            assert found.tolist() == [True, True, True, False]
            assert restored.take([0, 1, 2]).tobytes() == bank.tobytes()
            assert await store.count_processed() == 600
            assert await client.strlen(store.key(series[0])) == VALUE_BYTES

    asyncio.run(run())


def test_state_stays_within_the_budget():
    assert VALUE_BYTES == STATE_DTYPE.itemsize + 4 <= 4096


def test_pipeline_starts_afresh_on_an_unreadable_state(redis_url: str):
    from vigil.streams.pipeline import DetectionPipeline

    async def run():
        async with _store(redis_url) as (client, store):
            await client.set(store.key("cpu"), b"written by something else")
            pipeline = DetectionPipeline(store)
            batch = await pipeline.process(["cpu"], np.array([T0]), np.array([1.0]))
            await pipeline.save(batch)
            assert pipeline.unreadable_states == 1
            restored, found = unpack(await store.load(["cpu"]))
            assert found.all() and restored["watermark_ms"][0] == T0

    asyncio.run(run())


@pytest.mark.integration
def test_a_redis_emptied_under_a_running_worker_is_noticed(redis_url: str):
    async def run() -> None:
        async with _store(redis_url) as (client, store):
            series = ['cpu{host="a"}', 'cpu{host="b"}']
            await store.save(series, pack(_learned_bank(2)), points=10)
            assert store.instance is not None
            assert all(v is not None for v in await store.load(series))
            assert not store.data_lost
            keys = [k async for k in client.scan_iter(f"{store.prefix}*")]
            await client.delete(*keys)  # what an unpersisted Redis restart leaves
            assert await store.load(series) == [None, None]
            assert store.data_lost
            await store.save(series, pack(_learned_bank(2)))
            assert await client.get(store.instance_key) == store.instance  # a new marker

    asyncio.run(run())
