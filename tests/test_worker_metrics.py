"""A real worker's ``/metrics`` and ``/health`` while points flow (real broker and Redis)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, wait_until
from vigil.devtools.replay import replay
from vigil.lab.synthetic import generate_telemetry

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def scrape(port: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the worker's /metrics, by (name, sorted labels)."""
    # A generous timeout: the page is served by the event loop that also runs the batches.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def health(port: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_metrics_move_when_points_flow_and_health_reports_the_assignment(stack: Stack):
    worker = stack.start_worker(VIGIL_LAG_REFRESH_S="0.3")
    port = worker.env["VIGIL_WEB_PORT"]

    def assigned():
        if not worker.alive():
            pytest.fail("worker died:\n" + worker.log_tail())
        try:
            status, report = health(port)
        except OSError:
            return None
        return status == 200 and report["kafka_assigned"] and report

    report = wait_until(assigned, 60, "/health with partitions assigned")
    assert report["redis"] is True and "clickhouse" not in report  # not configured here
    # The worker owns its input, the internal points topic and the feedback topic (operators'
    # lessons, vigil.teach).
    owned = {stack.input_topic, stack.points_topic, stack.feedback_topic}
    assert {a.split("/")[0] for a in report["kafka_assigned"]} == owned
    before = scrape(port)

    now = time.time_ns() // 1_000_000
    start = now - 8 * DAY_MS - DAY_MS // 2
    start -= start % 60_000
    telemetry = generate_telemetry(hosts=1, metrics=["cpu_usage_percent"], days=8.5,
                                   seed=3, start_ms=start)
    bad = [b"not a record", b'{"name": "cpu", "value": "high", "timestamp": 1}']
    producer = Producer({"bootstrap.servers": stack.broker})
    for payload in bad:
        producer.produce(stack.input_topic, payload)
    producer.flush(10)
    sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)

    # While the points flow, the rate gauge (points over the last 10 s) is above zero;
    # sampled then, not after the fact.
    rates: list[float] = []

    def processed() -> bool:
        rates.append(total(scrape(port), "vigil_points_per_second"))
        return stack.processed() >= sent

    wait_until(processed, 120, f"{sent} points processed", poll=0.2)
    after = scrape(port)

    assert total(after, "vigil_points_in_total") - total(before, "vigil_points_in_total") == sent
    assert max(rates) > 0
    assert total(after, "vigil_dead_letters_total", stage="parse") - total(
        before, "vigil_dead_letters_total", stage="parse") == len(bad)
    assert total(after, "vigil_state_store_seconds_count") > total(
        before, "vigil_state_store_seconds_count")
    # The detector's own CPU, a part of the process' CPU (its share is a benchmark figure).
    detector_cpu = total(after, "vigil_detector_cpu_seconds_total") - total(
        before, "vigil_detector_cpu_seconds_total")
    assert 0 < detector_cpu <= total(after, "process_cpu_seconds_total")
    events_out = total(after, "vigil_events_out_total")
    assert events_out > total(before, "vigil_events_out_total")
    assert total(after, "vigil_events_out_total", kind="open") >= 1
    # The lag gauge seeing a backlog is checked where the backlog is certain to stay: a batch
    # held while Redis cannot write (tests/test_resilience.py).
    # One lag sample per owned partition (once the tracker has refreshed), and none left
    # once everything is committed.
    def lag_partitions() -> set:
        return {(dict(ls)["topic"], dict(ls)["partition"])
                for (n, ls) in scrape(port) if n == "vigil_consumer_lag"}

    partitions = len(report["kafka_assigned"])  # 4 input + 4 points + 1 feedback
    wait_until(lambda: len(lag_partitions()) == partitions, 30, "a lag sample per owned partition")
    assert {t for t, _ in lag_partitions()} == owned
    wait_until(lambda: total(scrape(port), "vigil_consumer_lag") == 0, 30, "lag back to 0")
    # The rate is over a sliding window: it falls back to 0 when nothing arrives.
    wait_until(lambda: total(scrape(port), "vigil_points_per_second") == 0, 30,
               "points/s back to 0")
