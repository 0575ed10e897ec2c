"""History storage against a real ClickHouse server (Debian's 18.16 in CI) and the machine's
PostgreSQL (127.0.0.1:5432, ``VIGIL_TEST_POSTGRES_URL``): schema and its migration, writes and
the read API, retention, the buffered writer while the server is down, the worker with the
store stopped mid-stream, backfill and export. One suite: every storage test runs on both
stores (``store_kind`` parameter).

Every test works in a database (ClickHouse, ``clickhouse://…/t_<random>``) or a schema
(PostgreSQL, ``postgresql://…?schema=t_<random>``) of its own, dropped after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace as NS

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.conftest import Stack, wait_until
from tests.tcpproxy import TcpProxy
from vigil.cli import app as cli
from vigil.detectors.resample import step_of
from vigil.devtools.embedded import TopicCollector, start_clickhouse
from vigil.devtools.replay import replay
from vigil.lab.datasets import load_dataset, write_telemetry
from vigil.lab.synthetic import generate_telemetry
from vigil.sinks import postgres
from vigil.sinks.clickhouse import (
    SCHEMA_VERSION,
    TABLES,
    ClickHouseStore,
)
from vigil.sinks.postgres import PostgresStore
from vigil.sinks.store import HistoryStore, HistoryWriter, store_for_url

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z, a step boundary


POSTGRES = os.environ.get("VIGIL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
URL_ENV = {"clickhouse": "VIGIL_CLICKHOUSE_URL", "postgres": "VIGIL_POSTGRES_URL"}
ClickHouseWriter = HistoryWriter  # the tests' old name


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The machine's PostgreSQL (fails, never skips, when it does not answer)."""
    import psycopg

    try:
        psycopg.connect(POSTGRES, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES} does not answer (set VIGIL_TEST_POSTGRES_URL): "
                    f"{exc}")
    return POSTGRES


@pytest.fixture(params=["clickhouse", "postgres"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def base_url(request, store_kind: str) -> str:
    """The session's server of the store under test."""
    return request.getfixturevalue(f"{store_kind}_url")


def _url(base: str) -> str:
    """A database (ClickHouse) or schema (PostgreSQL) of its own on ``base``'s server."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    if base.startswith("clickhouse"):
        return base.rsplit("/", 1)[0] + f"/{name}"
    return f"{base}{'&' if '?' in base else '?'}schema={name}"


def _drop(store: HistoryStore) -> None:
    store.drop()
    store.close()


@pytest.fixture
def store(base_url: str):
    s = store_for_url(_url(base_url))
    s.ensure_schema()
    try:
        yield s
    finally:
        _drop(s)


class _Outage:
    """A store the test can take down and bring back: a ClickHouse server of its own, or the
    machine's PostgreSQL reached through a TCP proxy that is cut and restored."""

    def __init__(self, kind: str) -> None:
        name = f"o_{uuid.uuid4().hex[:8]}"
        self.kind = kind
        if kind == "clickhouse":
            self.server = start_clickhouse()
            self.url = self.server.url.replace("/vigil", f"/{name}")
            self.stop, self.restart = self.server.stop, self.server.restart
        else:
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(POSTGRES)
            self.proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            self.url = urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{self.proxy.port}",
                                   parts.path, f"schema={name}", ""))
            self.direct = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}schema={name}"
            self.stop, self.restart = self.proxy.stop, self.proxy.restart

    def store(self, **kwargs) -> HistoryStore:
        if self.kind == "clickhouse":
            return ClickHouseStore(self.url, **kwargs)
        return PostgresStore(self.url)

    def close(self) -> None:
        if self.kind == "clickhouse":
            self.server.stop()
            shutil.rmtree(self.server.data_dir, ignore_errors=True)
        else:
            self.proxy.stop()
            _drop(PostgresStore(self.direct))


def _results(series_rows: list[list[tuple]]):
    """A StepResults-like batch: per series a list of (ts_ms, value, expected, z, type)."""
    index, ts, value, expected, z, kind = [], [], [], [], [], []
    for k, rows in enumerate(series_rows):
        for t, v, e, score, a in rows:
            index.append(k)
            ts.append(t)
            value.append(v)
            expected.append(e)
            z.append(score)
            kind.append(a)
    expected = np.array(expected, float)
    return NS(
        steps=NS(index=np.array(index), ts_ms=np.array(ts, np.int64), value=np.array(value)),
        expected=expected, lower=expected - 1.0, upper=expected + 1.0, z=np.array(z),
        anomaly_type=np.array(kind),
    )


def _event(series: str, incident: str, kind: str, ts_ms: int, score: float = 7.0,
           severity: str = "warning") -> dict:
    return {
        "event_id": f"{incident}-{kind}-{ts_ms}", "incident_id": incident, "kind": kind,
        "series": series, "name": series.split("{")[0], "labels": {"host": "db-1"},
        "ts": "", "ts_ms": ts_ms, "value": 9.0, "expected": 1.0, "lower": 0.0, "upper": 2.0,
        "score": score, "severity": severity, "anomaly_type": "point",
        "detectors": ["seasonal"], "reason": "spike",
    }


