"""History in ClickHouse: the schema (versioned migrations), the store, and the worker's
buffered writer.

Tables (database from the URL, ``vigil`` by default)::

    steps           one row per resampled step: value, expected, band, score, anomalous
    events          every AnomalyEvent (open / update / resolve), without its chart context
    incidents       one row per incident, its latest state (ReplacingMergeTree)
    feedback        operators' button presses (the notifier's Feedback records)
    series          the catalogue: name, labels, first and last seen
    schema_version  the migrations applied

The SQL runs on ClickHouse 18.16 (Debian's package, used by the tests) as well as on current
releases, so it avoids TTL, DateTime64, Map, CODEC and server-side ``{x:Type}`` parameters:
times are ``DateTime`` (seconds) plus an ``Int64`` of epoch milliseconds where milliseconds
matter, labels are two arrays, and retention drops whole monthly partitions
(:meth:`ClickHouseStore.drop_expired`). Every table is a ReplacingMergeTree keyed by what makes
a row unique, so a replayed batch (Kafka is at-least-once) replaces rather than duplicates;
reads use ``FINAL``.

:class:`ClickHouseStore` is synchronous (clickhouse-driver, native protocol); async callers run
its methods in an executor. It implements :class:`vigil.sinks.store.HistoryStore`, as
:class:`vigil.sinks.postgres.PostgresStore` does on the same columns (:data:`TABLES`, the one
column list of both stores); the worker's buffered writer is
:class:`vigil.sinks.store.HistoryWriter` (it was ``ClickHouseWriter`` here).
:class:`FoldedUpserts` — the incidents and the series catalogue merged with what is stored —
is shared by both stores.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson
from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError

from vigil.events import severity_rank
from vigil.series import parse_series
from vigil.times import iso as _iso

__all__ = [
    "MIGRATIONS",
    "transient",
    "SCHEMA_VERSION",
    "TABLES",
    "ClickHouseStore",
    "FoldedUpserts",
    "event_row",
    "feedback_row",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- schema

_ENGINE = "ENGINE = ReplacingMergeTree"

#: Each version's steps, applied in order by :meth:`ClickHouseStore.ensure_schema`: SQL text
#: (``{db}`` is the database) or a function of the store (a data migration).
MIGRATIONS: dict[int, list[str | Callable[[ClickHouseStore], None]]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS {db}.steps (
            series String, ts DateTime, value Float64, expected Float64,
            lower Float64, upper Float64, score Float64
        ) """ + _ENGINE + " PARTITION BY toYYYYMM(ts) ORDER BY (series, ts)",
        """CREATE TABLE IF NOT EXISTS {db}.events (
            event_id String, incident_id String, kind String, series String, name String,
            label_keys Array(String), label_values Array(String), ts DateTime, ts_ms Int64,
            value Float64, expected Float64, lower Float64, upper Float64, score Float64,
            severity String, anomaly_type String, detectors Array(String), reason String,
            event_schema UInt16
        ) """ + _ENGINE + " PARTITION BY toYYYYMM(ts) ORDER BY (series, ts, event_id)",
        """CREATE TABLE IF NOT EXISTS {db}.incidents (
            incident_id String, series String, name String,
            label_keys Array(String), label_values Array(String),
            opened DateTime, opened_ms Int64, resolved_ms Nullable(Int64), severity String,
            anomaly_type String, peak_score Float64, events UInt32, updated_ms Int64
        ) """ + _ENGINE + "(updated_ms) PARTITION BY toYYYYMM(opened) ORDER BY incident_id",
        """CREATE TABLE IF NOT EXISTS {db}.feedback (
            feedback_id String, action String, incident_id String, series String,
            notification_id String, receiver String, user_id Int64, user_name String,
            chat_id Int64, ts DateTime, ts_ms Int64, source String
        ) """ + _ENGINE + " PARTITION BY toYYYYMM(ts) ORDER BY (incident_id, feedback_id)",
    ],
    # v2: an ``anomalous`` flag per step (rows written by v1 get it from their band), and the
    # series catalogue the dashboards list, filled from the steps already stored.
    2: [
        lambda store: store.add_column(
            "steps", "anomalous", "UInt8 DEFAULT toUInt8(value < lower OR value > upper)"),
        """CREATE TABLE IF NOT EXISTS {db}.series (
            series String, name String, label_keys Array(String), label_values Array(String),
            first_seen_ms Int64, last_seen_ms Int64
        ) """ + _ENGINE + "(last_seen_ms) ORDER BY series",
        lambda store: store._fill_series_from_steps(),
        # Labelled anomaly windows that came with backfilled history (NAB, the generator).
        """CREATE TABLE IF NOT EXISTS {db}.labels (
            series String, start_ms Int64, end_ms Int64, kind String, type String,
            start DateTime
        ) """ + _ENGINE + " PARTITION BY toYYYYMM(start) ORDER BY (series, start_ms, end_ms)",
    ],
    # v3: what an update tells besides a rise in severity (AnomalyEvent.change, issue 16).
    3: [lambda store: store.add_column("events", "change", "String DEFAULT ''")],
    # v4: the step's score as an equivalent z (AnomalyEvent.z, issue 19).
    4: [lambda store: store.add_column("events", "z", "Float64 DEFAULT 0")],
    # v5: a capacity forecast's details as JSON (AnomalyEvent.forecast, issue 20; '' none).
    5: [lambda store: store.add_column("events", "forecast", "String DEFAULT ''")],
}
SCHEMA_VERSION = max(MIGRATIONS)

