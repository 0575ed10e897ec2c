"""Bounded growth (issue 18, item 7): series beyond the per-worker and per-metric limits are
refused — their points dead-lettered with the reason and counted — and the series a worker
already holds stay admitted (vigil/streams/limits.py)."""

from __future__ import annotations

import base64
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import Stack, wait_until
from tests.test_worker_metrics import scrape, total
from vigil.devtools.embedded import TopicCollector
from vigil.streams.limits import SeriesLimits


def test_a_metric_over_its_limit_refuses_new_series_and_keeps_the_known_ones():
    limits = SeriesLimits(per_worker=0, per_metric=2)
    series = ['req{id="1"}', 'req{id="2"}', 'req{id="3"}', 'cpu{h="a"}', 'req{id="1"}']
    (kept, ts, values), refused = limits.split(series, np.arange(5), np.ones(5))
    assert kept == ['req{id="1"}', 'req{id="2"}', 'cpu{h="a"}', 'req{id="1"}']
    assert ts.tolist() == [0, 1, 3, 4]
    reason, names, ts_r, _ = refused["metric"]
    assert names == ['req{id="3"}'] and ts_r == [2]
    assert "metric req has 2 series" in reason and "VIGIL_MAX_SERIES_PER_METRIC=2" in reason
    # Known series stay in; a released one makes room.
    assert limits.admit(['req{id="2"}'])[1] == {}
    limits.release(['req{id="1"}'])
    assert limits.admit(['req{id="3"}'])[1] == {}
    assert len(limits) == 3


def test_the_worker_limit_counts_every_metric_and_restored_series_always_count():
    limits = SeriesLimits(per_worker=2, per_metric=0)
    limits.know(['a{x="1"}', 'b{x="1"}', 'c{x="1"}'])  # restored: over the limit already
    ok, refused = limits.admit(['a{x="1"}', 'd{x="1"}'])
    assert ok.tolist() == [True, False] and refused == {'d{x="1"}': "worker"}
    assert "this worker holds 3 series (VIGIL_MAX_SERIES_PER_WORKER=2)" in limits.reason(
        'd{x="1"}', "worker")
    limits.revoke(lambda s: s.startswith("a"))  # b and c moved to another worker
    assert limits.admit(['d{x="1"}'])[1] == {}


def test_no_limits_admit_everything_without_tracking():
    limits = SeriesLimits(0, 0)
    ok, refused = limits.admit([f"s{i}" for i in range(1000)])
    assert ok.all() and refused == {} and len(limits) == 0


@pytest.mark.integration
def test_a_worker_dead_letters_the_points_of_series_over_the_limit(stack: Stack):
    collector = TopicCollector(stack.broker, [stack.deadletter_topic])
    worker = stack.start_worker(VIGIL_MAX_SERIES_PER_METRIC="3")
    now_ms = time.time_ns() // 1_000_000
    points = [{"name": "requests", "labels": {"id": str(i)}, "timestamp": now_ms, "value": 1.0}
              for i in range(10)]
    points.append({"name": "cpu", "labels": {"host": "a"}, "timestamp": now_ms, "value": 2.0})
    producer = Producer({"bootstrap.servers": stack.broker})
    producer.produce(stack.input_topic, orjson.dumps(points))
    producer.flush(10)
    try:
        letters = wait_until(lambda: collector.values(stack.deadletter_topic), 60,
                             "the refused points' dead letter")
        stack.wait_processed(4, worker, timeout=30)
    finally:
        collector.close()
    records = [orjson.loads(v) for v in letters]
    assert all(r["stage"] == "limit" for r in records)
    assert all("series limit: metric requests has 3 series" in r["reason"] for r in records)
    refused = [s for r in records for s in orjson.loads(base64.b64decode(r["raw_b64"]))["s"]]
    states = {k.decode().split("state:", 1)[1]
              for k in stack.redis.scan_iter(f"{stack.prefix}state:*")}
    assert len(refused) == 7 and not set(refused) & states  # not a point lost: each one is
    assert len(states) == 4 and 'cpu{host="a"}' in states  # kept or dead-lettered
    samples = scrape(worker.env["VIGIL_WEB_PORT"])
    assert total(samples, "vigil_points_refused_total", limit="metric") == 7
    assert total(samples, "vigil_series_refused_total", limit="metric") == 7
    assert worker.alive()