async def _write(writer: ClickHouseWriter) -> None:
    await writer.flush_with_retry(stop_after=20)


# --------------------------------------------------------------------------- schema


def test_schema_is_created_at_the_latest_version_and_is_idempotent(store: HistoryStore):
    latest = {"clickhouse": SCHEMA_VERSION, "postgres": postgres.SCHEMA_VERSION}[store.kind]
    assert (SCHEMA_VERSION, postgres.SCHEMA_VERSION) == (5, 4)
    assert store.schema_version() == latest
    assert set(store.tables()) >= {"steps", "events", "incidents", "feedback", "series",
                                    "labels", "schema_version"}
    assert store.ensure_schema() == []  # nothing left to apply
    if store.kind == "clickhouse":
        engines = dict(store.execute(
            "SELECT name, engine FROM system.tables WHERE database = %(d)s",
            {"d": store.database}))
        assert engines["incidents"] == "ReplacingMergeTree"
    else:
        kinds = dict(store.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname = %s", (store.schema,)))
        assert {t: kinds[t] for t in TABLES} == {
            "steps": "p", "events": "p", "incidents": "p", "feedback": "p", "labels": "p",
            "series": "r"}  # partitioned by month, but the catalogue
        # Every column of the one column list, in its order.
        for table, columns in TABLES.items():
            got = store.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s ORDER BY ordinal_position", (store.schema, table))
            assert tuple(c for (c,) in got) == columns


def test_postgres_migrates_from_v1_keeping_the_data(postgres_url: str):
    s = PostgresStore(_url(postgres_url))
    try:
        assert s.ensure_schema(target=1) == [1]
        series = 'cpu{host="db-1"}'
        s.insert("steps", [(series, T0 // 1000, 1.0, 1.0, 0.0, 2.0, 0.1, 0)])
        # An event as version 1 stored it (no column a later version adds).
        s._ensure_partitions("events", [T0 // 1000])
        s.execute("INSERT INTO {db}.events (series, ts, event_id, ts_ms) "
                  "VALUES (%s, to_timestamp(%s), %s, %s)",
                  (series, T0 // 1000, f"i1-open-{T0}", T0))
        assert s.ensure_schema() == [2, 3, 4]
        assert s.schema_version() == 4 and s.ensure_schema() == []
        assert s.series_steps(series, T0, T0)["value"] == [1.0]
        assert [e["event_id"] for e in s.recent_events(5)] == [f"i1-open-{T0}"]
        indexes = {name for (name,) in s.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (s.schema,))}
        assert {"events_incident", "incidents_opened"} <= indexes
    finally:
        _drop(s)


def test_postgres_adds_a_new_column_in_a_migration(postgres_url: str, monkeypatch):
    # What adding a column (as ClickHouse v5's events.forecast did) takes: its name in TABLES,
    # its definition in PG_COLUMNS, a migration add_columns(table, column).
    monkeypatch.setitem(TABLES, "events", (*TABLES["events"], "extra"))
    monkeypatch.setitem(postgres.PG_COLUMNS, "extra", "text NOT NULL DEFAULT ''")
    monkeypatch.setitem(postgres.MIGRATIONS, 5, [postgres.add_columns("events", "extra")])
    s = PostgresStore(_url(postgres_url))
    try:
        assert s.ensure_schema(target=4) == [1, 2, 3, 4]
        columns = lambda: [c for (c,) in s.execute(  # noqa: E731
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'events' ORDER BY ordinal_position", (s.schema,))]
        assert "extra" not in columns()  # version 1 leaves out what a later one adds
        s._ensure_partitions("events", [int(time.time())])
        s.execute("INSERT INTO {db}.events (series, ts, event_id) VALUES ('cpu', now(), 'e')")
        assert s.ensure_schema(target=5) == [5]
        assert columns()[-1] == "extra"
        assert s.execute("SELECT event_id, extra FROM {db}.events") == [("e", "")]
    finally:
        _drop(s)


def test_migration_from_v1_keeps_the_data_and_fills_the_new_columns(clickhouse_url: str):
    s = ClickHouseStore(_url(clickhouse_url))
    try:
        assert s.ensure_schema(target=1) == [1]
        assert "series" not in s.tables()
        series = 'cpu{host="db-1"}'
        # Rows as version 1 wrote them (no anomalous column): one inside its band, one out.
        s.execute("INSERT INTO {db}.steps (series, ts, value, expected, lower, upper, score) "
                  "VALUES", [(series, T0 // 1000, 1.0, 1.0, 0.0, 2.0, 0.1),
                             (series, T0 // 1000 + 60, 9.0, 1.0, 0.0, 2.0, 8.0)])
        v1_columns = ", ".join(c for c in TABLES["events"] if c not in ("change", "z", "forecast"))
        s.execute(f"INSERT INTO {{db}}.events ({v1_columns}) VALUES",
                  [_row_of(_event(series, "i1", "open", T0 + 60_000))[:-3]])

        assert s.ensure_schema() == [2, 3, 4, 5]
        assert s.schema_version() == 5
        steps = s.series_steps(series, T0, T0 + 60_000)
        assert steps["value"] == [1.0, 9.0] and steps["z"] == [0.1, 8.0]
        assert steps["anomalous"] == [0, 1]  # v1 rows: outside the band
        assert s.execute("SELECT count() FROM {db}.events")[0][0] == 1
        assert s.recent_events(1)[0]["change"] == ""  # v3's column, on a v1 row
        assert s.recent_events(1)[0]["z"] == 0.0  # and v4's
        assert s.recent_events(1)[0]["forecast"] is None  # and v5's
        assert s.execute("SELECT series, name, label_keys, label_values, first_seen_ms, "
                         "last_seen_ms FROM {db}.series") == [
            (series, "cpu", ["host"], ["db-1"], T0, T0 + 60_000)]
    finally:
        s.execute(f"DROP DATABASE IF EXISTS {s.database}")
        s.close()


def _row_of(event: dict) -> tuple:
    from vigil.sinks.clickhouse import event_row

    return event_row(event)


def test_a_forecast_event_keeps_its_forecast(store: ClickHouseStore):
    forecast = {"limit": 100.0, "side": "upper", "rate_per_h": 2.1, "hours": 5.2,
                "hours_low": 4.1, "hours_high": None, "eta_ms": T0 + 18_720_000}
    event = {**_event('disk_used_percent{host="db-1"}', "f1", "open", T0),
             "anomaly_type": "forecast", "forecast": forecast}
    store.insert("events", [_row_of(event), _row_of(_event("cpu", "i2", "open", T0 - 1))])
    newest, older = store.recent_events(2)
    assert newest["forecast"] == forecast and newest["anomaly_type"] == "forecast"
    assert older["forecast"] is None


# --------------------------------------------------------------------------- round trip


async def test_writes_round_trip_through_the_read_api(store: HistoryStore):
    a, b = 'cpu{host="db-1"}', 'disk{host="db-1"}'
    writer = ClickHouseWriter(store)
    steps = _results([
        [(T0 + i * 60_000, float(i), float(i), 0.5, 0) for i in range(5)],
        [(T0 + i * 60_000, 50.0, 50.0, 0.0, 0) for i in range(3)]
        + [(T0 + 3 * 60_000, 90.0, 50.0, 9.0, 1)],
    ])
    writer.add_steps([a, b], steps)
    writer.add_events([_event(b, "inc-b", "open", T0 + 3 * 60_000, 9.0)])
    await _write(writer)
    # A later batch: the incident escalates, then resolves; feedback arrives.
    writer.add_events([_event(b, "inc-b", "update", T0 + 4 * 60_000, 14.0, "critical")])
    writer.add_events([_event(b, "inc-b", "resolve", T0 + 9 * 60_000, 1.0)])
    writer.add_feedback([{
        "feedback_id": "f1", "action": "acknowledge", "incident_id": "inc-b", "series": b,
        "notification_id": "n1", "receiver": "oncall", "user_id": 7, "user_name": "ann",
        "chat_id": 1, "ts_ms": T0 + 5 * 60_000, "ts": "", "source": "telegram"}])
    await _write(writer)
    # A replay of the first batch (Kafka is at-least-once) must not show twice.
    writer.add_steps([a, b], steps)
    writer.add_events([_event(b, "inc-b", "open", T0 + 3 * 60_000, 9.0)])
    await _write(writer)
    assert writer.written["steps"] == 18 and writer.dropped == 0

    got = store.series_steps(b, T0, T0 + 10 * 60_000)
    assert got["ts_ms"] == [T0 + i * 60_000 for i in range(4)]
    assert got["value"] == [50.0, 50.0, 50.0, 90.0]
    assert got["lower"] == [49.0] * 4 and got["upper"] == [51.0] * 4
    assert got["z"] == [0.0, 0.0, 0.0, 9.0] and got["anomalous"] == [0, 0, 0, 1]
    assert len(store.series_steps(a, T0 + 60_000, T0 + 3 * 60_000)["ts_ms"]) == 3

    incident = store.incident("inc-b")
    assert incident["opened_ms"] == T0 + 3 * 60_000
    assert incident["resolved_ms"] == T0 + 9 * 60_000
    assert incident["severity"] == "critical" and incident["peak_score"] == 14.0
    assert incident["labels"] == {"host": "db-1"}
    assert [e["kind"] for e in incident["events"]] == ["open", "update", "resolve"]
    assert [(f["action"], f["user_name"], f["ts_ms"]) for f in incident["feedback"]] == [
        ("acknowledge", "ann", T0 + 5 * 60_000)]
    assert incident["feedback"][0]["ts"] == "2023-11-15T00:05:00Z"
    assert store.incident("nope") is None

    recent = store.recent_events(2)
    assert [e["kind"] for e in recent] == ["resolve", "update"]
    assert "context" not in recent[0] and recent[0]["labels"] == {"host": "db-1"}

    summary = store.series_summary(T0)
    assert [s["series"] for s in summary] == [b, a]  # most anomalous first
    assert summary[0]["anomaly_count"] == 1
    assert summary[0]["last_anomaly_ms"] == T0 + 3 * 60_000
    assert summary[0]["last_seen_ms"] == T0 + 3 * 60_000
    assert summary[1]["anomaly_count"] == 0 and summary[1]["last_anomaly_ms"] is None
    assert summary[1]["labels"] == {"host": "db-1"} and summary[1]["name"] == "cpu"
    assert store.series_summary(T0 + DAY_MS)[0]["anomaly_count"] == 0


async def test_an_incident_seen_by_a_fresh_store_keeps_its_opening(store: HistoryStore):
    b = 'disk{host="db-1"}'
    writer = ClickHouseWriter(store)
    writer.add_events([_event(b, "inc-x", "open", T0, 9.0)])
    await _write(writer)
    # Another worker (empty cache) sees the resolve.
    other = ClickHouseWriter(store_for_url(store.url))
    other.add_events([_event(b, "inc-x", "resolve", T0 + 600_000, 1.0)])
    await _write(other)
    incident = store.incident("inc-x")
    assert (incident["opened_ms"], incident["resolved_ms"]) == (T0, T0 + 600_000)
    assert incident["peak_score"] == 9.0 and len(incident["events"]) == 2


# --------------------------------------------------------------------------- retention


async def test_retention_drops_whole_months_older_than_the_bound(store: HistoryStore):
    now = int(datetime(2024, 6, 15, tzinfo=timezone.utc).timestamp() * 1000)
    months = [datetime(2024, m, 10, tzinfo=timezone.utc) for m in (2, 3, 4, 5, 6)]
    writer = ClickHouseWriter(store)
    writer.add_steps(["cpu"], _results([[(int(d.timestamp() * 1000), 1.0, 1.0, 0.0, 0)
                                         for d in months]]))
    writer.add_events([_event("cpu", f"i{d.month}", "open", int(d.timestamp() * 1000))
                       for d in months])
    await _write(writer)
    # 60 days before 2024-06-15 is 2024-04-16: February and March are wholly older; April
    # still has younger days and stays.
    dropped = store.drop_expired(60, now_ms=now)
    assert sorted(dropped) == sorted(f"{t}/{m}" for t in ("steps", "events", "incidents")
                                     for m in (202402, 202403))
    left = store.series_steps("cpu", 0, now)["ts_ms"]
    assert [datetime.fromtimestamp(t / 1000, timezone.utc).month for t in left] == [4, 5, 6]
    assert len(store.recent_events(10)) == 3
    if store.kind == "postgres":  # the partitions themselves are gone
        assert {m for _, m in store.partitions()} == {202404, 202405, 202406}
    assert store.drop_expired(60, now_ms=now) == []
    assert store.drop_expired(0, now_ms=now) == []  # 0 = keep everything


# --------------------------------------------------------------------------- writer


async def test_writer_bounds_its_buffer_while_the_store_is_down_and_catches_up(store_kind):
    server = _Outage(store_kind)
    try:
        store = server.store(send_receive_timeout=5)
        drops = []
        writer = ClickHouseWriter(store, batch_rows=50, flush_s=0.1, max_rows=300,
                                  on_drop=drops.append)
        task = asyncio.create_task(writer.run())

        def batch(k: int):
            return _results([[(T0 + (k * 10 + i) * 60_000, float(k), 0.0, 0.0, 0)
                              for i in range(10)]])

        for k in range(10):
            writer.add_steps(["cpu"], batch(k))
        # Every row written, the series catalogue's included (it follows the steps).
        await _wait(lambda: writer.written["steps"] == 100 and writer.pending == 0, 20)

        server.stop()
        started = time.perf_counter()
        for k in range(10, 60):  # 50 batches: 10 steps + 1 series row each = 550 rows
            writer.add_steps(["cpu"], batch(k))
            await asyncio.sleep(0.01)
        # Adding never waits for the dead server, and the bound holds.
        assert time.perf_counter() - started < 5
        assert writer.pending == 300
        await _wait(lambda: writer.errors > 0, 20)
        assert writer.dropped == sum(drops) == 550 - 300

        server.restart()
        await _wait(lambda: writer.buffered == 0 and writer.written["steps"] > 100, 60)
        task.cancel()
        stored = store.count("steps")
        assert stored == writer.written["steps"]
        # The newest rows were kept: of the 300 buffered rows at most 50 are series rows
        # (one a batch), the rest the newest steps, the last one included.
        assert 250 <= stored - 100 <= 300
        newest = store.series_steps("cpu", T0, T0 + DAY_MS)["ts_ms"][-1]
        assert newest == T0 + 599 * 60_000
        store.close()
    finally:
        server.close()


async def test_rows_the_server_refuses_are_counted_and_do_not_block_later_writes(
        store: HistoryStore):
    writer = ClickHouseWriter(store)
    bad = ("f1", "mute", "i1", "cpu", "n1", "oncall", "not a number", "ann", 1, T0 // 1000,
           T0, "telegram")
    writer.add("feedback", [bad])
    # 20,000 new series in one flush: their catalogue lookup is split under the server's
    # query size limit.
    names = [f'bench_metric{{host="h{i:05d}",metric="m{i % 7}"}}' for i in range(20_000)]
    writer.add_steps(names, _results([[(T0, 1.0, 1.0, 0.0, 0)]] * 20_000))
    await _write(writer)
    assert writer.dropped == 1 and writer.errors == 1
    assert writer.written["steps"] == 20_000 and writer.buffered == 0
    assert _count(store, "series") == 20_000
    writer.add_feedback([{"feedback_id": "f2", "action": "mute", "incident_id": "i1",
                          "ts_ms": T0}])
    await _write(writer)
    assert _count(store, "feedback") == 1


async def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- the worker


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.chaos
def test_worker_keeps_detecting_while_the_store_is_down(stack: Stack, store_kind: str, chaos):
    server = _Outage(store_kind)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    try:
        url = server.url
        port = int(stack.env()["VIGIL_WEB_PORT"])
        bound = 15_000  # the first 30 % (~12k steps) fits, the rest (~28k) does not
        worker = stack.start_worker(
            VIGIL_WEB_PORT=str(port), **{URL_ENV[store_kind]: url},
            VIGIL_CLICKHOUSE_BATCH_ROWS="500", VIGIL_CLICKHOUSE_FLUSH_S="0.2",
            VIGIL_CLICKHOUSE_BUFFER_MAX_ROWS=str(bound), VIGIL_FEEDBACK_TOPIC=stack.feedback_topic,
        )
        now = time.time_ns() // 1_000_000
        start = now - 14 * DAY_MS
        start -= start % 60_000
        telemetry = generate_telemetry(hosts=1, metrics=["cpu_usage_percent", "load1"],
                                       days=14, seed=3, start_ms=start)
        first, second = _halves(telemetry, 0.3)
        sent = replay(first, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        store = server.store()
        wait_until(lambda: _count(store, "steps") >= sent * 0.95
                   and _metric(port, "vigil_clickhouse_buffer_rows") == 0, 60,
                   "the first half stored")
        assert _metric(port, "vigil_clickhouse_rows_written_total") >= sent * 0.95
        before = _count(store, "steps")
        events_before = len(collector.values(stack.anomalies_topic))

        server.stop()
        sent += replay(second, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)  # detection goes on with ClickHouse down
        assert worker.alive()
        wait_until(lambda: _metric(port, "vigil_clickhouse_rows_dropped_total") > 0, 30,
                   "dropped rows counted in /metrics")
        assert _metric(port, "vigil_clickhouse_buffer_rows") <= bound
        assert _metric(port, "vigil_clickhouse_errors_total") > 0
        wait_until(lambda: len(collector.values(stack.anomalies_topic)) > events_before, 30,
                   "anomaly events from the second half")
        dropped = _metric(port, "vigil_clickhouse_rows_dropped_total")
        buffered = _metric(port, "vigil_clickhouse_buffer_rows")

        server.restart()
        wait_until(lambda: _metric(port, "vigil_clickhouse_buffer_rows") == 0, 60,
                   "the buffer written after the restart")
        after = _count(store, "steps")
        steps_second = sum(len(s) for s in second.series.values())
        assert after > before  # the kept rows arrived ...
        assert after - before <= bound  # ... no more than the bound ...
        assert after - before + dropped >= steps_second  # ... and the rest was counted
        assert buffered > 0
        events = [orjson.loads(v) for v in collector.values(stack.anomalies_topic)]
        stored_events = {r[0] for r in store.execute("SELECT event_id FROM {db}.events")}
        first_half = {e["event_id"] for e in events if e["ts_ms"] < int(second_start(second))}
        assert first_half <= stored_events
        # Detection loses nothing; history drops (and counts) what overflows its bound.
        chaos(unit="points", sent=sent, expected=sent, lost=max(sent - stack.processed(), 0),
              duplicated=0)
        store.close()
    finally:
        collector.close()
        server.close()


def second_start(telemetry) -> int:
    return min(int(s.ts_ms[0]) for s in telemetry.series.values())


def _count(store: HistoryStore, table: str) -> int:
    try:
        return store.count(table)
    except Exception:  # noqa: BLE001 - not created yet, or the server still down
        return 0


def _halves(telemetry, fraction: float):
    from copy import copy

    first_ts = min(int(s.ts_ms[0]) for s in telemetry.series.values())
    last_ts = max(int(s.ts_ms[-1]) for s in telemetry.series.values())
    cut = first_ts + int((last_ts - first_ts) * fraction)
    out = []
    for keep in (lambda ts: ts < cut, lambda ts: ts >= cut):
        part = copy(telemetry)
        part.series = {sid: type(s)(s.name, s.labels, s.ts_ms[keep(s.ts_ms)],
                                    s.values[keep(s.ts_ms)])
                       for sid, s in telemetry.series.items()}
        out.append(part)
    return out


def test_feedback_from_the_notifier_topic_is_stored(stack: Stack, base_url: str,
                                                    store_kind: str):
    from confluent_kafka import Producer

    url = _url(base_url)
    worker = stack.start_worker(**{URL_ENV[store_kind]: url},
                                VIGIL_FEEDBACK_TOPIC=stack.feedback_topic,
                                VIGIL_CLICKHOUSE_FLUSH_S="0.2")
    producer = Producer({"bootstrap.servers": stack.broker})
    record = {"feedback_id": "fb-1", "action": "not_anomaly", "incident_id": "inc-9",
              "series": "cpu", "notification_id": "n", "receiver": "oncall", "user_id": 5,
              "user_name": "bob", "chat_id": 2, "ts_ms": T0, "ts": "2023-11-15T00:00:00Z",
              "source": "telegram"}
    producer.produce(stack.feedback_topic, key=b"inc-9", value=b"not json")
    producer.produce(stack.feedback_topic, key=b"inc-9", value=orjson.dumps(record))
    producer.flush(10)
    store = store_for_url(url)
    try:
        wait_until(lambda: _count(store, "feedback") == 1, 60, "the feedback row")
        assert store.execute("SELECT feedback_id, action, user_name, ts_ms FROM "
                             "{db}.feedback") == [("fb-1", "not_anomaly", "bob", T0)]
        assert worker.alive()  # the junk record was skipped
    finally:
        _drop(store)


# --------------------------------------------------------------------------- history in/out


def test_backfill_then_export_round_trips_as_parquet_and_csv(base_url: str, tmp_path):
    url = _url(base_url)
    telemetry = generate_telemetry(hosts=1, metrics=["cpu_usage_percent", "load1"], days=8,
                                   seed=5, start_ms=T0, anomalies_per_series=3)
    folder = write_telemetry(telemetry, tmp_path / "month")
    runner = CliRunner()
    result = runner.invoke(cli, ["backfill", str(folder), "--store", url])
    assert result.exit_code == 0, result.output
    dataset = load_dataset(folder)
    store = store_for_url(url)
    try:
        assert _count(store, "steps") >= dataset.n_points
        assert _count(store, "labels") == len(dataset.labels) > 0
        assert _count(store, "events") > 0 and _count(store, "incidents") > 0
        # Running it again replaces, it does not duplicate.
        steps = _count(store, "steps")
        assert runner.invoke(cli, ["backfill", str(folder), "--store", url]).exit_code == 0
        assert _count(store, "steps") == steps

        cpu = next(s for s in dataset.series if s.startswith("cpu"))
        since = datetime.fromtimestamp(T0 / 1000, timezone.utc).isoformat()
        out = tmp_path / "cpu.parquet"
        result = runner.invoke(cli, ["export", "--series", "cpu_*", "--since", since,
                                     "--format", "parquet", "--out", str(out),
                                     "--store", url])
        assert result.exit_code == 0, result.output
        table = pq.read_table(out)
        assert str(table.schema.field("timestamp").type) == "timestamp[ms, tz=UTC]"
        assert [str(table.schema.field(c).type) for c in ("value", "series", "label")] == [
            "double", "string", "int8"]
        assert set(table.column("series").to_pylist()) == {cpu}
        ts = table.column("timestamp").cast("int64").to_numpy()
        source = dataset.series[cpu]
        # The generator's 1-minute points are the steps (gaps left out on both sides).
        common, mine, theirs = np.intersect1d(ts, source.ts_ms, return_indices=True)
        assert len(common) >= 0.95 * len(source)
        np.testing.assert_allclose(table.column("value").to_numpy()[mine],
                                   source.values[theirs])
        labelled = np.zeros(len(source), bool)
        for lab in dataset.labels:
            if lab.series == cpu:
                labelled |= (source.ts_ms >= lab.start_ms) & (source.ts_ms <= lab.end_ms)
        assert (table.column("label").to_numpy()[mine] == labelled[theirs]).all()
        assert labelled.any()
        # The lab's Parquet reader gives the same series back.
        again = load_dataset(out)
        assert list(again.series) == [cpu]
        np.testing.assert_array_equal(again.series[cpu].ts_ms, ts)
        assert {(lab.start_ms, lab.end_ms) for lab in again.labels} and all(
            lab.series == cpu for lab in again.labels)

        csv_out = tmp_path / "all.csv"
        result = runner.invoke(cli, ["export", "--series", cpu, "--series", "load1*",
                                     "--since", since, "--until", "2023-11-17T00:00:00Z",
                                     "--format", "csv", "--out", str(csv_out),
                                     "--store", url])
        assert result.exit_code == 0, result.output
        back = pacsv.read_csv(csv_out)
        assert set(back.column("series").to_pylist()) == set(dataset.series)
        stamps = back.column("timestamp").cast(pa.timestamp("ms", tz="UTC")).cast("int64")
        assert stamps.to_numpy().max() == T0 + 2 * DAY_MS  # --until is inclusive
        assert stamps.to_numpy().min() == T0
    finally:
        _drop(store)


def test_history_loads_as_the_same_dataset_as_the_files(base_url: str, store_kind: str,
                                                         tmp_path):
    from vigil.lab.history import load_history
    from vigil.streams.backfill import backfill

    url = _url(base_url)
    dataset = load_dataset("../shared/data/nab-dev")
    chosen = list(dict.fromkeys(lab.series for lab in dataset.labels))[:3]
    small = type(dataset)({k: dataset.series[k] for k in chosen},
                          [lab for lab in dataset.labels if lab.series in chosen], "nab")
    assert len(small.labels) >= 3
    backfill(small, url, step_s=300)
    loaded = load_history(url, ["*"], 0)
    try:
        assert loaded.source == store_kind
        assert set(loaded.series) == set(small.series)
        for sid, s in small.series.items():
            got = loaded.series[sid]
            assert (got.name, got.labels) == (s.name, s.labels)
            # History holds resampled steps, stamped with their grid time (one point a step).
            np.testing.assert_array_equal(got.ts_ms, step_of(s.ts_ms, 300_000))
            np.testing.assert_allclose(got.values, s.values)
        def key(lab, snap=0):
            return (lab.series, step_of(lab.start_ms, snap) if snap else lab.start_ms,
                    step_of(lab.end_ms, snap) if snap else lab.end_ms, lab.kind, lab.type)

        assert sorted(map(key, loaded.labels)) == sorted(key(lab, 300_000)
                                                         for lab in small.labels)
        result = CliRunner().invoke(cli, ["evaluate", "--store", url, "--detectors",
                                          "online", "--protocol", "nab",
                                          "--out", str(tmp_path / "lab")])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "lab" / "metrics.json").is_file()
    finally:
        _drop(store_for_url(url))


def test_a_graceful_stop_writes_what_is_buffered(stack: Stack, base_url: str,
                                                 store_kind: str):
    url = _url(base_url)
    # Nothing is flushed by size or time during the run: only the stop writes the rows.
    worker = stack.start_worker(**{URL_ENV[store_kind]: url}, VIGIL_CLICKHOUSE_FLUSH_S="600",
                                VIGIL_CLICKHOUSE_BATCH_ROWS="10000000",
                                VIGIL_FEEDBACK_TOPIC=stack.feedback_topic)
    telemetry = generate_telemetry(hosts=1, metrics=["load1"], days=1, seed=4,
                                   start_ms=T0)
    sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
    stack.wait_processed(sent, worker)
    store = store_for_url(url)
    try:
        assert _count(store, "steps") == 0
        assert worker.stop() == 0
        assert _count(store, "steps") >= sent * 0.95
    finally:
        _drop(store)


# --------------------------------------------------------------------------- settings


def test_settings_take_one_store_and_never_print_its_password(monkeypatch):
    from pydantic import ValidationError

    from vigil.redact import describe_validation_error
    from vigil.sinks.store import open_store
    from vigil.streams.settings import Settings

    for name in ("VIGIL_CLICKHOUSE_URL", "VIGIL_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    pg = "postgresql://vigil:PGSECRET42@db:5432/vigil?schema=history"
    settings = Settings(postgres_url=pg)
    assert settings.store_url == pg and "PGSECRET42" in settings.secrets()
    assert isinstance(open_store(settings), PostgresStore)
    assert open_store(Settings()) is None  # storage off
    with pytest.raises(ValidationError) as both:
        Settings(postgres_url=pg, clickhouse_url="clickhouse://default:CHSECRET42@ch:9000/v")
    text = describe_validation_error(both.value)
    assert "not both" in text and "SECRET42" not in text
    query = Settings(postgres_url="postgresql://vigil@db/vigil?password=PGSECRET43&schema=h")
    assert "PGSECRET43" in query.secrets()
    from vigil.redact import redact_url

    assert "PGSECRET43" not in redact_url(query.postgres_url)  # what logs and errors show
    with pytest.raises(ValidationError) as scheme:
        Settings(postgres_url="mysql://vigil:PGSECRET42@db/vigil")
    text = describe_validation_error(scheme.value)
    assert "postgresql://" in text and "PGSECRET42" not in text


# --------------------------------------------------------------------------- notifier state


async def test_silences_and_acknowledgements_survive_a_redis_wipe(postgres_url: str,
                                                                  redis_url: str):
    import redis.asyncio as aioredis

    from vigil.sinks.alerts import Silence
    from vigil.sinks.delivery import NotifierStore
    from vigil.sinks.postgres import NotifierState

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pg = PostgresStore(_url(postgres_url))
    client = aioredis.from_url(redis_url)
    try:
        store = NotifierStore(client, prefix, NotifierState(pg))
        now = int(time.time() * 1000)
        silence = await store.add_silence(Silence(matchers={"host": "db-5"}, starts_ms=now,
                                                  ends_ms=now + 3_600_000, created_by="ann"))
        record = {"severity_rank": 2, "acked_by": "ann", "acked_ms": now, "refs": {"t": 1}}
        await store.put_incident("oncall", "inc-1", record)
        assert pg.count("notifier_state") == 2

        # Redis loses everything (FLUSHDB, a new instance): a fresh notifier still knows.
        wiped = [k async for k in client.scan_iter(match=f"{prefix}*")]
        await client.delete(*wiped)
        again = NotifierStore(client, prefix, NotifierState(PostgresStore(pg.url)))
        assert [s.id for s in await again.silences()] == [silence.id]
        assert (await again.get_incident("oncall", "inc-1")) == record
        assert await again.get_incident("oncall", "inc-2") is None
        # ... and Redis has them back.
        assert await client.exists(f"{prefix}notify:incident:oncall:inc-1")
        assert await client.hexists(f"{prefix}notify:silences", silence.id)

        # Expired a week ago: gone from both.
        await again.add_silence(Silence(matchers={"host": "db-6"}, id="old", starts_ms=0,
                                        ends_ms=now - 8 * DAY_MS))
        assert [s.id for s in await again.silences()] == [silence.id]
        assert pg.count("notifier_state") == 2

        # PostgreSQL unreachable: Redis alone, nothing fails.
        down = NotifierStore(client, prefix, NotifierState(PostgresStore(
            "postgresql://postgres@127.0.0.1:1/test?schema=nowhere", connect_timeout=1)))
        await down.put_incident("oncall", "inc-3", record)
        assert await down.get_incident("oncall", "inc-3") == record
        assert [s.id for s in await down.silences()] == [silence.id]
    finally:
        leftover = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if leftover:
            await client.delete(*leftover)
        await client.aclose()
        _drop(pg)


async def test_taught_patterns_kept_in_postgres_survive_a_redis_wipe(postgres_url: str,
                                                                    redis_url: str):
    import redis.asyncio as aioredis

    from vigil.detectors.teaching import Pattern, taught_patterns
    from vigil.sinks.postgres import NotifierState
    from vigil.streams.pipeline import TAUGHT_KIND, DetectionPipeline
    from vigil.streams.state import RedisStateStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pg = PostgresStore(_url(postgres_url))
    pg.ensure_schema()
    kept = NotifierState(pg)
    client = aioredis.from_url(redis_url)
    series = 'cpu{host="db-1"}'
    ts = T0 + np.arange(240, dtype=np.int64) * 60_000
    values = 10.0 + np.sin(np.arange(240) / 9.0)
    try:
        worker = DetectionPipeline(RedisStateStore(client, prefix), taught_store=kept)
        await worker.save(await worker.process([series] * 240, ts, values))
        lesson = {"series": series, "action": "not_anomaly", "anomaly_type": "point",
                  "direction": 1, "peak_score": 9.0, "opened_ms": int(ts[-1]),
                  "until_ms": int(ts[-1]) + 30 * DAY_MS}
        assert await worker.teach([lesson]) == 1
        stored = orjson.loads(kept.all(TAUGHT_KIND)[series])
        assert [Pattern(**p) for p in stored] == taught_patterns(
            (await worker._states([series])).records[0], 0)

        # Redis loses everything; the next worker resumes the stream and notices.
        wiped = [k async for k in client.scan_iter(match=f"{prefix}*")]
        await client.delete(*wiped)
        without = DetectionPipeline(RedisStateStore(client, prefix))
        assert taught_patterns((await without._states([series], True)).records[0], 0) == []
        again = DetectionPipeline(RedisStateStore(client, prefix), taught_store=kept)
        bank = await again._states([series], resumed=True)
        assert again.store.data_lost
        assert taught_patterns(bank.records[0], 0) == [Pattern(**p) for p in stored]
        # ... and saves them to Redis with the series' next batch.
        await again.save(await again.process([series], ts[-1:] + 60_000, values[-1:]))
        fresh = DetectionPipeline(RedisStateStore(client, prefix))
        assert taught_patterns((await fresh._states([series])).records[0], 0) == [
            Pattern(**p) for p in stored]

        # Forgetting removes them from PostgreSQL too.
        await again.teach([{"series": series, "action": "forget"}])
        assert series not in kept.all(TAUGHT_KIND)
    finally:
        leftover = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if leftover:
            await client.delete(*leftover)
        await client.aclose()
        _drop(pg)


def test_feedback_finds_a_stored_incident_gone_from_the_topic(stack: Stack, base_url: str,
                                                             store_kind: str):
    from vigil.events import verdict
    from vigil.streams.feedback import find_incident
    from vigil.streams.settings import Settings

    url = _url(base_url)
    store = store_for_url(url)
    try:
        store.ensure_schema()
        writer = HistoryWriter(store)
        writer.add_events([_event("cpu", "inc-s", "open", T0, 7.0),
                           {**_event("cpu", "inc-s", "update", T0 + 60_000, 12.0),
                            "z": 12.0, "change": "kind"}])
        asyncio.run(writer.flush_with_retry(stop_after=20))
        settings = Settings(kafka_bootstrap=stack.broker, anomalies_topic=stack.anomalies_topic,
                            **{URL_ENV[store_kind][6:].lower(): url})
        # The (empty) topic has nothing: the store answers.
        events = find_incident(settings, "inc-s", timeout_s=30)
        assert [(e.kind, e.ts_ms, e.z, e.change) for e in events] == [
            ("open", T0, 0.0, ""), ("update", T0 + 60_000, 12.0, "kind")]
        assert events[0].labels == {"host": "db-1"} and events[0].context is None
        record = verdict("not_anomaly", events, "op")
        assert record.series == "cpu" and record.pattern["anomaly_type"] == "point"
        assert find_incident(settings, "nope", timeout_s=30) == []
    finally:
        _drop(store)