#: Columns inserted per table, in order.
TABLES: dict[str, tuple[str, ...]] = {
    "steps": ("series", "ts", "value", "expected", "lower", "upper", "score", "anomalous"),
    "events": ("event_id", "incident_id", "kind", "series", "name", "label_keys",
               "label_values", "ts", "ts_ms", "value", "expected", "lower", "upper", "score",
               "severity", "anomaly_type", "detectors", "reason", "event_schema", "change",
               "z", "forecast"),
    "incidents": ("incident_id", "series", "name", "label_keys", "label_values", "opened",
                  "opened_ms", "resolved_ms", "severity", "anomaly_type", "peak_score",
                  "events", "updated_ms"),
    "feedback": ("feedback_id", "action", "incident_id", "series", "notification_id",
                 "receiver", "user_id", "user_name", "chat_id", "ts", "ts_ms", "source"),
    "series": ("series", "name", "label_keys", "label_values", "first_seen_ms",
               "last_seen_ms"),
    "labels": ("series", "start_ms", "end_ms", "kind", "type", "start"),
}
PARTITIONED = ("steps", "events", "incidents", "feedback", "labels")


def _parts(items: Sequence[str], max_chars: int = 100_000) -> Iterable[tuple[str, ...]]:
    """``items`` in tuples of at most ~``max_chars`` characters (one ``IN`` list each).

    >>> [len(p) for p in _parts(["x" * 10] * 25, max_chars=100)]
    [7, 7, 7, 4]
    """
    part: list[str] = []
    size = 0
    for item in items:
        if part and size + len(item) + 4 > max_chars:
            yield tuple(part)
            part, size = [], 0
        part.append(item)
        size += len(item) + 4
    if part:
        yield tuple(part)


#: Server error codes worth retrying: timeouts, network, memory, too many parts or queries,
#: and a table or database that is gone (the schema is then created again).
_TRANSIENT_CODES = {3, 159, 160, 164, 202, 209, 210, 241, 252, 285, 319, 425, 60, 81}
_SCHEMA_GONE = {60, 81}


def transient(exc: BaseException) -> bool:
    """Whether a failed insert may succeed if retried (else its rows can never be stored).

    >>> transient(ConnectionRefusedError()), transient(ServerException("syntax", code=62))
    (True, False)
    """
    if isinstance(exc, (OSError, EOFError, NetworkError, SocketTimeoutError)):
        return True
    if isinstance(exc, ServerException):
        return exc.code in _TRANSIENT_CODES
    return False


