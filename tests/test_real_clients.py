"""Real third-party clients into a real worker: collectd (write_kafka, JSON and Graphite) and
Prometheus (scraping node_exporter, remote_write to the worker; scraping the worker too).

Each test is bounded: the clients run a few seconds, the waits have timeouts. Rates are
checked by a bound a raw counter cannot meet: CPU time per second per CPU is at most 1 s
(Prometheus) or 100 jiffies (collectd), while the raw counters count since boot.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from tests.conftest import Stack, wait_until
from tests.realclients import (
    COLLECTD,
    NODE_EXPORTER,
    PROMETHEUS,
    collectd_config,
    have,
    run_collectd,
    wheel_librdkafka,
)
from tests.record_fixtures import prometheus_config, start_node_exporter, start_prometheus
from tests.test_worker_metrics import health, scrape, total
from vigil.devtools.embedded import free_port
from vigil.series import parse_series
from vigil.streams.remote_write import encode_write_request
from vigil.streams.state import unpack

pytestmark = pytest.mark.integration


def states(stack: Stack) -> dict[str, float]:
    """Every series the worker holds a state for, with its latest value (the open bucket's
    mean, else the last step's value)."""
    keys = list(stack.redis.scan_iter(f"{stack.prefix}state:*", count=1000))
    values = stack.redis.mget(keys) if keys else []
    bank, _ = unpack(values)
    count = bank["bucket_count"]
    latest = np.where(count > 0, bank["bucket_sum"] / np.maximum(count, 1), bank["last_value"])
    skip = len(f"{stack.prefix}state:")
    return {k.decode()[skip:]: float(v) for k, v in zip(keys, latest, strict=True)}


def wait_for_series(stack: Stack, worker, names: set[str], timeout: float = 60,
                    where: str = "") -> dict:
    """The held states once every name in ``names`` has a series — one whose id contains
    ``where`` when given (series of one name arrive in different messages)."""
    def found():
        if not worker.alive():
            pytest.fail("worker died:\n" + worker.log_tail())
        held = states(stack)
        have_names = {parse_series(s)[0] for s in held if where in s}
        return held if names <= have_names else None

    return wait_until(found, timeout, f"series {sorted(names)} ({where}) in Redis")


def wait_web(worker) -> str:
    """The worker's web port, once its server answers."""
    port = worker.env["VIGIL_WEB_PORT"]

    def up():
        if not worker.alive():
            pytest.fail("worker died:\n" + worker.log_tail())
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return True
        except OSError:
            return False

    wait_until(up, 60, "worker web server")
    return port


@pytest.mark.skipif(not have(COLLECTD), reason="collectd-core not installed (.ci/run installs it)")
@pytest.mark.parametrize(
    ("topic_block", "env"),
    [
        # collectd 5.12's default JSON: derive as rates already.
        ("Format JSON", {}),
        # Raw counters (StoreRates false): vigil turns derive into rates.
        ("Format JSON\n    StoreRates false", {"VIGIL_COLLECTD_STORE_RATES": "false"}),
        # Graphite, rates by collectd (its Graphite default is raw counters).
        ('Format Graphite\n    GraphitePrefix "collectd."\n    StoreRates true', {}),
    ],
    ids=["json", "json-raw-counters", "graphite"],
)
def test_collectd_write_kafka_into_the_worker(stack: Stack, tmp_path: Path, topic_block: str,
                                              env: dict) -> None:
    worker = stack.start_worker(**env)
    conf = collectd_config(tmp_path / "collectd.conf", stack.broker,
                           {stack.input_topic: topic_block})
    log = run_collectd(conf, 6, wheel_librdkafka(tmp_path / "lib"))
    assert "write_kafka plugin: handle created" in log, log
    wait_for_series(stack, worker, {"load_shortterm", "interface_if_octets_rx"})
    wait_for_series(stack, worker, {"memory"}, where='type_instance="used"')
    held = wait_for_series(stack, worker, {"cpu"}, where='type_instance="idle"')
    host = 'host="vigil-test"'
    idle = [v for s, v in held.items() if s.startswith("cpu{") and 'type_instance="idle"' in s]
    assert idle and all(0 <= v <= 150 for v in idle), idle  # jiffies/s, not since boot
    assert any(host in s and 'type_instance="used"' in s for s in held if s.startswith("memory"))
    port = worker.env["VIGIL_WEB_PORT"]
    assert total(scrape(port), "vigil_dead_letters_total") == 0


@pytest.mark.skipif(not have(PROMETHEUS, NODE_EXPORTER),
                    reason="prometheus / node_exporter not installed (.ci/run installs them)")
def test_prometheus_remote_write_and_scrape(stack: Stack, tmp_path: Path) -> None:
    worker = stack.start_worker(VIGIL_LAG_REFRESH_S="0.5")
    port = wait_web(worker)
    node_port, prom_port = free_port(), free_port()
    config = prometheus_config(tmp_path / "prometheus.yml", node_port,
                               f"http://127.0.0.1:{port}/api/v1/write",
                               extra_targets=[f"127.0.0.1:{port}"])
    procs = [start_node_exporter(node_port),
             start_prometheus(config, tmp_path / "tsdb", prom_port)]
    try:
        wait_for_series(stack, worker, {"node_load1", "node_memory_MemFree_bytes"}, timeout=90)
        held = wait_for_series(stack, worker, {"node_cpu_seconds_total"}, where='mode="idle"')
        cpu = {s: v for s, v in held.items()
               if s.startswith("node_cpu_seconds_total") and 'mode="idle"' in s}
        assert cpu and all(0 <= v <= 1.5 for v in cpu.values()), cpu  # s/s, not since boot
        samples = scrape(port)
        assert total(samples, "vigil_remote_write_samples_total") > 0
        assert total(samples, "vigil_counter_points_held_total") > 0  # first samples prime
        # The same Prometheus scrapes the worker's own /metrics: the target is up.
        query = f"http://127.0.0.1:{prom_port}/api/v1/query?query=up"

        def worker_up():
            with urllib.request.urlopen(query, timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            return any(r["metric"]["instance"] == f"127.0.0.1:{port}" and r["value"][1] == "1"
                       for r in result)

        wait_until(worker_up, 30, "Prometheus sees the worker's /metrics up")
        # And vigil's own metrics reach vigil through remote_write.
        wait_for_series(stack, worker, {"vigil_points_in_total"}, timeout=30)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_remote_write_refusals_and_a_degraded_input(stack: Stack) -> None:
    """Bounds answer 413/400 with a reason; an input that is mostly dead-lettered turns
    /health to "degraded" with the ratio, and the dead letters are counted by reason."""
    worker = stack.start_worker(VIGIL_REMOTE_WRITE_MAX_BYTES="2000",
                                VIGIL_REMOTE_WRITE_MAX_SERIES="3")
    port = wait_web(worker)
    url = f"http://127.0.0.1:{port}/api/v1/write"
    assert post(url, b"\x00" * 3000)[0] == 413
    status, text = post(url, b"not snappy at all")
    assert status == 400 and "not snappy" in text
    series = [({"__name__": f"m{i}"}, [(1.0, int(time.time() * 1000))]) for i in range(4)]
    status, text = post(url, encode_write_request(series))
    assert status == 400 and "4 series in one request" in text
    assert post(url, encode_write_request(series[:3]))[0] == 204

    producer = Producer({"bootstrap.servers": stack.broker})
    for _ in range(30):  # what collectd would send to a worker expecting Influx lines only
        producer.produce(stack.input_topic, b'{"values":[1],"dsnames":["value"]}')
    producer.flush(10)

    def degraded():
        status, report = health(port)
        return report.get("status") == "degraded" and report

    report = wait_until(degraded, 60, "/health degraded")
    (info,) = report["degraded_inputs"].values()
    assert info["dead_lettered_ratio"] > 0.5 and info["records"] >= 30
    assert total(scrape(port), "vigil_dead_letters_total", stage="parse") >= 30
    assert "were dead-lettered (format auto)" in worker.log_tail(20_000)


@pytest.mark.skipif(not have("kcat"), reason="kcat not installed (.ci/run installs it)")
def test_kcat_produces_each_text_format_into_the_worker(stack: Stack, tmp_path: Path) -> None:
    """kcat (Debian's, on the wheel's librdkafka) sends one record per line: Telegraf's JSON,
    Influx, Graphite, vigil's JSON with a counter, and one bad record (dead-lettered)."""
    ts = int(time.time())
    lines = [
        json.dumps({"fields": {"usage_idle": 97.5, "online": True}, "name": "cpu",
                    "tags": {"host": "k1"}, "timestamp": ts}),
        f"mem,host=k1 used_percent=41.5 {ts * 10**9}",
        f"servers.k1.disk.used 12 {ts}",
        json.dumps({"name": "jobs_total", "value": 10, "timestamp": ts, "type": "counter",
                    "labels": {"host": "k1", "ok": True}}),
        "this is not a metric at all, is it",
    ]
    (tmp_path / "records.txt").write_text("\n".join(lines) + "\n")
    worker = stack.start_worker()
    env = {"LD_LIBRARY_PATH": str(wheel_librdkafka(tmp_path / "lib")), "PATH": "/usr/bin:/bin"}
    subprocess.run(["kcat", "-P", "-b", stack.broker, "-t", stack.input_topic, "-l",
                    str(tmp_path / "records.txt")], env=env, check=True, timeout=60)
    held = wait_for_series(stack, worker, {"cpu_usage_idle", "cpu_online", "mem_used_percent",
                                           "servers_k1_disk_used"})
    assert held['cpu_usage_idle{host="k1"}'] == 97.5
    assert 'jobs_total{host="k1",ok="true"}' not in held  # a counter's first sample primes
    port = worker.env["VIGIL_WEB_PORT"]
    wait_until(lambda: total(scrape(port), "vigil_dead_letters_total") == 1, 30,
               "the bad record dead-lettered")
    assert total(scrape(port), "vigil_counter_points_held_total") == 1
