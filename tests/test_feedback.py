"""Operators teach the detector (issue 19): "not an anomaly" withholds the pattern's openings.

The detector-level tests run the compiled step over generated series; the end-to-end test
goes through a real worker, broker and Redis, with the feedback given as `vigil feedback`
gives it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Producer

from tests.conftest import Stack, wait_until
from vigil.detectors.bank import new_state_bank
from vigil.detectors.online import ANOMALY_TYPES, OnlineDetector
from vigil.detectors.teaching import Pattern, forget, pattern_from_incident, taught_patterns, teach
from vigil.devtools.embedded import TopicCollector
from vigil.events import verdict
from vigil.streams.feedback import find_incident, publish_feedback, series_of_metric, taught
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings
from vigil.streams.state import RedisStateStore

T0 = 1_700_438_400_000  # a Monday, 00:00 UTC
MIN = 60_000
DAY = 1440
DAY_MS = 86_400_000


def _daily_job(days: int = 21, seed: int = 3):
    """A steady series (σ = 1) with a 20-minute job at 03:00 every day that raises it by 12,
    a spike three times the job's size on day 12 at 10:00 and a dip on day 16 at 14:00."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    y = 50 + rng.normal(0, 1, n)
    minute = np.arange(n) % DAY
    y[(minute >= 180) & (minute < 200)] += 12
    spike, dip = 12 * DAY + 600, 16 * DAY + 840
    y[spike : spike + 3] += 36
    y[dip : dip + 3] -= 14
    return T0 + MIN * np.arange(n), y, spike, dip