def _seconds(ts_ms: int) -> int:
    """Epoch seconds for a ``DateTime`` bound (UInt32: clamped to its range)."""
    return min(max(int(ts_ms) // 1000, 0), 2**32 - 1)


def _finite(x: float) -> float:
    return float(x) if x == x else float("nan")


def _labels(labels: Mapping[str, str]) -> tuple[list[str], list[str]]:
    keys = sorted(labels)
    return keys, [str(labels[k]) for k in keys]


def event_of_row(columns: Sequence[str], row: Sequence[Any]) -> dict:
    """An ``events`` table row read back as AnomalyEvent fields (labels as a dict, the
    forecast decoded, ``ts`` as ISO): the inverse of :func:`event_row`, for both stores."""
    event = dict(zip(columns, row, strict=True))
    keys, values = event.pop("label_keys"), event.pop("label_values")
    event["labels"] = dict(zip(keys, values, strict=True))
    event["schema_version"] = event.pop("event_schema")
    event["forecast"] = orjson.loads(event["forecast"]) if event["forecast"] else None
    event["ts"] = _iso(event["ts_ms"])
    return event


def event_row(event: Any) -> tuple:
    """An ``events`` row from an AnomalyEvent (or any object / dict with its fields)."""
    get = event.get if isinstance(event, Mapping) else lambda k, d=None: getattr(event, k, d)
    keys, values = _labels(get("labels") or {})
    ts_ms = int(get("ts_ms"))
    return (
        get("event_id"), get("incident_id"), get("kind"), get("series"), get("name"),
        keys, values, ts_ms // 1000, ts_ms, float(get("value")), float(get("expected")),
        float(get("lower")), float(get("upper")), float(get("score")), get("severity"),
        get("anomaly_type"), [str(d) for d in get("detectors") or []], get("reason") or "",
        int(get("schema_version", 1) or 1), get("change") or "", float(get("z", 0.0) or 0.0),
        orjson.dumps(get("forecast")).decode() if get("forecast") else "",
    )


def feedback_row(feedback: Any) -> tuple:
    """A ``feedback`` row from a Feedback record (or a dict with its fields)."""
    get = feedback.get if isinstance(feedback, Mapping) else lambda k, d=None: getattr(
        feedback, k, d)
    ts_ms = int(get("ts_ms"))
    return (
        get("feedback_id"), get("action"), get("incident_id"), get("series") or "",
        get("notification_id") or "", get("receiver") or "", int(get("user_id") or 0),
        get("user_name") or "", int(get("chat_id") or 0), ts_ms // 1000, ts_ms,
        get("source") or "",
    )


# --------------------------------------------------------------------------- store


class FoldedUpserts(ABC):
    """Writes that merge with what is stored, the same on every store: the series catalogue
    (first seen kept, last seen moved on) and each incident's latest state folded from its
    events (a replayed event counted once). A store provides :meth:`insert`,
    :meth:`_stored_first_seen` and :meth:`_incident_rows`, and sets ``_incidents``,
    ``_first_seen`` and ``cache_limit`` (a bounded cache of what is stored)."""

    _incidents: dict[str, dict]
    _first_seen: dict[str, int]
    cache_limit: int

    @abstractmethod
    def insert(self, table: str, rows: Sequence[tuple]) -> int:
        """Append ``rows`` to ``table``; returns the rows written."""

    @abstractmethod
    def _stored_first_seen(self, series: Sequence[str]) -> list[tuple[str, int]]:
        """``(series, first_ms)`` of those of ``series`` the catalogue holds."""

    @abstractmethod
    def _incident_rows(self, ids: Sequence[str]) -> list[dict]:
        """Stored incidents as dicts of their columns, ``updated_ms`` in ms and
        ``event_ids`` (the set of their stored events' ids)."""

    def upsert_series(self, seen: Mapping[str, tuple[int, int]]) -> int:
        """Update the catalogue from ``series → (first_ms, last_ms)`` seen in a batch."""
        unknown = [s for s in seen if s not in self._first_seen]
        if unknown:
            stored = []
            for part in _parts(unknown):  # queries stay under the servers' size limits
                stored += self._stored_first_seen(part)
            if len(self._first_seen) + len(unknown) > self.cache_limit:
                self._first_seen.clear()
            self._first_seen.update(dict(stored))
        rows = []
        for series, (first, last) in seen.items():
            first = min(first, self._first_seen.get(series, first))
            self._first_seen[series] = first
            name, labels = parse_series(series)
            rows.append((series, name, *_labels(labels), int(first), int(last)))
        return self.insert("series", rows)

    def upsert_incidents(self, events: Sequence[tuple]) -> int:
        """Fold ``events`` rows (in time order) into the incidents' latest state and write
        one row per incident touched."""
        index = {c: i for i, c in enumerate(TABLES["events"])}
        ids = list(dict.fromkeys(e[index["incident_id"]] for e in events))
        unknown = [i for i in ids if i not in self._incidents]
        if unknown:
            for part in _parts(unknown):
                for found in self._incident_rows(part):
                    self._incidents[found["incident_id"]] = found
        touched = {}
        for e in sorted(events, key=lambda e: e[index["ts_ms"]]):
            iid = e[index["incident_id"]]
            ts_ms, kind = e[index["ts_ms"]], e[index["kind"]]
            row = touched.get(iid)
            if row is None and iid in self._incidents:
                # Work on a copy: the cache changes only once the insert succeeded.
                row = dict(self._incidents[iid])
                row["event_ids"] = set(row.get("event_ids", ()))
            if row is None:
                row = {
                    "incident_id": iid, "series": e[index["series"]], "name": e[index["name"]],
                    "label_keys": e[index["label_keys"]],
                    "label_values": e[index["label_values"]], "opened_ms": ts_ms,
                    "resolved_ms": None, "severity": "none", "anomaly_type": "",
                    "peak_score": 0.0, "events": 0, "event_ids": set(),
                }
            row.setdefault("event_ids", set())
            if e[index["event_id"]] in row["event_ids"]:
                continue  # a replayed event
            row["event_ids"].add(e[index["event_id"]])
            row["events"] += 1
            row["opened_ms"] = min(row["opened_ms"], ts_ms)
            if kind == "resolve":
                row["resolved_ms"] = ts_ms
            else:
                if severity_rank(e[index["severity"]]) >= severity_rank(row["severity"]):
                    row["severity"] = e[index["severity"]]
                if not row["anomaly_type"] or kind == "open":
                    row["anomaly_type"] = e[index["anomaly_type"]]
            row["peak_score"] = max(row["peak_score"], _finite(e[index["score"]]))
            row["updated_ms"] = max(row.get("updated_ms", 0), ts_ms)
            touched[iid] = row
        rows = [
            (r["incident_id"], r["series"], r["name"], r["label_keys"], r["label_values"],
             r["opened_ms"] // 1000, r["opened_ms"], r["resolved_ms"], r["severity"],
             r["anomaly_type"], r["peak_score"], r["events"],
             # the version column: later state wins, also for two writes of one event time
             r["updated_ms"] * 1000 + min(r["events"], 999))
            for r in touched.values()
        ]
        written = self.insert("incidents", rows)
        if len(self._incidents) + len(touched) > self.cache_limit:
            self._incidents.clear()
        self._incidents.update(touched)
        return written




class ClickHouseStore(FoldedUpserts):
    """Reads and writes vigil's tables over ClickHouse's native protocol (synchronous).

    ``url`` is ``clickhouse://user:password@host:9000/database``; the database is created by
    :meth:`ensure_schema` if it does not exist. One client per store, guarded by a lock
    (clickhouse-driver clients are not thread-safe).
    """

    def __init__(self, url: str, connect_timeout: float = 3.0,
                 send_receive_timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError(f"not a clickhouse:// URL: {url!r}")
        self.url = url
        self.database = parts.path.strip("/") or "vigil"
        if not self.database.replace("_", "").isalnum():
            raise ValueError(f"database name {self.database!r}: letters, digits and _ only")
        # Connect to the server's default database: ours may not exist yet.
        server_url = urlunsplit((parts.scheme, parts.netloc, "/default", parts.query, ""))
        self.client = Client.from_url(server_url)
        self.client.connection.connect_timeout = connect_timeout
        self.client.connection.send_receive_timeout = send_receive_timeout
        self._lock = threading.Lock()
        # Latest known incident rows and first-seen times (a bounded cache of what is stored).
        self._incidents: dict[str, dict] = {}
        self._first_seen: dict[str, int] = {}
        self.cache_limit = 100_000

    # ---- low level

    def execute(self, sql: str, params: Any = None, **kwargs) -> Any:
        with self._lock:
            return self.client.execute(sql.replace("{db}", self.database), params, **kwargs)

    def insert(self, table: str, rows: Sequence[tuple]) -> int:
        """Insert row tuples (columns as in :data:`TABLES`); returns how many."""
        if not rows:
            return 0
        columns = ", ".join(TABLES[table])
        self.execute(f"INSERT INTO {{db}}.{table} ({columns}) VALUES", list(rows))
        return len(rows)

    def insert_columns(self, table: str, columns: Sequence[list]) -> int:
        """Insert rows given column by column (columns as in :data:`TABLES`)."""
        if not columns or not len(columns[0]):
            return 0
        names = ", ".join(TABLES[table])
        self.execute(f"INSERT INTO {{db}}.{table} ({names}) VALUES", list(columns),
                     columnar=True)
        return len(columns[0])

    def close(self) -> None:
        with self._lock:
            self.client.disconnect()

    kind = "clickhouse"

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    def schema_gone(self, exc: BaseException) -> bool:
        return isinstance(exc, ServerException) and exc.code in _SCHEMA_GONE

    def ping(self) -> bool:
        try:
            return self.execute("SELECT 1") == [(1,)]
        except Exception:  # noqa: BLE001 - reachable or not, nothing else
            with self._lock:
                self.client.disconnect()
            return False

    def count(self, table: str) -> int:
        """Rows of ``table`` (replaced rows counted once); 0 when it does not exist yet."""
        try:
            return int(self.execute(f"SELECT count() FROM {{db}}.{table} FINAL")[0][0])
        except ServerException as exc:
            if exc.code in _SCHEMA_GONE:
                return 0
            raise

    def drop(self) -> None:
        """Drop the database and everything in it (tests, benchmarks)."""
        self.execute(f"DROP DATABASE IF EXISTS {self.database}")

    # ---- schema

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        exists = self.execute(
            "SELECT count() FROM system.tables WHERE database = %(db)s AND name = "
            "'schema_version'", {"db": self.database},
        )[0][0]
        if not exists:
            return 0
        return int(self.execute("SELECT max(version) FROM {db}.schema_version")[0][0] or 0)

    def ensure_schema(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Create the database and apply the missing migrations up to ``target``; returns the
        versions applied. Steps are idempotent (``IF NOT EXISTS``), so a run interrupted half
        way is completed by the next one."""
        self.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self.execute(
            "CREATE TABLE IF NOT EXISTS {db}.schema_version (version UInt32, "
            "applied DateTime) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        current = self.schema_version()
        applied = []
        for version in sorted(v for v in MIGRATIONS if current < v <= target):
            for step in MIGRATIONS[version]:
                if callable(step):
                    step(self)
                else:
                    self.execute(step)
            self.execute("INSERT INTO {db}.schema_version (version, applied) VALUES",
                         [(version, int(time.time()))])
            log.info("ClickHouse %s: schema migrated to version %d", self.database, version)
            applied.append(version)
        return applied

    def add_column(self, table: str, column: str, definition: str) -> None:
        """``ALTER TABLE … ADD COLUMN`` unless it is there (18.16 has no ``IF NOT EXISTS``
        for columns)."""
        exists = self.execute(
            "SELECT count() FROM system.columns WHERE database = %(db)s AND table = %(t)s "
            "AND name = %(c)s", {"db": self.database, "t": table, "c": column})[0][0]
        if not exists:
            self.execute(f"ALTER TABLE {{db}}.{table} ADD COLUMN {column} {definition}")

    def _fill_series_from_steps(self) -> None:

        rows = self.execute(
            "SELECT series, toInt64(min(ts)) * 1000, toInt64(max(ts)) * 1000 "
            "FROM {db}.steps GROUP BY series"
        )
        out = []
        for series, first, last in rows:
            name, labels = parse_series(series)
            out.append((series, name, *_labels(labels), first, last))
        self.insert("series", out)

    def tables(self) -> list[str]:
        return [r[0] for r in self.execute(
            "SELECT name FROM system.tables WHERE database = %(db)s ORDER BY name",
            {"db": self.database})]

    # ---- writes that merge with what is stored

    def _stored_first_seen(self, series: Sequence[str]) -> list[tuple[str, int]]:
        return self.execute(
            "SELECT series, min(first_seen_ms) FROM {db}.series WHERE series IN %(s)s "
            "GROUP BY series", {"s": tuple(series)})

    def _incident_rows(self, ids: Sequence[str]) -> list[dict]:
        cols = TABLES["incidents"]
        rows = self.execute(
            f"SELECT {', '.join(cols)} FROM {{db}}.incidents FINAL "
            "WHERE incident_id IN %(ids)s", {"ids": tuple(ids)},
        )
        if not rows:
            return []
        known = dict(self.execute(
            "SELECT incident_id, groupUniqArray(event_id) FROM {db}.events "
            "WHERE incident_id IN %(ids)s GROUP BY incident_id", {"ids": tuple(ids)}))
        found = []
        for r in rows:
            row = dict(zip(cols, r, strict=True))
            row["updated_ms"] //= 1000
            row["event_ids"] = set(known.get(row["incident_id"], ()))
            found.append(row)
        return found

    # ---- retention

    def drop_expired(self, retention_days: int, now_ms: int | None = None) -> list[str]:
        """Drop whole monthly partitions whose every day is older than ``retention_days``
        (18.16 has no TTL). Returns ``table/partition`` of what was dropped."""
        if retention_days <= 0:
            return []
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        cutoff = datetime.fromtimestamp((now_ms - retention_days * 86_400_000) / 1000,
                                        timezone.utc)
        cutoff_month = cutoff.year * 100 + cutoff.month  # partitions before it are all older
        parts = self.execute(
            "SELECT DISTINCT table, partition FROM system.parts WHERE database = %(db)s "
            "AND active AND table IN %(t)s", {"db": self.database, "t": PARTITIONED},
        )
        dropped = []
        for table, partition in sorted(parts):
            month = int(str(partition).strip("'"))
            if month < cutoff_month:
                self.execute(f"ALTER TABLE {{db}}.{table} DROP PARTITION {month}")
                dropped.append(f"{table}/{month}")
        if dropped:
            log.info("ClickHouse retention (%d days): dropped %s", retention_days,
                     ", ".join(dropped))
        return dropped

    # ---- reads (the dashboard's contract)

    def series_summary(self, since_ms: int) -> list[dict]:
        """Per series: name, labels, incidents opened since ``since_ms``, last incident and
        last step seen; most anomalous first."""
        rows = self.execute(
            """SELECT s.series, s.nm, s.lk, s.lv, s.seen, i.n, i.last_ms
               FROM (SELECT series, argMax(name, last_seen_ms) AS nm,
                            argMax(label_keys, last_seen_ms) AS lk,
                            argMax(label_values, last_seen_ms) AS lv,
                            max(last_seen_ms) AS seen
                     FROM {db}.series GROUP BY series) AS s
               ANY LEFT JOIN
                    (SELECT series, count() AS n, max(opened_ms) AS last_ms
                     FROM {db}.incidents FINAL WHERE opened_ms >= %(since)s
                     GROUP BY series) AS i USING series
               ORDER BY i.n DESC, i.last_ms DESC, s.series""",
            {"since": int(since_ms)},
        )
        return [
            {"series": series, "name": name, "labels": dict(zip(keys, values, strict=True)),
             "anomaly_count": int(n or 0), "last_anomaly_ms": int(last) if n else None,
             "last_seen_ms": int(seen)}
            for series, name, keys, values, seen, n, last in rows
        ]

    def series_steps(self, series: str, since_ms: int, until_ms: int) -> dict:
        """The series' stored steps in ``[since_ms, until_ms]`` as equal-length lists
        ``ts_ms, value, expected, lower, upper, z, anomalous`` (the chart's shape)."""
        rows = self.execute(
            "SELECT toInt64(toUnixTimestamp(ts)) * 1000, value, expected, lower, upper, "
            "score, anomalous FROM {db}.steps FINAL WHERE series = %(s)s "
            "AND ts >= toDateTime(%(lo)s) AND ts <= toDateTime(%(hi)s) ORDER BY ts",
            {"s": series, "lo": int(since_ms) // 1000 + (since_ms % 1000 > 0),
             "hi": _seconds(until_ms)},
        )
        names = ("ts_ms", "value", "expected", "lower", "upper", "z", "anomalous")
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        out = {n: list(c) for n, c in zip(names, columns, strict=True)}
        for n in ("value", "expected", "lower", "upper", "z"):
            out[n] = [None if v != v else v for v in out[n]]  # NaN → null (JSON)
        return out

    def incident(self, incident_id: str) -> dict | None:
        """One incident's latest state with its events (time order) and feedback."""
        cols = TABLES["incidents"]
        rows = self.execute(
            f"SELECT {', '.join(cols)} FROM {{db}}.incidents FINAL "
            "WHERE incident_id = %(i)s", {"i": incident_id},
        )
        if not rows:
            return None
        r = dict(zip(cols, rows[0], strict=True))
        events = self._events("incident_id = %(i)s ORDER BY ts_ms, event_id", {"i": incident_id})
        fcols = TABLES["feedback"]
        feedback = [
            {**{c: v for c, v in zip(fcols, f, strict=True)}, "ts": _iso(f[fcols.index("ts_ms")])}
            for f in self.execute(
                f"SELECT {', '.join(fcols)} FROM {{db}}.feedback FINAL "
                "WHERE incident_id = %(i)s ORDER BY ts_ms", {"i": incident_id})
        ]
        return {
            "incident_id": r["incident_id"], "series": r["series"], "name": r["name"],
            "labels": dict(zip(r["label_keys"], r["label_values"], strict=True)),
            "opened_ms": r["opened_ms"], "resolved_ms": r["resolved_ms"],
            "severity": r["severity"], "anomaly_type": r["anomaly_type"],
            "peak_score": r["peak_score"], "events": events, "feedback": feedback,
        }

    def recent_events(self, limit: int) -> list[dict]:
        """The newest ``limit`` events, newest first (AnomalyEvent fields, no context)."""
        return self._events("1 ORDER BY ts_ms DESC, event_id LIMIT %(n)s", {"n": int(limit)})

    def _events(self, where: str, params: dict) -> list[dict]:
        cols = TABLES["events"]
        rows = self.execute(f"SELECT {', '.join(cols)} FROM {{db}}.events FINAL WHERE {where}",
                            params)
        return [event_of_row(cols, r) for r in rows]

    # ---- history out (export, the lab's loader)

    def series_matching(self, selectors: Sequence[str]) -> list[str]:
        """Stored series ids equal to a selector or matching it as a glob (``*``, ``?``)."""
        known = [s for (s,) in self.execute("SELECT DISTINCT series FROM {db}.steps")]
        if not selectors:
            return sorted(known)
        return sorted(s for s in known
                      if any(s == sel or fnmatch.fnmatchcase(s, sel) for sel in selectors))

    def read_points(
        self, series: Sequence[str], since_ms: int, until_ms: int | None = None
    ) -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Per series: ``(series, ts_ms, value, anomalous)`` arrays of its stored steps,
        time order; one query per series (a month at one step is ~43k rows)."""
        for s in series:
            params = {"s": s, "lo": int(since_ms) // 1000 + (since_ms % 1000 > 0)}
            upper = ""
            if until_ms is not None:
                upper = " AND ts <= toDateTime(%(hi)s)"
                params["hi"] = _seconds(until_ms)
            rows = self.execute(
                "SELECT toInt64(toUnixTimestamp(ts)) * 1000, value, anomalous "
                "FROM {db}.steps FINAL WHERE series = %(s)s AND ts >= toDateTime(%(lo)s)"
                + upper + " ORDER BY ts", params, columnar=True,
            )
            if not rows or not len(rows[0]):
                continue
            yield (s, np.asarray(rows[0], np.int64), np.asarray(rows[1], np.float64),
                   np.asarray(rows[2], np.int8))

    def labelled_windows(self, series: Sequence[str], since_ms: int,
                         until_ms: int | None) -> list[tuple[str, int, int, str, str]]:
        """``(series, start_ms, end_ms, kind, type)`` of the stored labelled windows that
        overlap ``[since_ms, until_ms]`` (labels come only from backfilled data sets: the
        detector's own incidents are not ground truth)."""
        if not series:
            return []
        rows = self.execute(
            "SELECT series, start_ms, end_ms, kind, type FROM {db}.labels FINAL "
            "WHERE series IN %(s)s AND end_ms >= %(lo)s AND start_ms <= %(hi)s "
            "ORDER BY start_ms, series",
            {"s": tuple(series), "lo": int(since_ms),
             "hi": int(until_ms) if until_ms is not None else 2**62},
        )
        return [(s, int(a), int(b), k, t) for s, a, b, k, t in rows]
