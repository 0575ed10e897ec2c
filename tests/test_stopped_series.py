"""Stopped series: the tracker's rules (vigil/detectors/silence.py), its Redis keeping
(vigil/streams/silence.py), ``vigil series forget``, idle expiry and the grouped alert text.
The worker end to end is in tests/test_stopped_series_worker.py."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from vigil.detectors.silence import SilenceTracker
from vigil.sinks.alerts import IncidentAlert, Notification
from vigil.streams.pipeline import partition_for
from vigil.streams.settings import Settings
from vigil.streams.silence import StoppedSeries, forget_series, no_data_event, read_seen
from vigil.streams.state import RedisStateStore

MIN = 60_000
LIVE = 1_700_000_000_000  # a wall clock, ms (in the past: forget compares with now)


def tracker(**kw) -> SilenceTracker:
    kw = {"step_ms": MIN, "silent_steps": 5, "min_silent_ms": 5 * MIN, **kw}
    return SilenceTracker(**kw)


def feed(t: SilenceTracker, series: list[str], start: int, minutes: int, every: int = 1,
         partition_of=lambda s: 0, lag_ms: int = 0, check: bool = False) -> list:
    """Each series reports every ``every`` minutes from ``start`` for ``minutes``; the
    points arrive ``lag_ms`` after their time. Returns what checks after each minute opened."""
    opened = []
    for m in range(0, minutes, every):
        ts = start + m * MIN
        t.observe(series, [ts] * len(series), [partition_of(s) for s in series],
                  wall_ms=ts + lag_ms)
        if check:
            opened += t.check(ts + lag_ms).opened
    return opened


def test_a_series_that_stops_opens_once_after_the_threshold_and_resolves_on_return():
    t = tracker()
    feed(t, ["a", "b"], LIVE, 30)
    last = LIVE + 29 * MIN
    feed(t, ["b"], LIVE + 30 * MIN, 5)  # "a" stops
    assert t.check(last + 5 * MIN).opened == []  # exactly the threshold: not yet
    opened = t.check(last + 5 * MIN + 1_000).opened
    assert [(s.series, s.last_ms) for s in opened] == [("a", last)]
    assert t.check(last + 9 * MIN).opened == []  # told once
    t.observe(["a"], [last + 20 * MIN], [0], wall_ms=last + 20 * MIN)
    found = t.check(last + 20 * MIN + 1)
    assert [(s.series, s.since_ms, s.why) for s in found.resolved] == [("a", last, "data")]
    assert [s.series for s in found.opened] == ["b"]  # quiet since last + 5 min


def test_the_threshold_is_steps_times_the_learned_interval_and_at_least_min_silent():
    t = tracker(silent_steps=3, min_silent_ms=2 * MIN)
    feed(t, ["slow"], LIVE, 100, every=10)  # every 10 minutes: threshold 30 min
    last = LIVE + 90 * MIN
    t.observe(["other"], [last], [0], wall_ms=last)
    assert t.check(last + 25 * MIN).opened == []
    assert [s.series for s in t.check(last + 31 * MIN).opened] == ["slow"]
    fast = tracker(silent_steps=3, min_silent_ms=7 * MIN)  # 3 steps = 3 min < 7 min
    feed(fast, ["x"], LIVE, 10)
    assert fast.check(LIVE + 9 * MIN + 6 * MIN).opened == []
    assert len(fast.check(LIVE + 9 * MIN + 7 * MIN + 1).opened) == 1


def test_a_series_seen_once_is_not_judged():
    t = tracker()
    feed(t, ["steady"], LIVE, 10)
    t.observe(["once"], [LIVE + 9 * MIN], [0], wall_ms=LIVE + 9 * MIN)
    assert [s.series for s in t.check(LIVE + 60 * MIN).opened] == ["steady"]


def test_a_replay_of_history_is_never_judged():
    t = tracker()
    history = LIVE - 30 * 86_400_000
    opened = feed(t, ["a", "b"], history, 60, lag_ms=30 * 86_400_000, check=True)
    feed(t, ["b"], history + 60 * MIN, 60, lag_ms=30 * 86_400_000)  # "a" stops in history
    assert opened == []
    assert t.check(LIVE + 7 * 86_400_000).opened == []


def test_a_whole_partition_that_stops_is_noticed_by_the_wall_clock():
    t = tracker()
    names = [f"s{i}" for i in range(50)]
    feed(t, names, LIVE, 20, partition_of=lambda s: 1)
    assert len(t.check(LIVE + 19 * MIN + 5 * MIN + 1).opened) == 50


def test_restart_after_downtime_replays_the_backlog_without_a_flood():
    names = [f"s{i}" for i in range(100)]
    before = tracker()
    feed(before, names + ["dead"], LIVE, 30, partition_of=lambda s: int(s[1:] or 0) % 4
         if s != "dead" else 0)
    feed(before, names, LIVE + 30 * MIN, 10, partition_of=lambda s: int(s[1:]) % 4)
    saved = {p: before.snapshot(p) for p in before.take_dirty()}
    open_before = {s.series for s in before.check(LIVE + 40 * MIN).opened}
    assert open_before == {"dead"}
    # The worker is down 20 minutes; the points keep coming into Kafka. A new worker
    # restores what was saved, then works through the backlog fast (lag shrinking).
    after = tracker()
    for p, (names_p, last_p, interval_p) in saved.items():
        after.restore(p, names_p, last_p, interval_p,
                      {"dead": LIVE + 29 * MIN} if p == 0 else {})
    wall = LIVE + 60 * MIN
    assert after.check(wall).opened == []  # nothing judged before data is seen
    opened = []
    for m in range(40, 60):
        ts = LIVE + m * MIN
        after.observe(names, [ts] * 100, [int(s[1:]) % 4 for s in names], wall_ms=wall)
        wall += 2_000  # a backlog minute every 2 s
        opened += after.check(wall).opened
    assert opened == []  # not even "dead": its incident is open already
    for _ in range(3):
        wall += 2 * MIN
        ts = wall
        after.observe(names, [ts] * 100, [int(s[1:]) % 4 for s in names], wall_ms=wall)
        assert after.check(wall).opened == []


def test_a_rebalance_drops_the_revoked_partitions_and_a_new_owner_waits_for_data():
    t = tracker()
    feed(t, ["p0", "p1"], LIVE, 10, partition_of=lambda s: int(s[1]))
    t.revoke({1})
    assert "p1" not in t and "p0" in t
    found = t.check(LIVE + 60 * MIN)
    assert [s.series for s in found.opened] == ["p0"]
    new_owner = tracker()
    new_owner.restore(1, ["p1"], [LIVE + 9 * MIN], [MIN])
    assert new_owner.check(LIVE + 60 * MIN).opened == []  # no data on partition 1 yet


def test_forget_stops_judging_resolves_and_spares_a_series_that_reported_since():
    t = tracker()
    feed(t, ["web{host=\"gone\"}", "db{host=\"gone\"}", "web{host=\"ok\"}"], LIVE, 10)
    assert len(t.check(LIVE + 30 * MIN).opened) == 3
    t.observe(['db{host="gone"}'], [LIVE + 31 * MIN], [0], wall_ms=LIVE + 31 * MIN)
    resolved, forgotten = t.forget('*host="gone"*', before_ms=LIVE + 30 * MIN)
    assert forgotten == ['web{host="gone"}']
    assert [(s.series, s.why) for s in resolved] == [('web{host="gone"}', "forgotten")]
    assert 'web{host="gone"}' not in t and 'db{host="gone"}' in t
    assert len(t) == 2


def test_idle_series_expire():
    t = tracker(expiry_ms=2 * 3_600_000)
    feed(t, ["old", "live"], LIVE, 10)
    feed(t, ["live"], LIVE + 10 * MIN, 200, every=5)
    found = t.check(LIVE + 209 * MIN)
    assert found.expired == ["old"]
    assert [s.why for s in found.resolved] == ["expired"]
    assert "old" not in t and "live" in t


def test_grouped_no_data_alert_names_the_host_and_the_count():
    t = tracker()
    names = [f'metric_{i}{{host="gone-01"}}' for i in range(50)]
    feed(t, names, LIVE, 10)
    opened = t.check(LIVE + 20 * MIN).opened
    events = [no_data_event(s, "open") for s in opened]
    assert {e.anomaly_type for e in events} == {"no_data"}
    assert len({e.incident_id for e in events}) == 50
    note = Notification("ops", "firing", ("gone-01",), [IncidentAlert(e) for e in events])
    assert note.subject() == "[vigil] WARNING gone-01: 50 series stopped reporting"
    assert "no data for 11 min" in note.text()
    back = Notification("ops", "resolved", ("gone-01",), [IncidentAlert(events[0])])
    assert back.subject() == "[vigil] RESOLVED gone-01: metric_0 reporting again"


def test_check_cost_is_vectorised_at_many_series():
    t = tracker()
    names = [f"s{i}" for i in range(20_000)]
    feed(t, names, LIVE, 3, partition_of=lambda s: hash(s) % 8)
    found = t.check(LIVE + 2 * MIN)
    assert found.opened == [] and len(t) == 20_000
    assert np.count_nonzero(t.last_ms >= 0) == 20_000


# --- Redis: what a restart keeps, forget, expiry ---------------------------------------------


@pytest.fixture
def settings(redis_url) -> Settings:
    return Settings(redis_url=redis_url, redis_prefix=f"vigil-test-{uuid.uuid4().hex[:8]}:",
                    points_partitions=4, nodata_min_s=300, idle_expiry_days=30)


@pytest.fixture
def sync_redis(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    keys = list(client.scan_iter(f"{settings.redis_prefix}*"))
    if keys:
        client.delete(*keys)


def test_stopped_series_keeps_its_knowledge_across_a_restart(settings, sync_redis):
    names = [f'cpu{{host="h{i}"}}' for i in range(20)]

    async def first_life() -> list:
        client = aioredis.from_url(settings.redis_url)
        stopped = StoppedSeries(client, settings)
        await stopped.load(range(4))
        for m in range(10):
            batch = names if m < 5 else names[1:]  # h0 stops after 5 minutes
            stopped.observe(batch, np.full(len(batch), LIVE + m * MIN), LIVE + m * MIN)
        events, _ = await stopped.check(LIVE + 11 * MIN)
        await stopped.save()
        await client.aclose()
        return events

    events = asyncio.run(first_life())
    assert [(e.series, e.kind) for e in events] == [('cpu{host="h0"}', "open")]
    p = partition_for(names[0], 4)
    assert sync_redis.hexists(f"{settings.redis_prefix}nodata:{p}", names[0])

    async def second_life() -> list:
        client = aioredis.from_url(settings.redis_url)
        stopped = StoppedSeries(client, settings)
        await stopped.load(range(4))
        assert len(stopped.tracker) == 20
        out = []
        for m in range(10, 14):
            stopped.observe(names[1:], np.full(19, LIVE + m * MIN), LIVE + m * MIN)
            out += (await stopped.check(LIVE + m * MIN))[0]
            await stopped.save()
        # h0 comes back: its incident resolves
        stopped.observe(names[:1], np.array([LIVE + 14 * MIN]), LIVE + 14 * MIN)
        out += (await stopped.check(LIVE + 14 * MIN))[0]
        await stopped.save()
        await client.aclose()
        return out

    events = asyncio.run(second_life())
    assert [(e.series, e.kind) for e in events] == [('cpu{host="h0"}', "resolve")]
    assert not sync_redis.hexists(f"{settings.redis_prefix}nodata:{p}", names[0])


def test_forget_removes_state_and_tells_the_worker(settings, sync_redis):
    names = ['cpu{host="gone-01"}', 'mem{host="gone-01"}', 'cpu{host="web-01"}']

    async def run() -> tuple[list, int]:
        client = aioredis.from_url(settings.redis_url)
        store = RedisStateStore(client, settings.redis_prefix)
        from vigil.detectors.bank import new_state_bank
        from vigil.streams.state import pack

        await store.save(names, pack(new_state_bank(3)))
        stopped = StoppedSeries(client, settings)
        await stopped.load(range(4))
        for m in range(5):
            stopped.observe(names, np.full(3, LIVE + m * MIN), LIVE + m * MIN)
        events, _ = await stopped.check(LIVE + 20 * MIN)
        await stopped.save()
        assert len(events) == 3
        assert forget_series(settings, '*host="gone-01"*') == sorted(names[:2])
        events, forgotten = await stopped.check(LIVE + 21 * MIN)
        await stopped.save()
        await client.aclose()
        return events, forgotten

    events, forgotten = asyncio.run(run())
    assert forgotten == 2
    assert sorted((e.series, e.kind) for e in events) == [
        ('cpu{host="gone-01"}', "resolve"), ('mem{host="gone-01"}', "resolve")]
    prefix = settings.redis_prefix
    assert not sync_redis.exists(f'{prefix}state:cpu{{host="gone-01"}}')
    assert sync_redis.exists(f'{prefix}state:cpu{{host="web-01"}}')
    for p in range(4):
        names = read_seen(sync_redis.get(f"{prefix}seen:{p}"))[0]
        assert not any("gone-01" in s for s in names)
    assert forget_series(settings, '*host="gone-01"*') == []


def test_state_keys_expire_after_the_idle_time_and_each_write_renews_it(settings, sync_redis):
    async def run() -> None:
        client = aioredis.from_url(settings.redis_url)
        from vigil.detectors.bank import new_state_bank
        from vigil.streams.state import pack, pack_held

        store = RedisStateStore(client, settings.redis_prefix, idle_expiry_ms=3_600_000)
        await store.save(["a", "b"], pack(new_state_bank(2)), points=2,
                         held=[pack_held(np.array([1]), np.array([1.0])), None])
        sync_redis.pexpire(f"{settings.redis_prefix}state:a", 1_000)
        await store.save(["a"], pack(new_state_bank(1)))
        assert (await store.load(["a", "b"]))[1] is not None
        await client.aclose()

    asyncio.run(run())
    prefix = settings.redis_prefix
    for key in ("state:a", "state:b", "held:a"):
        assert 3_000_000 < sync_redis.pttl(f"{prefix}{key}") <= 3_600_000, key
    never = RedisStateStore(None, prefix)
    assert never.idle_expiry_ms == 0


def test_the_generator_adds_a_host_that_stops_and_leaves_the_others_alone():
    from vigil.lab.synthetic import generate_telemetry

    start = 1_704_067_200_000
    plain = generate_telemetry(hosts=2, days=2, start_ms=start, seed=5)
    with_gone = generate_telemetry(hosts=2, days=2, start_ms=start, seed=5, gone_host=True)
    gone = with_gone.params["gone"]
    assert gone["host"] == "gone-01" and len(gone["series"]) == 7
    end = start + 2 * 86_400_000 - 60_000
    assert gone["last_ms"] == end - 15 * MIN  # 15 minutes without a point at the end
    for sid in gone["series"]:
        assert int(with_gone.series[sid].ts_ms[-1]) == gone["last_ms"]
    for sid, s in plain.series.items():
        assert np.array_equal(s.values, with_gone.series[sid].values)
    assert plain.labels == with_gone.labels and plain.params["gone"] is None


def test_a_backlog_batch_teaches_the_spacing_of_its_points_not_its_span():
    t = tracker()
    for b in range(5):  # batches of 100 one-minute points, as when a replay catches up
        ts = LIVE + (b * 100 + np.arange(100)) * MIN
        t.observe(["a"] * 100, ts, [0] * 100, wall_ms=int(ts[-1]))
    assert int(t.interval_ms[0]) == MIN
    last = LIVE + 499 * MIN
    assert [s.series for s in t.check(last + 6 * MIN).opened] == ["a"]


def test_a_caught_up_partition_takes_the_most_advanced_clock_but_never_past_the_wall():
    t = tracker()
    # Partition 1's newest point is the stopped series' own: alone, its clock would wait.
    wall = LIVE + 27 * MIN  # a replay: 25 minutes of data arrive within a second
    for m in range(25):
        if m < 10:
            t.observe(["stops"], [LIVE + m * MIN], [1], wall_ms=wall)
        t.observe(["live"], [LIVE + m * MIN], [0], wall_ms=wall)
    wall += 2 * MIN
    assert t.check(wall).opened == []
    # Partition 2 is behind in data time but points keep arriving: it keeps its own clock.
    for m in range(15):
        t.observe(["behind", "behind2"], [LIVE + m * MIN] * 2, [2, 2], wall_ms=wall)
    t.observe(["behind"], [LIVE + 15 * MIN], [2], wall_ms=wall)
    assert [s.series for s in t.check(wall, caught_up={0, 1, 2}).opened] == ["stops"]
    skewed = tracker()
    feed(skewed, ["ahead"], LIVE + 4 * MIN, 10, partition_of=lambda s: 0, lag_ms=-4 * MIN)
    feed(skewed, ["normal"], LIVE, 10, partition_of=lambda s: 1)
    assert skewed.check(LIVE + 10 * MIN, caught_up={0, 1}).opened == []


def test_a_series_still_arriving_from_a_lagging_source_is_not_silent():
    t = tracker()
    wall = LIVE + 2 * 86_400_000
    # One input partition is read up to now; another lags two days behind (a backlog read
    # unevenly): its series keep arriving, with old data. Both land on partition 0.
    for k in range(10):
        t.observe(["fresh"], [wall - (10 - k) * MIN], [0], wall_ms=wall + k * 1_000)
        t.observe(["lagging"], [LIVE + k * MIN], [0], wall_ms=wall + k * 1_000)
    assert t.check(wall + 10_000).opened == []
    # Once it stops arriving for long enough (and its data is old), it is silent.
    t.observe(["fresh"], [wall + 5 * MIN], [0], wall_ms=wall + 5 * MIN)
    assert [s.series for s in t.check(wall + 5 * MIN).opened] == ["lagging"]


def test_series_that_stop_together_open_together_across_a_check():
    t = tracker(together_ms=30_000)
    names = [f'm{i}{{host="h"}}' for i in range(10)]
    feed(t, names + ["other"], LIVE, 10)
    # The host's series stop with their last points up to 10 s apart.
    last = LIVE + 10 * MIN
    for i, s in enumerate(names):
        t.observe([s], [last + i * 1_000], [0], wall_ms=last + i * 1_000)
    feed(t, ["other"], LIVE + 11 * MIN, 5)  # the partition's clock: the wall clock
    # m0..m4 alone are over the threshold at this check; m5..m9 within 30 s of it.
    opened = t.check(last + 5 * MIN + 4_500).opened
    assert sorted(s.series for s in opened) == sorted(names)
    quiet = tracker(together_ms=30_000)
    feed(quiet, ["x", "y"], LIVE, 10)
    assert quiet.check(LIVE + 9 * MIN + 4 * MIN + 50_000).opened == []  # nothing crossed
