"""The state store and the worker on a real 3-master Redis Cluster (issue 18, item 11).

The harness starts three cluster-enabled redis-server processes (the machine's binary) and
splits the slots between them (``redis_cluster_url`` in ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from tests.conftest import Stack
from tests.test_state_store import _learned_bank, _store
from tests.test_worker_integration import _expected_events, _month, _wait_for_events
from vigil.devtools.embedded import TopicCollector
from vigil.devtools.replay import replay
from vigil.streams.feedback import taught
from vigil.streams.settings import Settings
from vigil.streams.silence import forget_series
from vigil.streams.state import (
    RedisStateStore,
    StateKeys,
    connect,
    pack,
    pack_held,
    unpack,
    unpack_held,
)

pytestmark = pytest.mark.integration


def _masters(url: str) -> list[redis.Redis]:
    """One plain client per master of the cluster ``url`` names."""
    cluster = redis.RedisCluster.from_url(url)
    try:
        return [redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()]
    finally:
        cluster.close()


def _calls(masters: list[redis.Redis], command: str) -> int:
    """How many times the masters ran ``command`` (INFO commandstats)."""
    return sum(m.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)
               for m in masters)


def _keys_per_master(masters: list[redis.Redis], prefix: str) -> list[int]:
    return [sum(1 for _ in m.scan_iter(f"{prefix}*", count=1000)) for m in masters]


def test_a_batch_is_one_mget_and_one_transaction_per_slot_group(redis_cluster_url: str):
    masters = _masters(redis_cluster_url)
    assert len(masters) == 3
    series = [f'cpu{{host="h{i:03d}"}}' for i in range(200)]
    bank = _learned_bank(len(series))
    held = [pack_held(np.array([60_000 * i]), np.array([float(i)])) if i % 3 else None
            for i in range(len(series))]

    async def run() -> None:
        async with _store(redis_cluster_url, cluster=True) as (client, store):
            multi, mget = _calls(masters, "multi"), _calls(masters, "mget")
            await store.save(series, pack(bank), points=len(series), held=held)
            assert _calls(masters, "multi") - multi == 16  # 200 series touch every group
            loaded = await store.load(series)
            assert _calls(masters, "mget") - mget == 16
            restored, found = unpack(loaded)
            assert found.all() and restored.tobytes() == bank.tobytes()
            back = await store.load_held(series)
            for i, value in enumerate(back):
                if held[i] is None:
                    assert value is None
                else:
                    assert unpack_held(value)[1].tolist() == [float(i)]
            assert await store.count_processed() == len(series)
            # The groups' keys are spread over the three masters, each group in one slot.
            per_master = _keys_per_master(masters, store.prefix)
            assert all(n > 0 for n in per_master), per_master
            for s in series[:20]:
                slot = await client.cluster_keyslot(store.key(s))
                assert slot == await client.cluster_keyslot(store.held_key(s))
                assert slot == await client.cluster_keyslot(
                    store.keys.instance(store.keys.group(s)))
            assert len(store.instances) == 16 and not store.data_lost

    asyncio.run(run())


def test_a_master_that_lost_its_data_is_noticed(redis_cluster_url: str):
    """One master restarted empty: the groups it held have lost their instance markers, and
    their series count as restarted; the others keep their states."""
    masters = _masters(redis_cluster_url)
    series = [f"mem{{host=\"h{i}\"}}" for i in range(60)]

    async def run() -> None:
        async with _store(redis_cluster_url, cluster=True) as (client, store):
            await store.save(series, pack(_learned_bank(len(series))))
            assert all(v is not None for v in await store.load(series))
            wiped = masters[1]
            lost = list(wiped.scan_iter(f"{store.prefix}*", count=1000))
            assert lost
            with wiped.pipeline(transaction=False) as pipe:  # what an unpersisted restart
                for key in lost:                              # of that master leaves
                    pipe.delete(key)
                pipe.execute()
            values = await store.load(series)
            assert store.data_lost
            gone = {store.keys.series_of(k) for k in lost if b"}state:" in k}
            assert {s for s, v in zip(series, values, strict=True) if v is None} == gone
            assert 0 < len(gone) < len(series)

    asyncio.run(run())


def test_a_worker_on_a_redis_cluster_detects_as_on_one_redis(
        cluster_stack: Stack, redis_url: str):
    """``vigil worker`` with VIGIL_REDIS_CLUSTER: the same events as the pipeline over one
    Redis, states spread over the masters; ``vigil series forget`` and the taught-patterns
    listing work on the cluster too."""
    stack = cluster_stack
    telemetry = _month(days=10, seed=3)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    worker = stack.start_worker(VIGIL_REDIS_CLUSTER="true", VIGIL_REDIS_SLOT_GROUPS="8")
    try:
        sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        # The reference runs the same pipeline code over the single Redis.
        expected = _expected_events(
            telemetry, SimpleNamespace(redis_url=redis_url, prefix=stack.prefix))
        assert expected, "the generated telemetry holds anomalies"
        events = _wait_for_events(collector, stack, expected)
    finally:
        collector.close()
    # The chart context is worker memory; everything else of each event must be the same.
    def by_id(found: list[dict]) -> dict[str, dict]:
        return {e["event_id"]: {k: v for k, v in e.items() if k != "context"} for e in found}

    assert by_id(events) == by_id(expected)
    assert len(events) == len(expected)  # no repeats

    masters = _masters(stack.redis_url)
    keys = StateKeys(stack.prefix, groups=8)
    assert sum(n > 0 for n in _keys_per_master(masters, stack.prefix)) >= 2  # 5 series
    assert "lost its data" not in worker.log_tail(200_000)
    settings = Settings(redis_url=stack.redis_url, redis_cluster=True, redis_slot_groups=8,
                        redis_prefix=stack.prefix, points_partitions=4)
    assert taught(settings) == []  # SCAN over every master, MGET per slot
    victim = sorted(telemetry.series)[0]
    assert forget_series(settings, victim) == [victim]
    assert stack.redis.get(keys.state(victim)) is None
    others = [s for s in telemetry.series if s != victim]
    assert all(stack.redis.get(keys.state(s)) is not None for s in others)


def test_series_copy_moves_learned_states_to_the_cluster_and_back(
        redis_url: str, redis_cluster_url: str):
    """``vigil series copy``: states, held points (with their time to live) and the processed
    count from one Redis to the cluster under hash-tagged names, and back again."""
    from typer.testing import CliRunner

    from vigil.cli import app

    series = [f'disk{{host="h{i}"}}' for i in range(30)]
    bank = _learned_bank(len(series))
    held = [pack_held(np.array([60_000 * i]), np.array([1.0])) if i % 2 else None
            for i in range(len(series))]
    prefix = f"vigil-test-copy-{uuid.uuid4().hex[:8]}:"
    back_prefix = prefix.replace("copy", "back")

    async def seed() -> None:
        client = connect(redis_url)
        store = RedisStateStore(client, prefix, idle_expiry_ms=86_400_000)
        await store.save(series, pack(bank), points=123, held=held)
        await client.aclose()

    async def read(url: str, cluster: bool, key_prefix: str):
        client = connect(url, cluster)
        store = RedisStateStore(client, key_prefix, slot_groups=16)
        try:
            states, found = unpack(await store.load(series))
            ttl = await client.pttl(store.key(series[0]))
            return (states.tobytes(), found.all(), await store.load_held(series),
                    await store.count_processed(), ttl)
        finally:
            await client.aclose()

    runner = CliRunner()
    try:
        asyncio.run(seed())
        result = runner.invoke(app, ["series", "copy", redis_url], env={
            "VIGIL_REDIS_URL": redis_cluster_url, "VIGIL_REDIS_CLUSTER": "true",
            "VIGIL_REDIS_PREFIX": prefix})
        assert result.exit_code == 0, result.output
        assert "copied 30 series" in result.output
        states, found, back_held, processed, ttl = asyncio.run(
            read(redis_cluster_url, True, prefix))
        assert found and states == bank.tobytes() and processed == 123
        assert back_held == held
        assert 0 < ttl <= 86_400_000  # the idle expiry came along
        # And back, from the cluster into one Redis under another prefix.
        result = runner.invoke(app, ["series", "copy", redis_cluster_url, "--source-cluster",
                                     "--source-prefix", prefix], env={
            "VIGIL_REDIS_URL": redis_url, "VIGIL_REDIS_CLUSTER": "false",
            "VIGIL_REDIS_PREFIX": back_prefix})
        assert result.exit_code == 0, result.output
        states, found, back_held, processed, _ = asyncio.run(
            read(redis_url, False, back_prefix))
        assert found and states == bank.tobytes() and back_held == held and processed == 123
    finally:
        plain = redis.Redis.from_url(redis_url)
        cluster = redis.RedisCluster.from_url(redis_cluster_url)
        for client, p in ((plain, prefix), (plain, back_prefix), (cluster, prefix)):
            keys = list(client.scan_iter(f"{p}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
