"""History in PostgreSQL: the same tables and columns as ClickHouse's
(:data:`vigil.sinks.clickhouse.TABLES`), monthly range partitions, COPY, versioned migrations.

``postgresql://user:password@host:5432/database?schema=vigil`` — the tables live in a schema
of their own (``vigil`` by default; ``schema`` is vigil's parameter, removed before libpq sees
the URL), created by :meth:`PostgresStore.ensure_schema` if it does not exist.

* Column types come from one mapping, :data:`PG_COLUMNS` (column name → definition); the
  tables' columns and their order are :data:`~vigil.sinks.clickhouse.TABLES`. Times that
  ClickHouse keeps as ``DateTime`` (``ts``, ``opened``, ``start``) are ``timestamptz``; the
  rows carry them as epoch seconds and COPY converts them (``to_timestamp``).
* ``steps``, ``events``, ``incidents``, ``feedback`` and ``labels`` are partitioned by month
  (``PARTITION BY RANGE`` on that time; partitions ``<table>_pYYYYMM`` are created when a row
  needs one); retention drops whole partitions (:meth:`PostgresStore.drop_expired`).
* Bulk inserts COPY into a temporary table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``
  on each table's key — a replayed batch (Kafka is at-least-once) is not stored twice (the
  first row of a key stays; ClickHouse's ReplacingMergeTree keeps the last). The series
  catalogue is upserted (first seen kept, last seen moved on); an incident's row is replaced
  by its latest state (delete and insert, one transaction).
* :data:`MIGRATIONS` are versioned (table ``schema_version``); each version runs in one
  transaction under an advisory lock, so two workers starting together apply it once.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import errors as pge

from vigil.redact import redact_url
from vigil.series import parse_series
from vigil.sinks.clickhouse import TABLES, FoldedUpserts, event_of_row
from vigil.sinks.clickhouse import _labels as label_lists
from vigil.times import iso as _iso

__all__ = ["MIGRATIONS", "PG_COLUMNS", "SCHEMA_VERSION", "NotifierState", "PostgresStore"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- schema

_TEXT = "text NOT NULL DEFAULT ''"
_FLOAT = "double precision NOT NULL DEFAULT 'NaN'"
_BIGINT = "bigint NOT NULL DEFAULT 0"
_TEXTS = "text[] NOT NULL DEFAULT '{}'"
_TIME = "timestamptz NOT NULL"

#: Every column's PostgreSQL definition, by name (a name means the same in every table). A
#: new column of :data:`~vigil.sinks.clickhouse.TABLES` needs its line here and a migration
#: ``add_columns(table, column)`` (see :data:`MIGRATIONS`).
PG_COLUMNS: dict[str, str] = {
    "series": _TEXT, "name": _TEXT, "ts": _TIME, "value": _FLOAT, "expected": _FLOAT,
    "lower": _FLOAT, "upper": _FLOAT, "score": _FLOAT, "anomalous": "smallint NOT NULL DEFAULT 0",
    "event_id": _TEXT, "incident_id": _TEXT, "kind": _TEXT, "label_keys": _TEXTS,
    "label_values": _TEXTS, "ts_ms": _BIGINT, "severity": _TEXT, "anomaly_type": _TEXT,
    "detectors": _TEXTS, "reason": _TEXT, "event_schema": "integer NOT NULL DEFAULT 1",
    "change": _TEXT, "z": "double precision NOT NULL DEFAULT 0", "forecast": _TEXT,
    "opened": _TIME, "opened_ms": _BIGINT, "resolved_ms": "bigint", "peak_score": _FLOAT,
    "events": "integer NOT NULL DEFAULT 0", "updated_ms": _BIGINT,
    "feedback_id": _TEXT, "action": _TEXT, "notification_id": _TEXT, "receiver": _TEXT,
    "user_id": _BIGINT, "user_name": _TEXT, "chat_id": _BIGINT, "source": _TEXT,
    "first_seen_ms": _BIGINT, "last_seen_ms": _BIGINT,
    "start_ms": _BIGINT, "end_ms": _BIGINT, "type": _TEXT, "start": _TIME,
}

#: Per table: its key (what makes a row unique; the partition's time is part of it, as
#: PostgreSQL requires) and the time column it is partitioned by by month (None: not).
KEYS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "steps": (("series", "ts"), "ts"),
    "events": (("series", "ts", "event_id"), "ts"),
    "incidents": (("incident_id", "opened"), "opened"),
    "feedback": (("incident_id", "feedback_id", "ts"), "ts"),
    "series": (("series",), None),
    "labels": (("series", "start_ms", "end_ms", "start"), "start"),
}
PARTITIONED = tuple(t for t, (_, by) in KEYS.items() if by)


def _q(name: str) -> str:
    return f'"{name}"'


def _added_later() -> dict[str, set[str]]:
    """Columns that a migration after version 1 adds, per table (version 1 leaves them out)."""
    out: dict[str, set[str]] = {}
    for version, steps in MIGRATIONS.items():
        for step in steps:
            added = getattr(step, "adds", None)
            if version > 1 and added:
                out.setdefault(added[0], set()).add(added[1])
    return out


def _create_tables(store: PostgresStore) -> None:
    later = _added_later()
    for table, columns in TABLES.items():
        key, by = KEYS[table]
        defs = ", ".join(f"{_q(c)} {PG_COLUMNS[c]}" for c in columns
                         if c not in later.get(table, ()))
        part = f" PARTITION BY RANGE ({_q(by)})" if by else ""
        store.execute(f"CREATE TABLE IF NOT EXISTS {{db}}.{table} ({defs}, "
                      f"PRIMARY KEY ({', '.join(map(_q, key))})){part}")


def add_columns(table: str, column: str) -> Callable[[PostgresStore], None]:
    """A migration step: ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` with the column's
    :data:`PG_COLUMNS` definition (rows already stored get its default)."""
    def step(store: PostgresStore) -> None:
        store.execute(f"ALTER TABLE {{db}}.{table} ADD COLUMN IF NOT EXISTS {_q(column)} "
                      f"{PG_COLUMNS[column]}")

    step.adds = (table, column)  # type: ignore[attr-defined]
    return step


#: Each version's steps (SQL with ``{db}`` for the schema, or a function of the store),
#: applied in order, one transaction per version.
MIGRATIONS: dict[int, list[str | Callable[[PostgresStore], None]]] = {
    # v1: the tables of ClickHouse's schema v4 (the columns later versions add left out).
    1: [_create_tables],
    # v2: indexes for the reads by incident, by time and the dashboard's summary.
    2: [
        "CREATE INDEX IF NOT EXISTS events_incident ON {db}.events (incident_id)",
        "CREATE INDEX IF NOT EXISTS events_ts_ms ON {db}.events (ts_ms)",
        "CREATE INDEX IF NOT EXISTS incidents_id ON {db}.incidents (incident_id)",
        "CREATE INDEX IF NOT EXISTS incidents_opened ON {db}.incidents (opened_ms, series)",
        "CREATE INDEX IF NOT EXISTS feedback_incident ON {db}.feedback (incident_id, ts_ms)",
    ],
    # v3: the notifier's memory kept besides Redis (silences; what it told of each incident,
    # acknowledgements included), so that it survives a Redis wipe (:class:`NotifierState`).
    3: [
        "CREATE TABLE IF NOT EXISTS {db}.notifier_state (kind text NOT NULL, key text NOT NULL, "
        "value text NOT NULL, updated_ms bigint NOT NULL, PRIMARY KEY (kind, key))",
    ],
    # v4: ClickHouse's v5, the capacity forecast of a forecast event (JSON, docs/forecasts.md).
    4: [add_columns("events", "forecast")],
}
SCHEMA_VERSION = max(MIGRATIONS)

# Errors a retry may get past: the connection (server down, restarting, network), locks,
# resources, a table or schema that is gone (the schema is then created again).
_SCHEMA_GONE = (pge.UndefinedTable, pge.InvalidSchemaName)
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, pge.SerializationFailure,
              pge.DeadlockDetected, pge.LockNotAvailable, pge.InsufficientResources,
              pge.QueryCanceled, pge.DuplicateTable, *_SCHEMA_GONE)


def transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed if retried (else its rows can never be stored).

    >>> transient(ConnectionRefusedError()), transient(pge.InvalidTextRepresentation())
    (True, False)
    """
    return isinstance(exc, (OSError, EOFError, *_TRANSIENT))


#: The COPY's binary types of the temporary table's columns.
_BINARY = {"text": "text", "bigint": "int8", "double precision": "float8", "smallint": "int2",
           "integer": "int4", "text[]": "text[]"}


def _stage_type(column: str) -> str:
    """The column's type in the COPY's temporary table (times as epoch seconds)."""
    definition = PG_COLUMNS[column]
    return "bigint" if definition.startswith("timestamptz") else definition.split(" NOT")[0]


def _month(ts_s: int) -> int:
    d = datetime.fromtimestamp(ts_s, timezone.utc)
    return d.year * 100 + d.month


def _month_start(month: int) -> str:
    return f"{month // 100:04d}-{month % 100:02d}-01 00:00:00+00"


def _next_month(month: int) -> int:
    return month + 1 if month % 100 < 12 else (month // 100 + 1) * 100 + 1


# --------------------------------------------------------------------------- store


class PostgresStore(FoldedUpserts):
    """Reads and writes vigil's tables in PostgreSQL (psycopg 3, synchronous). One connection,
    guarded by a lock, opened again after it broke."""

    kind = "postgres"

    def __init__(self, url: str, connect_timeout: float = 3.0,
                 statement_timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a postgresql:// URL: {redact_url(url)!r}")
        query = parse_qsl(parts.query)
        self.schema = dict(query).get("schema", "vigil")
        if not self.schema.replace("_", "").isalnum():
            raise ValueError(f"schema name {self.schema!r}: letters, digits and _ only")
        self.url = url
        self.database = self.schema  # ``{db}`` in SQL, as on ClickHouse
        self.conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path,
                                    urlencode([(k, v) for k, v in query if k != "schema"]), ""))
        self.connect_timeout = connect_timeout
        self.statement_timeout_s = statement_timeout_s
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()
        self._partitions: set[str] = set()
        self._staged: set[str] = set()
        self._incidents: dict[str, dict] = {}
        self._first_seen: dict[str, int] = {}
        self.cache_limit = 100_000

    # ---- low level

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            self._staged.clear()
            conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="vigil",
                # A dead peer is noticed in ~10 s, not at the kernel's two hours.
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=int(self.statement_timeout_s * 1000),
                options=f"-c statement_timeout={int(self.statement_timeout_s * 1000)}",
            )
            self._conn = conn
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("{db}", _q(self.schema))

    def execute(self, sql: str, params: Any = None) -> list[tuple] | None:
        """Run one statement (``{db}`` is the schema); its rows, or None if it returns none."""
        with self._lock:
            reused = self._conn is not None
            conn = self._connection()
            alone = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            try:
                with conn.cursor() as cur:
                    cur.execute(self._sql(sql), params)
                    return cur.fetchall() if cur.description else None
            except psycopg.OperationalError:
                self._drop_connection()
                if not (reused and alone):
                    raise
            # A kept connection that the server (or the network) closed meanwhile: once
            # more on a new one, outside any transaction.
            with self._connection().cursor() as cur:
                cur.execute(self._sql(sql), params)
                return cur.fetchall() if cur.description else None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        self._conn = None
        self._staged.clear()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    def schema_gone(self, exc: BaseException) -> bool:
        return isinstance(exc, _SCHEMA_GONE)

    def ping(self) -> bool:
        try:
            return self.execute("SELECT 1") == [(1,)]
        except Exception:  # noqa: BLE001 - reachable or not, nothing else
            return False

    def count(self, table: str) -> int:
        """Rows of ``table``; 0 when it does not exist yet."""
        try:
            return int(self.execute(f"SELECT count(*) FROM {{db}}.{_q(table)}")[0][0])
        except _SCHEMA_GONE:
            return 0

    def drop(self) -> None:
        """Drop the schema and everything in it (tests, benchmarks)."""
        self.execute(f"DROP SCHEMA IF EXISTS {_q(self.schema)} CASCADE")
        self._partitions.clear()

    # ---- schema

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty schema)."""
        found = self.execute("SELECT to_regclass(%s)", (f"{self.schema}.schema_version",))
        if not found or found[0][0] is None:
            return 0
        return int(self.execute("SELECT coalesce(max(version), 0) FROM {db}.schema_version")
                   [0][0])

    def ensure_schema(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Create the schema and apply the missing migrations up to ``target``, each in one
        transaction under an advisory lock; returns the versions applied."""
        self._partitions.clear()
        applied = []
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 (f"vigil-schema:{self.schema}",))
                    conn.execute(self._sql(
                        "CREATE SCHEMA IF NOT EXISTS {db}; CREATE TABLE IF NOT EXISTS "
                        "{db}.schema_version (version integer PRIMARY KEY, "
                        "applied timestamptz NOT NULL DEFAULT now())"))
                current = self.schema_version()
                for version in sorted(v for v in MIGRATIONS if current < v <= target):
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                     (f"vigil-schema:{self.schema}",))
                        if self.schema_version() >= version:
                            continue  # another process applied it meanwhile
                        for step in MIGRATIONS[version]:
                            if callable(step):
                                step(self)
                            else:
                                self.execute(step)
                        self.execute("INSERT INTO {db}.schema_version (version) VALUES (%s)",
                                     (version,))
                    log.info("PostgreSQL %s: schema migrated to version %d", self.schema,
                             version)
                    applied.append(version)
            except psycopg.OperationalError:
                self._drop_connection()
                raise
        return applied

    def tables(self) -> list[str]:
        """The schema's tables (partitions left out)."""
        return [r[0] for r in self.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY 1", (self.schema,))]

    def partitions(self) -> list[tuple[str, int]]:
        """``(table, YYYYMM)`` of the monthly partitions that exist."""
        rows = self.execute(
            "SELECT p.relname, c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (self.schema,))
        out = []
        for parent, child in rows:
            suffix = child[len(parent) + 2:]
            if child.startswith(parent + "_p") and suffix.isdigit():
                out.append((parent, int(suffix)))
        return sorted(out)

    def _ensure_partitions(self, table: str, seconds: Sequence[int]) -> None:
        """Create the monthly partitions the rows' times fall in (known ones are cached)."""
        if not len(seconds):
            return
        months = np.unique(np.asarray(seconds, np.int64).astype("datetime64[s]")
                           .astype("datetime64[M]"))
        for m in months.tolist():
            month = m.year * 100 + m.month
            name = f"{table}_p{month}"
            if name in self._partitions:
                continue
            try:
                self.execute(
                    f"CREATE TABLE IF NOT EXISTS {{db}}.{name} PARTITION OF {{db}}.{table} "
                    f"FOR VALUES FROM ('{_month_start(month)}') TO "
                    f"('{_month_start(_next_month(month))}')")
            except (pge.DuplicateTable, pge.UniqueViolation):
                pass  # another worker created it at the same moment
            self._partitions.add(name)

    # ---- writes

    def insert(self, table: str, rows: Sequence[tuple]) -> int:
        """Insert row tuples (columns as in :data:`TABLES`); returns how many."""
        if not rows:
            return 0
        return self.insert_columns(table, [list(c) for c in zip(*rows, strict=True)])

    def insert_columns(self, table: str, columns: Sequence[list]) -> int:
        """COPY rows given column by column into a temporary table, then insert them into
        ``table``: rows whose key is stored already are skipped (the series catalogue and
        incidents are updated instead)."""
        if not columns or not len(columns[0]):
            return 0
        names = TABLES[table]
        key, by = KEYS[table]
        with self._lock:
            try:
                if by:
                    self._ensure_partitions(table, columns[names.index(by)])
                conn = self._connection()
                stage = f"vigil_stage_{table}"
                if stage not in self._staged:
                    stage_defs = ", ".join(f"{_q(c)} {_stage_type(c)}" for c in names)
                    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({stage_defs}) "
                                 "ON COMMIT DELETE ROWS")
                    self._staged.add(stage)
                select = ", ".join(
                    f"to_timestamp({_q(c)})" if PG_COLUMNS[c].startswith("timestamptz")
                    else _q(c) for c in names)
                target = ", ".join(map(_q, names))
                with conn.transaction():
                    with conn.cursor() as cur:
                        with cur.copy(f"COPY {stage} ({target}) FROM STDIN "
                                      "(FORMAT BINARY)") as copy:
                            copy.set_types([_BINARY[_stage_type(c)] for c in names])
                            for row in zip(*columns, strict=True):
                                copy.write_row(row)
                        if table == "incidents":
                            # The latest state replaces the stored one (its opening may move).
                            cur.execute(self._sql(
                                f"DELETE FROM {{db}}.incidents WHERE incident_id IN "
                                f"(SELECT incident_id FROM {stage})"))
                        cur.execute(self._sql(
                            f"INSERT INTO {{db}}.{table} ({target}) SELECT {select} "
                            f"FROM {stage} ON CONFLICT ({', '.join(map(_q, key))}) "
                            + self._on_conflict(table)))
            except psycopg.OperationalError:
                self._drop_connection()
                raise
        return len(columns[0])

    @staticmethod
    def _on_conflict(table: str) -> str:
        if table == "series":
            return ("DO UPDATE SET name = EXCLUDED.name, label_keys = EXCLUDED.label_keys, "
                    "label_values = EXCLUDED.label_values, first_seen_ms = "
                    "least(series.first_seen_ms, EXCLUDED.first_seen_ms), last_seen_ms = "
                    "greatest(series.last_seen_ms, EXCLUDED.last_seen_ms)")
        return "DO NOTHING"

    def _stored_first_seen(self, series: Sequence[str]) -> list[tuple[str, int]]:
        return self.execute("SELECT series, first_seen_ms FROM {db}.series "
                            "WHERE series = ANY(%s)", (list(series),))

    def _incident_rows(self, ids: Sequence[str]) -> list[dict]:
        cols = TABLES["incidents"]
        rows = self.execute(f"SELECT {', '.join(map(_q, cols))} FROM {{db}}.incidents "
                            "WHERE incident_id = ANY(%s)", (list(ids),))
        if not rows:
            return []
        known = dict(self.execute(
            "SELECT incident_id, array_agg(event_id) FROM {db}.events "
            "WHERE incident_id = ANY(%s) GROUP BY incident_id", (list(ids),)))
        found = []
        for r in rows:
            row = dict(zip(cols, r, strict=True))
            row["updated_ms"] //= 1000
            row["event_ids"] = set(known.get(row["incident_id"], ()))
            found.append(row)
        return found

    # ---- retention

    def drop_expired(self, retention_days: int, now_ms: int | None = None) -> list[str]:
        """Drop the monthly partitions whose every day is older than ``retention_days`` (and
        the notifier's incident records not updated since; silences go when they have been
        expired a week). Returns ``table/YYYYMM`` of what was
        dropped."""
        if retention_days <= 0:
            return []
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self.execute("DELETE FROM {db}.notifier_state WHERE kind = 'incident' AND "
                     "updated_ms < %s", (now_ms - retention_days * 86_400_000,))
        cutoff_month = _month((now_ms - retention_days * 86_400_000) // 1000)
        dropped = []
        for table, month in self.partitions():
            if table in PARTITIONED and month < cutoff_month:
                self.execute(f"DROP TABLE IF EXISTS {{db}}.{table}_p{month}")
                self._partitions.discard(f"{table}_p{month}")
                dropped.append(f"{table}/{month}")
        if dropped:
            log.info("PostgreSQL retention (%d days): dropped %s", retention_days,
                     ", ".join(dropped))
        return dropped

    # ---- reads (the dashboard's contract)

    def series_summary(self, since_ms: int) -> list[dict]:
        """Per series: name, labels, incidents opened since ``since_ms``, last incident and
        last step seen; most anomalous first."""
        rows = self.execute(
            """SELECT s.series, s.name, s.label_keys, s.label_values, s.last_seen_ms,
                      i.n, i.last_ms
               FROM {db}.series AS s LEFT JOIN
                    (SELECT series, count(*) AS n, max(opened_ms) AS last_ms
                     FROM {db}.incidents WHERE opened_ms >= %(since)s GROUP BY series) AS i
                    USING (series)
               ORDER BY i.n DESC NULLS LAST, i.last_ms DESC NULLS LAST, s.series""",
            {"since": int(since_ms)},
        )
        return [
            {"series": series, "name": name, "labels": dict(zip(keys, values, strict=True)),
             "anomaly_count": int(n or 0), "last_anomaly_ms": int(last) if n else None,
             "last_seen_ms": int(seen)}
            for series, name, keys, values, seen, n, last in rows
        ]

    _EPOCH_MS = "(extract(epoch FROM ts) * 1000)::bigint"

    def series_steps(self, series: str, since_ms: int, until_ms: int) -> dict:
        """The series' stored steps in ``[since_ms, until_ms]`` as equal-length lists
        ``ts_ms, value, expected, lower, upper, z, anomalous`` (the chart's shape)."""
        rows = self.execute(
            f"SELECT {self._EPOCH_MS}, value, expected, lower, upper, score, anomalous "
            "FROM {db}.steps WHERE series = %(s)s AND ts >= to_timestamp(%(lo)s) "
            "AND ts <= to_timestamp(%(hi)s) ORDER BY ts",
            {"s": series, "lo": int(since_ms) // 1000 + (since_ms % 1000 > 0),
             "hi": int(until_ms) // 1000},
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
        rows = self.execute(f"SELECT {', '.join(map(_q, cols))} FROM {{db}}.incidents "
                            "WHERE incident_id = %(i)s", {"i": incident_id})
        if not rows:
            return None
        r = dict(zip(cols, rows[0], strict=True))
        events = self._events("incident_id = %(i)s ORDER BY ts_ms, event_id", {"i": incident_id})
        fcols = TABLES["feedback"]
        feedback = [
            {**dict(zip(fcols, f, strict=True)), "ts": _iso(f[fcols.index("ts_ms")])}
            for f in self.execute(
                f"SELECT {', '.join(map(_q, fcols))} FROM {{db}}.feedback "
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
        return self._events("true ORDER BY ts_ms DESC, event_id LIMIT %(n)s", {"n": int(limit)})

    def _events(self, where: str, params: dict) -> list[dict]:
        cols = TABLES["events"]
        rows = self.execute(
            f"SELECT {', '.join(map(_q, cols))} FROM {{db}}.events WHERE {where}", params)
        return [event_of_row(cols, r) for r in rows]

    # ---- history out (export, the lab's loader)

    def series_matching(self, selectors: Sequence[str]) -> list[str]:
        """Stored series ids equal to a selector or matching it as a glob (``*``, ``?``)."""
        known = [s for (s,) in self.execute("SELECT series FROM {db}.series")]
        if not selectors:
            return sorted(known)
        return sorted(s for s in known
                      if any(s == sel or fnmatch.fnmatchcase(s, sel) for sel in selectors))

    def read_points(
        self, series: Sequence[str], since_ms: int, until_ms: int | None = None
    ) -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Per series: ``(series, ts_ms, value, anomalous)`` arrays of its stored steps,
        time order; one query per series."""
        for s in series:
            params = {"s": s, "lo": int(since_ms) // 1000 + (since_ms % 1000 > 0),
                      "hi": 2**40 if until_ms is None else int(until_ms) // 1000}
            rows = self.execute(
                f"SELECT {self._EPOCH_MS}, value, anomalous FROM {{db}}.steps "
                "WHERE series = %(s)s AND ts >= to_timestamp(%(lo)s) "
                "AND ts <= to_timestamp(%(hi)s) ORDER BY ts", params)
            if not rows:
                continue
            ts, value, anomalous = zip(*rows, strict=True)
            yield (s, np.asarray(ts, np.int64), np.asarray(value, np.float64),
                   np.asarray(anomalous, np.int8))

    def labelled_windows(self, series: Sequence[str], since_ms: int,
                         until_ms: int | None) -> list[tuple[str, int, int, str, str]]:
        """``(series, start_ms, end_ms, kind, type)`` of the stored labelled windows that
        overlap ``[since_ms, until_ms]``."""
        if not series:
            return []
        rows = self.execute(
            "SELECT series, start_ms, end_ms, kind, type FROM {db}.labels "
            "WHERE series = ANY(%(s)s) AND end_ms >= %(lo)s AND start_ms <= %(hi)s "
            "ORDER BY start_ms, series",
            {"s": list(series), "lo": int(since_ms),
             "hi": int(until_ms) if until_ms is not None else 2**62},
        )
        return [(s, int(a), int(b), k, t) for s, a, b, k, t in rows]

    def fill_series_from_steps(self) -> None:
        """The catalogue from the stored steps (a repair: the writer keeps it up to date)."""
        rows = self.execute(
            f"SELECT series, min({self._EPOCH_MS}), max({self._EPOCH_MS}) FROM {{db}}.steps "
            "GROUP BY series")
        out = []
        for series, first, last in rows or []:
            name, labels = parse_series(series)
            out.append((series, name, *label_lists(labels), int(first), int(last)))
        self.insert("series", out)


class NotifierState:
    """The notifier's memory in PostgreSQL, beside Redis (``notifier_state``: kind, key, text
    value): silences (``silence``) and what it told of each incident, acknowledgements
    included (``incident``, key ``receiver:incident``). Redis stays the notifier's working
    copy; :class:`vigil.sinks.delivery.NotifierStore` writes here too and reads back what
    Redis lost. Synchronous (call it in a thread); the schema is applied at first use."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._ready = False

    def _schema(self) -> PostgresStore:
        if not self._ready:
            self.store.ensure_schema()
            self._ready = True
        return self.store

    def put(self, kind: str, key: str, value: str) -> None:
        self._schema().execute(
            "INSERT INTO {db}.notifier_state (kind, key, value, updated_ms) VALUES "
            "(%s, %s, %s, %s) ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, "
            "updated_ms = EXCLUDED.updated_ms", (kind, key, value, time.time_ns() // 1_000_000))

    def get(self, kind: str, key: str) -> str | None:
        rows = self._schema().execute(
            "SELECT value FROM {db}.notifier_state WHERE kind = %s AND key = %s", (kind, key))
        return rows[0][0] if rows else None

    def all(self, kind: str) -> dict[str, str]:
        return dict(self._schema().execute(
            "SELECT key, value FROM {db}.notifier_state WHERE kind = %s", (kind,)))

    def delete(self, kind: str, keys: Sequence[str]) -> None:
        if keys:
            self._schema().execute("DELETE FROM {db}.notifier_state WHERE kind = %s AND "
                                   "key = ANY(%s)", (kind, list(keys)))