def _run(ts, y, cuts=(), lesson=None):
    """Openings ``(minute, anomaly type, z)`` over the series, fed in parts split at ``cuts``;
    after the first part, ``lesson(record, openings so far, now)`` may teach the state."""
    det, bank = OnlineDetector(), new_state_bank(1)
    opens, withheld = [], 0
    bounds = [0, *cuts, len(y)]
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        r = det.process(bank, np.zeros(b - a, int), ts[a:b], y[a:b])
        withheld += int(r.taught.sum())
        opens += [(int((r.steps.ts_ms[i] - T0) // MIN), ANOMALY_TYPES[r.anomaly_type[i]],
                   float(r.z[i])) for i in np.flatnonzero(r.event == 1)]
        if k == 0 and lesson is not None:
            lesson(bank.records[0], opens, int(ts[b - 1]))
    return opens, withheld


def _mark_first(ttl_days: float = 30):
    """The operator marks the first incident "not an anomaly" (at its own size)."""
    def lesson(record, opens, now_ms):
        minute, kind, z = opens[0]
        pattern = pattern_from_incident(record, kind, +1, z, T0 + minute * MIN,
                                        now_ms + int(ttl_days * DAY_MS))
        teach(record, pattern, now_ms)
    return lesson


def _on_the_job(opens):
    return [o for o in opens if 170 <= o[0] % DAY < 240]


def test_not_an_anomaly_stops_the_daily_job_but_not_a_larger_spike_or_a_dip():
    ts, y, spike, dip = _daily_job()
    before, _ = _run(ts, y)
    after, withheld = _run(ts, y, cuts=[DAY], lesson=_mark_first())
    # Untaught, the job opens an incident on most days.
    assert len(_on_the_job(before)) >= 10
    # Marked on day 0, it opens none on the 20 days after, ...
    assert _on_the_job(after) == [_on_the_job(before)[0]]
    assert withheld >= 20
    # ... while the spike three times its size and the dip (the other way) still alert.
    assert any(abs(m - spike) <= 1 for m, _, _ in after)
    assert any(abs(m - dip) <= 1 for m, _, _ in after)
    assert {m for m, _, _ in before if m >= DAY} - {m for m, _, _ in _on_the_job(before)} \
        == {m for m, _, _ in after if m >= DAY}


def test_the_teaching_decays_after_its_time():
    ts, y, _, _ = _daily_job()
    opens, _ = _run(ts, y, cuts=[DAY], lesson=_mark_first(ttl_days=6))
    job = [m // DAY for m, _, _ in _on_the_job(opens)]
    # Quiet while it holds (days 1 to 6), the job alerts again once it has expired.
    assert job[0] == 0 and not [d for d in job if 1 <= d <= 6] and max(job) >= 8


def test_a_daily_recurring_pattern_is_taught_at_its_time_of_day_only():
    record = new_state_bank(1).records[0]
    opened = T0 + 3 * DAY_MS + 180 * MIN
    record["z_hour_count"][3] = 2.0  # excursions at 03:00 on an earlier day and today
    pattern = pattern_from_incident(record, "collective:level_shift", -1, 9.0, opened, T0 + 99)
    assert pattern == Pattern(family=1, direction=-1, z=9.0, minute=180, until_ms=T0 + 99)
    record["z_hour_count"][3] = 1.0  # only the marked incident itself
    assert pattern_from_incident(record, "point", 1, 9.0, opened, T0).minute == -1
    # Families without a direction teach none; the LSTM's incidents nothing.
    assert pattern_from_incident(record, "collective:variance", 1, 9.0, opened, T0).direction == 0
    assert pattern_from_incident(record, "collective:lstm", 1, 9.0, opened, T0) is None


def test_teaching_again_renews_and_a_full_record_reuses_the_slot_expiring_first():
    record = new_state_bank(1).records[0]
    p = Pattern(family=1, direction=1, z=8.0, minute=-1, until_ms=1_000)
    assert teach(record, p, 0) == 0
    # The same pattern again: same slot, the larger size, the later expiry.
    assert teach(record, Pattern(1, 1, 6.0, -1, 2_000), 500) == 0
    assert taught_patterns(record, 500) == [Pattern(1, 1, 8.0, -1, 2_000)]
    for k, family in enumerate((2, 3, 1), start=1):  # other patterns fill the slots
        assert teach(record, Pattern(family, 0 if family > 1 else -1, 5.0, -1, 3_000 + k), 0) \
            == k
    assert teach(record, Pattern(3, 0, 5.0, 600, 9_000), 0) == 0  # replaces the earliest
    assert len(taught_patterns(record, 2_500)) == 4
    assert len(taught_patterns(record, 3_001)) == 3  # expired ones are not in force
    assert forget(record) == 4 and taught_patterns(record, 0) == []


def test_the_series_of_a_metric_are_found_by_their_state_keys(redis_url: str):
    import redis

    prefix = "vigil-test-metric:"
    settings = Settings(redis_url=redis_url, redis_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    ids = ['cpu{host="a"}', 'cpu{host="b"}', "cpu", 'cpu_total{host="a"}', 'cp*u{host="a"}']
    try:
        for s in ids:
            client.set(f"{prefix}state:{s}", b"x")
        assert series_of_metric(settings, 'cpu{host="z"}') == ["cpu", 'cpu{host="a"}',
                                                                'cpu{host="b"}']
        assert series_of_metric(settings, "cp*u") == ['cp*u{host="a"}']
    finally:
        client.delete(*[f"{prefix}state:{s}" for s in ids])
        client.close()


# --- end to end: a real worker, broker and Redis ------------------------------------------------


def _settings(stack: Stack) -> Settings:
    return Settings(kafka_bootstrap=stack.broker, redis_url=stack.redis_url,
                    redis_prefix=stack.prefix, anomalies_topic=stack.anomalies_topic,
                    feedback_topic=stack.feedback_topic)


def _opens(collector: TopicCollector, stack: Stack) -> list[dict]:
    events = [orjson.loads(v) for v in collector.values(stack.anomalies_topic)]
    return [e for e in events if e["kind"] == "open"]


@pytest.mark.integration
def test_marked_not_an_anomaly_through_the_worker_survives_a_restart(stack: Stack):
    """A spike alerts; `vigil feedback not-anomaly` on its incident; the same spike later
    alerts no more (it would without the teaching: the same points through the same
    pipeline), also after a worker restart; a spike three times as large still alerts."""
    rng = np.random.default_rng(5)
    now = time.time_ns() // 1_000_000
    t0 = now - now % MIN - 400 * MIN
    y = 50 + rng.normal(0, 1, 400)
    # A new series: in its first day only critical scores open (quiet_until_daily), so the
    # spikes are well above z_critical.
    y[150] += 20
    y[250] += 20
    y[350] += 60
    series = 'queue_depth{host="q-1"}'
    producer = Producer({"bootstrap.servers": stack.broker})

    def produce(lo: int, hi: int) -> None:
        for m in range(lo, hi):
            producer.produce(stack.input_topic, key=series.encode(), value=orjson.dumps(
                {"name": "queue_depth", "labels": {"host": "q-1"}, "timestamp": t0 + m * MIN,
                 "value": float(y[m])}))
        producer.flush(10)

    # Untaught, the second spike opens an incident of its own.
    async def reference() -> list[int]:
        client = aioredis.from_url(stack.redis_url)
        try:
            pipeline = DetectionPipeline(RedisStateStore(client, stack.prefix + "reference:"))
            batch = await pipeline.process([series] * 400, t0 + MIN * np.arange(400), y)
            return [(e.ts_ms - t0) // MIN for e in batch.events if e.kind == "open"]
        finally:
            await client.aclose()

    assert asyncio.run(reference()) == [150, 250, 350]

    settings = _settings(stack)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    try:
        worker = stack.start_worker()
        produce(0, 200)
        stack.wait_processed(200, worker)
        first = wait_until(lambda: _opens(collector, stack), 30, "the first spike's incident")
        assert [(e["ts_ms"] - t0) // MIN for e in first] == [150]
        record = verdict("not_anomaly", find_incident(settings, first[0]["incident_id"]), "op")
        assert record.pattern["peak_score"] > 6 and record.pattern["direction"] == 1
        publish_feedback(settings, [record])
        lessons = wait_until(lambda: taught(settings), 60, "the lesson in the series' state")
        assert [s for s, _ in lessons] == [series]

        produce(200, 300)
        stack.wait_processed(300, worker)
        worker.stop()
        worker = stack.start_worker()
        assert [s for s, _ in taught(settings)] == [series]  # kept in Redis
        produce(300, 400)
        stack.wait_processed(400, worker)
        wait_until(lambda: len(_opens(collector, stack)) >= 2, 30, "the larger spike's incident")
        time.sleep(1)
        opens = _opens(collector, stack)
    finally:
        collector.close()
    assert [(e["ts_ms"] - t0) // MIN for e in opens] == [150, 350]


# --- the second opinion (item 3): verdicts collected, a model trained and used ----------------


def test_train_feedback_fits_the_verdicts_and_writes_a_model(redis_url, tmp_path):
    import redis
    from typer.testing import CliRunner

    from vigil.cli import app
    from vigil.detectors.second_opinion import SecondOpinion, opening_features

    prefix = f"vigil-test-train-{time.time_ns()}:"
    client = redis.Redis.from_url(redis_url)
    rng = np.random.default_rng(0)
    try:
        for k in range(30):  # real anomalies score higher and come rarely
            real = k % 3 == 0
            features = opening_features(14.0 + rng.normal() if real else 7.0 + rng.normal(),
                                        T0 + k * 3_600_000, [], MIN, [1.0, 2.0])
            client.hset(f"{prefix}notify:verdicts", f"inc{k}", orjson.dumps(
                {"ts_ms": T0 + k, "features": features.tolist(), "label": int(real)}))
        out = tmp_path / "model.json"
        result = CliRunner().invoke(app, ["train", "--feedback", "--out", str(out)], env={
            "VIGIL_REDIS_URL": redis_url, "VIGIL_REDIS_PREFIX": prefix})
    finally:
        client.delete(f"{prefix}notify:verdicts")
        client.close()
    assert result.exit_code == 0, result.output
    assert "trained on 30 verdicts (10 real, 20 not an anomaly)" in result.output
    model = SecondOpinion.from_dict(orjson.loads(out.read_bytes()))
    low, high = (opening_features(z, T0, [], MIN, [1.0, 2.0]) for z in (7.0, 14.0))
    assert model.probability(low)[0] < 0.5 < model.probability(high)[0]
