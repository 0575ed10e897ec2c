"""The worker end to end over a real Kafka-protocol broker (Tansu) and a real Redis.

Each test starts real ``vigil worker`` processes (the same command users run), produces
into real topics, and reads the anomalies and dead-letter topics back.
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.request
import uuid

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Producer

from tests.conftest import Stack, wait_until
from vigil.devtools.embedded import TopicCollector, create_topics
from vigil.devtools.replay import replay
from vigil.lab.evaluation import match_incidents
from vigil.lab.synthetic import generate_telemetry
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings
from vigil.streams.state import RedisStateStore, unpack

pytestmark = pytest.mark.integration

METRICS = ["cpu_usage_percent", "load1", "http_latency_ms", "network_rx_bytes", "http_error_rate"]
DAY_MS = 86_400_000


def _month(days: float = 21, seed: int = 2):
    now = time.time_ns() // 1_000_000
    start = now - int(days * DAY_MS)
    start -= start % 60_000
    return generate_telemetry(hosts=1, metrics=METRICS, days=days, seed=seed, start_ms=start)


def _split(telemetry, fraction: float):
    """Two copies of the telemetry: points before and from the cut time."""
    from copy import copy

    first_ts = min(int(s.ts_ms[0]) for s in telemetry.series.values())
    last_ts = max(int(s.ts_ms[-1]) for s in telemetry.series.values())
    cut = first_ts + int((last_ts - first_ts) * fraction)
    halves = []
    for keep in (lambda ts: ts < cut, lambda ts: ts >= cut):
        part = copy(telemetry)
        part.series = {}
        for sid, s in telemetry.series.items():
            mask = keep(s.ts_ms)
            part.series[sid] = type(s)(s.name, s.labels, s.ts_ms[mask], s.values[mask])
        halves.append(part)
    return halves


def _events(collector: TopicCollector, topic: str) -> list[dict]:
    return [orjson.loads(v) for v in collector.values(topic)]


def _assert_repeats_are_identical(events: list[dict]) -> None:
    # The chart context comes from worker memory, which a restart empties; the event itself
    # (ids, values, band, score, kind) must repeat exactly.
    by_id: dict[str, dict] = {}
    for e in events:
        e = {k: v for k, v in e.items() if k != "context"}
        assert by_id.setdefault(e["event_id"], e) == e


def _wait_for_events(collector: TopicCollector, stack: Stack, expected: list[dict]):
    """Every anomaly event once all the expected ids have arrived (and a moment for stray
    repeats), or fail."""
    wanted = {e["event_id"] for e in expected}
    wait_until(
        lambda: wanted <= {e["event_id"] for e in _events(collector, stack.anomalies_topic)},
        60, f"the {len(wanted)} expected anomaly events",
    )
    time.sleep(1)
    return _events(collector, stack.anomalies_topic)


def _expected_events(telemetry, stack: Stack) -> list[dict]:
    """The events one uninterrupted pass of the same pipeline code gives (the reference)."""
    series, ts, values = [], [], []
    for sid, s in telemetry.series.items():
        series += [sid] * len(s)
        ts.append(s.ts_ms)
        values.append(s.values)

    async def run() -> list[dict]:
        client = aioredis.from_url(stack.redis_url)
        try:
            store = RedisStateStore(client, stack.prefix + "reference:")
            # The worker's default allowed lateness: the same newest steps are still open.
            lateness = Settings.model_fields["allowed_lateness_steps"].default
            pipeline = DetectionPipeline(store, lateness_steps=lateness)
            batch = await pipeline.process(series, np.concatenate(ts), np.concatenate(values))
            return [e.asdict() for e in batch.events]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_replayed_month_yields_events_inside_the_labelled_anomalies(stack: Stack):
    telemetry = _month()
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    worker = stack.start_worker()
    try:
        sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        expected = _expected_events(telemetry, stack)
        events = _wait_for_events(collector, stack, expected)
    finally:
        collector.close()

    # A fresh deployment's first batch (offsets 0, 1, …) is not a Redis that lost its data.
    assert "lost its data" not in worker.log_path.read_text()
    opens = [(e["series"], e["ts_ms"]) for e in events if e["kind"] == "open"]
    report = match_incidents(opens, telemetry.labels, tolerance_ms=15 * 60_000)
    labelled = len(telemetry.labels)
    assert labelled >= 10
    assert len(report.found) >= 0.8 * labelled, report.missed
    assert len(report.false_alarms) <= 3, report.false_alarms
    # Every event is well formed and the stream is exactly what the pipeline code computes.
    assert {e["event_id"] for e in events} == {e["event_id"] for e in expected}
    for e in events:
        assert e["kind"] in {"open", "update", "resolve"}
        assert e["lower"] <= e["expected"] <= e["upper"]
        assert e["labels"] == {"host": "web-01"}
        assert e["series"].startswith(e["name"] + "{")
        assert e["detectors"] == ["seasonal"] and e["reason"]
        if e["kind"] == "resolve":
            assert e["context"] is None
        else:  # the last steps up to the event, for the alert chart
            ctx = e["context"]
            assert ctx["ts_ms"][-1] == e["ts_ms"] and 1 < len(ctx["ts_ms"]) <= 120
            assert ctx["value"][-1] == pytest.approx(e["value"], rel=1e-5)
            assert len({len(v) for v in ctx.values()}) == 1
            assert ctx["z"][-1] >= 6


@pytest.mark.chaos
@pytest.mark.parametrize("stop", ["graceful", "kill"])
def test_restart_mid_stream_keeps_state_and_duplicates_no_event(stack: Stack, stop: str, chaos):
    telemetry = _month(days=14, seed=5)
    first, second = _split(telemetry, 0.6)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    try:
        worker = stack.start_worker()
        sent = replay(first, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        worker.stop(kill=(stop == "kill"))

        # The learned state survived in Redis: every series has weeks of steps behind it.
        keys = list(stack.redis.scan_iter(f"{stack.prefix}state:*"))
        assert len(keys) == len(telemetry.series)
        bank, found = unpack(stack.redis.mget(keys))
        assert found.all() and (bank["n_steps"] > 7 * 1440).all()

        worker = stack.start_worker()
        sent += replay(second, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        expected = _expected_events(telemetry, stack)
        events = _wait_for_events(collector, stack, expected)
    finally:
        collector.close()

    ids = [e["event_id"] for e in events]
    wanted = {e["event_id"] for e in expected}
    chaos(sent=sent, expected=len(wanted), lost=len(wanted - set(ids)),
          duplicated=len(ids) - len(set(ids)))
    assert set(ids) == wanted, "restart changed what was detected"
    if stop == "graceful":
        assert len(ids) == len(set(ids)), "a graceful restart must not repeat any event"
    else:
        # After a crash, uncommitted batches are redelivered (at-least-once); a repeated
        # event is the very same record, so consumers deduplicate by event_id.
        _assert_repeats_are_identical(events)


def test_bad_records_are_dead_lettered_and_the_worker_keeps_running(stack: Stack):
    collector = TopicCollector(stack.broker, [stack.deadletter_topic])
    worker = stack.start_worker()
    now_ms = time.time_ns() // 1_000_000
    now_s = now_ms // 1000
    bad = [
        b'{"name": "cpu", "value": 1.0, "timestamp": ',  # truncated JSON
        b'{"name": "cpu", "value": "NaN", "timestamp": %d}' % now_ms,
        b'{"name": "cpu", "value": "high", "timestamp": %d}' % now_ms,
        b'{"name": "cpu", "timestamp": %d}' % now_ms,
        b'{"name": "cpu", "value": 1.0, "timestamp": 4102444800}',  # 2100-01-01
        b'{"name": "cpu", "value": 1.0, "timestamp": 12}',  # 1970
        b"cpu,host=a usage=abc %d" % (now_ms * 1_000_000),
        b"\xff\xfe not a record",
    ]
    good = [
        orjson.dumps([{"name": "cpu", "labels": {"host": "a"}, "timestamp": now_ms, "value": 3.5},
                      {"name": "cpu", "labels": {"host": "b"}, "timestamp": now_s, "value": 4}]),
        b"cpu,host=c usage=2.5 %d" % (now_ms * 1_000_000),
        # Prometheus kafka-adapter JSON: ISO timestamp, value as a string.
        orjson.dumps({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)),
                      "value": "1", "name": "up", "labels": {"__name__": "up", "job": "node"}}),
    ]
    producer = Producer({"bootstrap.servers": stack.broker})
    for payload in bad + good:
        producer.produce(stack.input_topic, payload)
    producer.flush(10)
    try:
        stack.wait_processed(4, worker, timeout=60)
        letters = wait_until(
            lambda: len(collector.values(stack.deadletter_topic)) >= len(bad)
            and collector.values(stack.deadletter_topic),
            30, "dead letters",
        )
    finally:
        collector.close()
    assert worker.alive()
    records = [orjson.loads(v) for v in letters]
    raws = {base64.b64decode(r["raw_b64"]) for r in records}
    assert raws == set(bad)
    reasons = " | ".join(r["reason"] for r in records)
    for fragment in ["invalid JSON", "NaN", "not numeric", "missing field 'value'",
                     "future", "before 2000", "usage"]:
        assert fragment in reasons, reasons
    assert all(r["topic"] == stack.input_topic and r["offset"] >= 0 for r in records)
    # The good records of every format around them were all processed.
    stack.wait_processed(4, worker, timeout=10)


def test_worker_exposes_metrics_that_move_with_the_points(stack: Stack):
    worker = stack.start_worker()
    port = int(worker.env["VIGIL_WEB_PORT"])
    now_ms = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": stack.broker})
    producer.produce(stack.input_topic, b"{broken")
    producer.produce(
        stack.input_topic,
        orjson.dumps([{"name": "cpu", "timestamp": now_ms + i, "value": 1.0} for i in range(50)]),
    )
    producer.flush(10)
    stack.wait_processed(50, worker, timeout=60)

    def metric(name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert wait_until(lambda: metric("vigil_points_in_total") >= 50, 10, "points metric")
    assert metric("vigil_dead_letters_total") >= 1
    assert metric("vigil_points_detected_total") >= 50
    health = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    assert health["redis"] is True


def test_topic_pattern_subscribes_to_every_matching_topic(stack: Stack):
    topics = [f"{stack.input_topic}-a", f"{stack.input_topic}-b"]
    create_topics(stack.broker, {t: 2 for t in topics} | {f"other-{stack.input_topic}": 1})
    worker = stack.start_worker(VIGIL_INPUT_PATTERN=f"{stack.input_topic}-.*")
    now_ms = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": stack.broker})
    for i, topic in enumerate(topics + [f"other-{stack.input_topic}"]):
        producer.produce(topic, orjson.dumps({"name": f"m{i}", "timestamp": now_ms, "value": 1}))
    producer.flush(10)
    stack.wait_processed(2, worker, timeout=60)
    time.sleep(2)
    assert stack.processed() == 2  # the topic that does not match was not read


@pytest.mark.chaos
def test_worker_rides_out_a_redis_restart_without_losing_points(stack: Stack, chaos):
    from vigil.devtools.embedded import start_redis

    server = start_redis()
    port = server.port
    url = f"redis://127.0.0.1:{port}/0"
    worker = stack.start_worker(VIGIL_REDIS_URL=url)
    producer = Producer({"bootstrap.servers": stack.broker})
    start = time.time_ns() // 1_000_000 - 3 * 3_600_000
    start -= start % 60_000

    def send(minutes: range) -> int:
        points = [
            {"name": "cpu", "labels": {"host": h}, "timestamp": start + m * 60_000, "value": 5.0}
            for m in minutes
            for h in ("a", "b")
        ]
        producer.produce(stack.input_topic, orjson.dumps(points), key=b"cpu")
        producer.flush(10)
        return len(points)

    import redis as sync_redis

    def processed() -> int:
        try:
            client = sync_redis.Redis.from_url(url, socket_connect_timeout=0.5)
            return int(client.hget(f"{stack.prefix}stats", "points_processed") or 0)
        except sync_redis.exceptions.ConnectionError:
            return -1

    try:
        first = send(range(0, 60))
        wait_until(lambda: processed() >= first, 60, "points before the outage")
        server.stop()
        second = send(range(60, 120))
        time.sleep(3)  # the worker retries while Redis is away
        assert worker.alive(), worker.log_tail()
        server = start_redis(port)  # a fresh, empty Redis on the same port
        # The batch that waited is written once Redis is back; nothing was dropped.
        wait_until(lambda: processed() >= second, 60, "points after the outage")
        client = sync_redis.Redis.from_url(url)
        bank, found = unpack(client.mget([f"{stack.prefix}state:cpu{{host=\"a\"}}"]))
        # The state learned before the outage: 120 minutes, less the open step and the steps
        # held back for late points.
        lateness = Settings().allowed_lateness_steps
        applied = processed()
        chaos(unit="points", sent=second, expected=second, lost=max(second - applied, 0),
              duplicated=max(applied - second, 0))
        assert found.all() and bank["n_steps"][0] >= 119 - lateness
        assert worker.alive()
    finally:
        server.stop()


def test_new_topic_matching_the_pattern_is_picked_up(stack: Stack):
    first = f"{stack.input_topic}-a"
    create_topics(stack.broker, {first: 1})
    worker = stack.start_worker(
        VIGIL_INPUT_PATTERN=f"{stack.input_topic}-.*", VIGIL_PATTERN_REFRESH_S="1"
    )
    now_ms = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": stack.broker})
    producer.produce(first, orjson.dumps({"name": "a", "timestamp": now_ms, "value": 1}))
    producer.flush(10)
    stack.wait_processed(1, worker, timeout=60)
    later = f"{stack.input_topic}-b"
    create_topics(stack.broker, {later: 1})
    producer.produce(later, orjson.dumps({"name": "b", "timestamp": now_ms, "value": 1}))
    producer.flush(10)
    stack.wait_processed(2, worker, timeout=60)
    assert "restarting the worker to resubscribe" in worker.log_path.read_text()


def test_two_workers_share_the_partitions_and_detect_as_one(stack: Stack):
    telemetry = _month(days=10, seed=3)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    workers = [stack.start_worker(), stack.start_worker()]

    def detected(worker) -> float:
        port = int(worker.env["VIGIL_WEB_PORT"])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith("vigil_points_detected_total "):
                return float(line.split()[1])
        return 0.0

    try:
        # Both members joined the group before any data flows.
        wait_until(
            lambda: all("Setting newly assigned partitions" in w.log_path.read_text()
                        for w in workers),
            30, "both workers to be assigned partitions",
        )
        time.sleep(4)  # the second join triggers one more rebalance
        sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, workers[0], timeout=120)
        expected = _expected_events(telemetry, stack)
        events = _wait_for_events(collector, stack, expected)
        shares = [detected(w) for w in workers]
    finally:
        collector.close()
    assert all(s > 0 for s in shares), f"one worker did all the work: {shares}"
    assert sum(shares) == sent  # every point applied once, by one of them
    assert {e["event_id"] for e in events} == {e["event_id"] for e in expected}
    # A rebalance may redeliver a batch (at-least-once); a repeat is the very same record.
    _assert_repeats_are_identical(events)


def test_junk_on_the_internal_topic_is_dead_lettered_not_fatal(stack: Stack):
    collector = TopicCollector(stack.broker, [stack.deadletter_topic])
    worker = stack.start_worker()
    producer = Producer({"bootstrap.servers": stack.broker})
    producer.produce(stack.points_topic, b"not a routed batch", partition=0)
    now_ms = time.time_ns() // 1_000_000
    producer.produce(stack.input_topic, orjson.dumps({"name": "up", "timestamp": now_ms,
                                                      "value": 1}))
    producer.flush(10)
    try:
        stack.wait_processed(1, worker, timeout=60)
        letters = wait_until(lambda: collector.values(stack.deadletter_topic), 30, "dead letter")
    finally:
        collector.close()
    record = orjson.loads(letters[0])
    assert record["stage"] == "route" and record["topic"] == stack.points_topic
    assert base64.b64decode(record["raw_b64"]) == b"not a routed batch"
    assert worker.alive()


def _metrics(worker) -> dict[str, float]:
    port = int(worker.env["VIGIL_WEB_PORT"])
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}  # not serving yet
    samples = {}
    for line in text.decode().splitlines():
        if line.startswith("vigil_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_unkeyed_producer_across_partitions_loses_no_point(stack: Stack):
    """Issue 17's scenario: 300 points of one series a minute apart, each message with a
    random key (as collectd sends them), produced into 4 input partitions while the worker
    is stopped; then the worker starts with the default settings (no allowed lateness). It
    reads the backlog a partition's chunk at a time (10 messages an ingest batch, each
    routed message its own detection batch), so unmerged, a series' points would reach the
    detector hours out of order. The ingest merges the partitions by event time: none is
    dropped, and every point is in its own step, in order."""
    step = 60_000
    now = time.time_ns() // 1_000_000
    s0 = now - now % step - 400 * step  # 400 minutes ago
    ts = s0 + step * np.arange(300)
    values = np.arange(300) % 7 + 1.0
    producer = Producer({"bootstrap.servers": stack.broker})
    for t, v in zip(ts.tolist(), values.tolist(), strict=True):
        producer.produce(stack.input_topic, key=uuid.uuid4().bytes, value=orjson.dumps(
            {"name": "cpu", "labels": {"host": "a"}, "timestamp": t, "value": v}))
    producer.flush(10)
    partitions = {p for p, n in enumerate(stack.offsets(stack.input_topic, 4)) if n}
    assert len(partitions) == 4, "the random keys spread the series over every partition"

    worker = stack.start_worker(VIGIL_INGEST_BATCH="10", VIGIL_DETECT_BATCH="1")
    stack.wait_processed(300, worker)
    samples = wait_until(
        lambda: (m := _metrics(worker)).get("vigil_points_detected_total", 0) >= 300 and m,
        30, "the 300 points detected",
    )
    dropped = {k: v for k, v in samples.items() if k.startswith("vigil_points_dropped_total")}
    assert len(dropped) == 3 and sum(dropped.values()) == 0, dropped
    assert samples["vigil_points_detected_total"] == 300
    assert samples["vigil_input_points_waiting"] == 0
    assert samples["vigil_input_points_forced_total"] == 0

    # Every point is in its step: 299 steps closed, the last one holds the last point.
    series = 'cpu{host="a"}'
    bank, found = unpack([stack.redis.get(f"{stack.prefix}state:{series}")])
    assert found.all()
    assert int(bank["n_steps"][0]) == 299
    assert int(bank["last_step_ms"][0]) == int(ts[298])
    assert float(bank["last_value"][0]) == values[298]
    assert (int(bank["bucket_ms"][0]), int(bank["bucket_count"][0])) == (int(ts[299]), 1)
