"""Stopped series through real ``vigil worker`` (and notifier) processes on the broker and
Redis: a series that stops opens one ``no_data`` incident, resolved when it reports again;
50 series of one host that stop are one alert; a restart with nothing stopped is quiet.

Live points (timestamped now) flow from a producer thread; the worker runs with a 1 s step
and small nodata settings (3 intervals, at least 2 s, checked every 0.5 s). Waits are
generous; nothing depends on how fast the box is beyond them."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import Stack, wait_until
from tests.test_notifier_integration import botapi, telegram_alerts  # noqa: F401 - fixture
from vigil.devtools.embedded import TopicCollector
from vigil.streams.silence import read_seen

pytestmark = pytest.mark.integration

NODATA = {"VIGIL_DETECTOR__STEP_S": "1", "VIGIL_NODATA_CHECK_S": "0.5",
          "VIGIL_NODATA_STEPS": "3", "VIGIL_NODATA_MIN_S": "2"}
THRESHOLD_MS = 3_000  # 3 intervals of 1 s (the step), at least 2 s


class LivePoints:
    """A thread producing one point per active series every ``every_s``, stamped now."""

    def __init__(self, stack: Stack, series: dict[str, dict], every_s: float = 0.4) -> None:
        self.topic = stack.input_topic
        self.producer = Producer({"bootstrap.servers": stack.broker, "linger.ms": 5})
        self.series = series  # id → {"name", "labels"}
        self.active = set(series)
        self.last_ms: dict[str, int] = {}
        self.every_s = every_s
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivePoints:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.producer.flush(10)

    def stop(self, ids) -> None:
        with self.lock:
            self.active -= set(ids)

    def resume(self, ids) -> None:
        with self.lock:
            self.active |= set(ids)

    def _run(self) -> None:
        k = 0
        while not self.stopping.is_set():
            now = time.time_ns() // 1_000_000
            with self.lock:
                batch = [{**self.series[s], "value": 10.0 + (k % 3), "timestamp": now}
                         for s in sorted(self.active)]
                for s in self.active:
                    self.last_ms[s] = now
            if batch:
                self.producer.produce(self.topic, orjson.dumps(batch))
                self.producer.poll(0)
            k += 1
            self.stopping.wait(self.every_s)


def ids(host: str, n: int) -> dict[str, dict]:
    out = {}
    for i in range(n):
        labels = {"host": host}
        out[f'metric_{i}{{host="{host}"}}'] = {"name": f"metric_{i}", "labels": labels}
    return out


def no_data(collector: TopicCollector, topic: str) -> list[dict]:
    events = [orjson.loads(v) for v in collector.values(topic)]
    return [e for e in events if e["anomaly_type"] == "no_data"]


def test_a_series_that_stops_opens_one_no_data_incident_and_data_resolves_it(stack: Stack):
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    series = ids("db-1", 3)
    gone = 'metric_0{host="db-1"}'
    worker = stack.start_worker(**NODATA)
    try:
        with LivePoints(stack, series) as live:
            wait_until(lambda: stack.processed() >= 30, 90, "points processed")
            time.sleep(3)  # a few intervals learned by every series
            live.stop([gone])
            stopped_at = live.last_ms[gone]
            opened = wait_until(lambda: [e for e in no_data(collector, stack.anomalies_topic)
                                         if e["kind"] == "open"], 60, "a no_data event")
            time.sleep(3)  # more checks: it must not be told again
            assert [e["series"] for e in no_data(collector, stack.anomalies_topic)] == [gone]
            event = opened[0]
            assert event["labels"] == {"host": "db-1"} and event["severity"] == "warning"
            # Not before the configured delay, and (generously) soon after it.
            assert event["ts_ms"] - stopped_at > THRESHOLD_MS
            assert event["ts_ms"] - stopped_at < THRESHOLD_MS + 15_000
            live.resume([gone])
            resolved = wait_until(lambda: [e for e in no_data(collector, stack.anomalies_topic)
                                           if e["kind"] == "resolve"], 60, "its resolve")
            assert resolved[0]["incident_id"] == event["incident_id"]
            assert worker.alive()
    finally:
        collector.close()


def test_fifty_series_of_one_host_that_stop_are_one_alert(stack: Stack, botapi):  # noqa: F811
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    gone, kept = ids("gone-01", 50), ids("web-01", 5)
    notifier = stack.start_notifier(telegram_alerts(botapi, group_wait_s=5.0))
    stack.start_worker(**NODATA)
    try:
        with LivePoints(stack, {**gone, **kept}) as live:
            wait_until(lambda: stack.processed() >= 550, 90, "points processed")
            time.sleep(3)
            live.stop(gone)
            wait_until(lambda: len(no_data(collector, stack.anomalies_topic)) >= 50, 60,
                       "50 no_data events")
            message = wait_until(lambda: botapi.sent(), 60, "the alert")
            time.sleep(6)  # a group window more: nothing else is sent
            sent = botapi.sent()
            assert len(sent) == 1, [m.text for m in sent]
            assert sent[0].text.splitlines()[0] == \
                "WARNING gone-01: 50 series stopped reporting"
            assert message[0].text.count("no data for") == 50 or "more" in message[0].text
            assert {e["series"] for e in no_data(collector, stack.anomalies_topic)} == set(gone)
            assert notifier.alive()
    finally:
        collector.close()


def test_a_worker_restart_with_nothing_stopped_raises_no_no_data(stack: Stack):
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    series = {**ids("web-01", 20), **ids("web-02", 20)}
    worker = stack.start_worker(**NODATA)
    try:
        with LivePoints(stack, series):
            wait_until(lambda: stack.processed() >= 400, 90, "points processed")
            time.sleep(3)
            worker.stop()  # graceful; the points keep coming meanwhile
            time.sleep(8)  # down for longer than the silence threshold: a backlog builds
            before = stack.processed()
            worker = stack.start_worker(**NODATA)
            wait_until(lambda: stack.processed() > before + 400, 90, "the backlog processed")
            time.sleep(5)  # many checks after catching up
        assert no_data(collector, stack.anomalies_topic) == []
        kept = [read_seen(stack.redis.get(f"{stack.prefix}seen:{p}"))[0] for p in range(4)]
        assert sorted(s for names in kept for s in names) == sorted(series)
    finally:
        collector.close()
