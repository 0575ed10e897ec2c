"""History storage behind one interface: ClickHouse or PostgreSQL.

* :class:`HistoryStore` — what the worker's writer, the dashboard, ``vigil backfill`` /
  ``export`` / ``evaluate`` / ``train`` need of a store (synchronous; async callers run it in
  an executor). :class:`vigil.sinks.clickhouse.ClickHouseStore` and
  :class:`vigil.sinks.postgres.PostgresStore` implement it, on the same tables and columns
  (:data:`vigil.sinks.clickhouse.TABLES`).
* :func:`open_store` / :func:`store_for_url` — the store the settings (or a URL) name:
  ``clickhouse://`` or ``postgresql://``.
* :class:`HistoryWriter` — the worker's bounded, batched, non-blocking path into either store:
  detection never waits on storage; when the store is slow or down the oldest rows are
  dropped, counted.

What both stores share lives beside ClickHouse's schema, in :mod:`vigil.sinks.clickhouse`
(which imports neither this module nor PostgreSQL's): the column lists ``TABLES``, the row
makers ``event_row`` / ``feedback_row``, and ``FoldedUpserts`` (the incidents' latest state
folded from their events, the series catalogue's first/last seen, merged with what is stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from vigil.sinks.clickhouse import ClickHouseStore, event_row, feedback_row

__all__ = [
    "TABLE_NAMES",
    "HistoryStore",
    "HistoryWriter",
    "notifier_state",
    "open_store",
    "store_for_url",
    "store_kind",
]

log = logging.getLogger(__name__)

#: The tables every store has (their columns: :data:`vigil.sinks.clickhouse.TABLES`).
TABLE_NAMES = ("steps", "events", "incidents", "feedback", "series", "labels")

#: URL schemes per store kind.
SCHEMES = {"clickhouse": ("clickhouse", "clickhouses"),
           "postgres": ("postgresql", "postgres")}


@runtime_checkable
class HistoryStore(Protocol):
    """What vigil needs of a history store. Rows are tuples whose columns are those of
    :data:`vigil.sinks.clickhouse.TABLES` (times: ``ts``/``opened``/``start`` in epoch seconds,
    ``*_ms`` in epoch milliseconds, labels as two lists)."""

    url: str
    #: ``clickhouse`` or ``postgres``
    kind: str

    # ---- schema and writes
    def ensure_schema(self, target: int = ...) -> list[int]: ...
    def schema_version(self) -> int: ...
    def tables(self) -> list[str]: ...
    def insert(self, table: str, rows: Sequence[tuple]) -> int: ...
    def insert_columns(self, table: str, columns: Sequence[list]) -> int: ...
    def upsert_series(self, seen: Mapping[str, tuple[int, int]]) -> int: ...
    def upsert_incidents(self, events: Sequence[tuple]) -> int: ...
    def drop_expired(self, retention_days: int, now_ms: int | None = None) -> list[str]: ...
    def transient(self, exc: BaseException) -> bool: ...
    def schema_gone(self, exc: BaseException) -> bool: ...
    def ping(self) -> bool: ...
    def drop(self) -> None: ...  # everything (tests, benchmarks)
    def close(self) -> None: ...

    # ---- reads (the dashboard's contract)
    def series_summary(self, since_ms: int) -> list[dict]: ...
    def series_steps(self, series: str, since_ms: int, until_ms: int) -> dict: ...
    def incident(self, incident_id: str) -> dict | None: ...
    def recent_events(self, limit: int) -> list[dict]: ...

    # ---- history out (export, the lab)
    def series_matching(self, selectors: Sequence[str]) -> list[str]: ...
    def read_points(self, series: Sequence[str], since_ms: int, until_ms: int | None = None
                    ) -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]: ...
    def labelled_windows(self, series: Sequence[str], since_ms: int, until_ms: int | None
                         ) -> list[tuple[str, int, int, str, str]]: ...
    def count(self, table: str) -> int: ...


def store_kind(url: str) -> str:
    """``clickhouse`` or ``postgres`` from the URL's scheme (ValueError otherwise)."""
    scheme = urlsplit(url).scheme
    for kind, schemes in SCHEMES.items():
        if scheme in schemes:
            return kind
    from vigil.redact import redact_url

    raise ValueError(f"not a history store URL (clickhouse:// or postgresql://): "
                     f"{redact_url(url)!r}")


def store_for_url(url: str) -> HistoryStore:
    """A :class:`ClickHouseStore` or :class:`PostgresStore` for ``url`` (not connected
    before its first call)."""
    if store_kind(url) == "postgres":
        from vigil.sinks.postgres import PostgresStore

        return PostgresStore(url)
    return ClickHouseStore(url)


def open_store(settings: Any) -> HistoryStore | None:
    """The store the settings configure (``postgres_url`` or ``clickhouse_url``; the settings
    refuse both), or None when history storage is off."""
    url = getattr(settings, "postgres_url", "") or getattr(settings, "clickhouse_url", "")
    return store_for_url(url) if url else None


def notifier_state(settings: Any) -> Any:
    """Where the notifier keeps silences and incident records beside Redis: a
    :class:`~vigil.sinks.postgres.NotifierState` when ``postgres_url`` is set, else None
    (Redis only)."""
    url = getattr(settings, "postgres_url", "")
    if not url:
        return None
    from vigil.sinks.postgres import NotifierState, PostgresStore

    return NotifierState(PostgresStore(url))


# --------------------------------------------------------------------------- writer


@dataclass
class _Chunk:
    """Rows of one table, column by column."""

    table: str
    columns: list[list]

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def rows(self) -> list[tuple]:
        return list(zip(*self.columns, strict=True))


class HistoryWriter:
    """The worker's bounded, batched, non-blocking path into a :class:`HistoryStore`.

    ``add_*`` only append to an in-memory buffer (no I/O, never waits). :meth:`run` — a
    background task — flushes when ``batch_rows`` rows are waiting or ``flush_s`` seconds
    have passed, in an executor thread; a failed flush puts its rows back and is retried with
    exponential backoff (tenacity) while new rows keep arriving. Beyond ``max_rows`` buffered
    rows the oldest are dropped, counted in ``dropped`` (and the ``on_drop`` callback) and
    logged once per burst. Rows the store refuses for good (``store.transient`` is false) are
    dropped, counted the same way, rather than block every later write.
    """

    def __init__(
        self,
        store: HistoryStore,
        batch_rows: int = 20_000,
        flush_s: float = 2.0,
        max_rows: int = 1_000_000,
        on_written: Callable[[str, int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[], None] | None = None,
        on_buffer: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.name = {"postgres": "PostgreSQL"}.get(getattr(store, "kind", ""), "ClickHouse")
        self.batch_rows = max(1, batch_rows)
        self.flush_s = flush_s
        self.max_rows = max(1, max_rows)
        self.on_written = on_written or (lambda table, n: None)
        self.on_drop = on_drop or (lambda n: None)
        self.on_error = on_error or (lambda: None)
        self.on_buffer = on_buffer or (lambda n: None)
        self._chunks: deque[_Chunk] = deque()
        self.buffered = 0
        self.dropped = 0
        self.written: dict[str, int] = dict.fromkeys(TABLE_NAMES, 0)
        self.errors = 0
        self._wake = asyncio.Event()
        self._last_flush = time.monotonic()
        self._dropping_logged = False
        self._closing = False
        self.schema_ready = False
        self._lost: list[tuple[str, int, BaseException]] = []
        self._in_flight = 0

    def transient(self, exc: BaseException) -> bool:
        return self.store.transient(exc)

    @property
    def pending(self) -> int:
        """Rows not stored yet: buffered plus those of the insert under way (the gauge)."""
        return self.buffered + self._in_flight

    # ---- adding rows (event loop, no I/O)

    def add(self, table: str, rows: list[tuple]) -> None:
        """Buffer row tuples (columns as in :data:`~vigil.sinks.clickhouse.TABLES`)."""
        if rows:
            self.add_columns(table, [list(c) for c in zip(*rows, strict=True)])

    def add_columns(self, table: str, columns: list[list]) -> None:
        """Buffer rows given column by column (equal-length lists)."""
        chunk = _Chunk(table, columns)
        if not len(chunk):
            return
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        over = self.pending - self.max_rows
        if over > 0:
            self._drop_oldest(over)
        self.on_buffer(self.pending)
        if self.buffered >= self.batch_rows:
            self._wake.set()

    def _drop_oldest(self, count: int) -> None:
        dropped = 0
        while dropped < count and self._chunks:
            chunk = self._chunks[0]
            take = min(count - dropped, len(chunk))
            if take == len(chunk):
                self._chunks.popleft()
            else:
                for column in chunk.columns:
                    del column[:take]
            dropped += take
        self.buffered -= dropped
        self.dropped += dropped
        self.on_drop(dropped)
        if not self._dropping_logged:
            log.warning("%s buffer full (%d rows): dropping the oldest rows "
                        "(%d dropped so far)", self.name, self.max_rows, self.dropped)
            self._dropping_logged = True

    def add_steps(self, touched: Sequence[str], results: Any) -> None:
        """A batch's scored steps (a :class:`~vigil.detectors.online.StepResults` whose
        ``steps.index`` points into ``touched``) and the series catalogue's update."""
        steps = results.steps
        n = len(steps.ts_ms)
        if n == 0:
            return
        index = np.asarray(steps.index)
        names = np.asarray(touched, dtype=object)
        ts_s = (np.asarray(steps.ts_ms, np.int64) // 1000).tolist()
        anomalous = (np.asarray(results.anomaly_type) > 0).astype(np.uint8).tolist()
        self.add_columns("steps", [
            names[index].tolist(), ts_s, np.asarray(steps.value, float).tolist(),
            np.asarray(results.expected, float).tolist(),
            np.asarray(results.lower, float).tolist(), np.asarray(results.upper, float).tolist(),
            np.asarray(results.z, float).tolist(), anomalous])
        # Steps come by series then time: first and last step of each series.
        starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
        ends = np.r_[starts[1:], n] - 1
        ts = np.asarray(steps.ts_ms, np.int64)
        self.add("series", [
            (touched[i], int(ts[a]), int(ts[b]))
            for i, a, b in zip(index[starts].tolist(), starts.tolist(), ends.tolist(),
                               strict=True)
        ])

    def add_events(self, events: Iterable[Any]) -> None:
        self.add("events", [event_row(e) for e in events])

    def add_feedback(self, records: Iterable[Any]) -> None:
        self.add("feedback", [feedback_row(f) for f in records])

    # ---- flushing (executor thread)

    def _take(self) -> list[_Chunk]:
        chunks = list(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return chunks

    def _put_back(self, chunks: list[_Chunk]) -> None:
        self._chunks.extendleft(reversed(chunks))
        self.buffered += sum(len(c) for c in chunks)
        over = self.pending - self.max_rows
        if over > 0:
            self._drop_oldest(over)
        self.on_buffer(self.pending)

    def _write(self, chunks: list[_Chunk]) -> list[_Chunk]:
        """Insert the chunks table by table (steps, series, events, incidents, feedback);
        returns the chunks of tables that failed (and re-raises the first error after)."""
        if not self.schema_ready:
            # At the first write, not at start: the store may be down when the worker starts.
            self.store.ensure_schema()
            self.schema_ready = True
        self._lost = []
        by_table: dict[str, _Chunk] = {}
        for c in chunks:
            merged = by_table.get(c.table)
            if merged is None:
                by_table[c.table] = _Chunk(c.table, [list(col) for col in c.columns])
            else:
                for into, col in zip(merged.columns, c.columns, strict=True):
                    into.extend(col)
        failed: list[_Chunk] = []
        error: Exception | None = None
        for table in ("steps", "series", "events", "feedback", "labels"):
            chunk = by_table.get(table)
            if chunk is None or not len(chunk):
                continue
            if error is not None:
                failed.append(chunk)
                continue
            try:
                if table == "series":
                    seen: dict[str, tuple[int, int]] = {}
                    for s, first, last in chunk.rows():
                        old = seen.get(s)
                        seen[s] = (first, last) if old is None else (
                            min(old[0], first), max(old[1], last))
                    self.store.upsert_series(seen)
                elif table == "events":
                    # Incidents first: their merge reads which events are already stored.
                    incidents = self.store.upsert_incidents(chunk.rows())
                    self.written["incidents"] += incidents
                    self.on_written("incidents", incidents)
                    self.store.insert_columns("events", chunk.columns)
                else:
                    self.store.insert_columns(table, chunk.columns)
                self.written[table] += len(chunk)
                self.on_written(table, len(chunk))
            except Exception as exc:  # noqa: BLE001 - kept and re-raised for the retry
                if not self.transient(exc):
                    # Retrying cannot help (a bad row, a query the server refuses): give the
                    # rows up — counted — rather than block every later write.
                    self._lost.append((table, len(chunk), exc))
                    continue
                if self.store.schema_gone(exc):
                    self.schema_ready = False
                error = exc
                failed.append(chunk)
        if error is not None:
            raise _PartialFlush(failed) from error
        return failed

    def _count_lost(self) -> None:
        for table, n, exc in self._lost:
            self.dropped += n
            self.on_drop(n)
            self.errors += 1
            self.on_error()
            log.error("%s refused %d %s rows, dropped (not retried): %s", self.name, n, table,
                      str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        self._lost = []

    async def flush(self) -> None:
        """Write everything buffered now (one attempt); on failure the rows go back."""
        chunks = self._take()
        if not chunks:
            return
        self._in_flight = sum(len(c) for c in chunks)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._write, chunks)
        except _PartialFlush as partial:
            self._in_flight = 0
            self._count_lost()
            self.errors += 1
            self.on_error()
            self._put_back(partial.failed)
            raise partial.__cause__ from None
        except BaseException as exc:
            self._in_flight = 0
            if isinstance(exc, Exception):
                self.errors += 1
                self.on_error()
            self._put_back(chunks)
            if isinstance(exc, Exception) and not self.transient(exc):
                log.error("%s schema could not be applied: %s", self.name, exc)
            raise
        self._in_flight = 0
        self.on_buffer(self.pending)
        self._count_lost()
        self._last_flush = time.monotonic()
        if self._dropping_logged and self.buffered < self.max_rows:
            self._dropping_logged = False

    async def flush_with_retry(self, stop_after: float | None = None) -> None:
        """Flush, retrying with exponential backoff (0.2 s up to 30 s) on errors."""
        deadline = None if stop_after is None else time.monotonic() + stop_after

        def give_up(state) -> bool:
            return deadline is not None and time.monotonic() >= deadline

        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(max=30.0, jitter=0.2, multiplier=0.2),
            retry=retry_if_exception(self.transient),
            stop=give_up, reraise=True,
            before_sleep=lambda state: log.warning(
                "%s write failed (%s); %d rows buffered, retrying in %.1f s", self.name,
                state.outcome.exception(), self.buffered, state.next_action.sleep),
        ):
            with attempt:
                await self.flush()

    async def run(self) -> None:
        """The background task: flush by size or time, forever (until cancelled)."""
        while not self._closing:
            timeout = max(0.0, self._last_flush + self.flush_s - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.buffered:
                try:
                    await self.flush_with_retry()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - storage must never stop the worker
                    log.exception("%s flush failed; rows stay buffered", self.name)
            else:
                self._last_flush = time.monotonic()

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what is left (trying for up to ``timeout`` seconds), then stop."""
        self._closing = True
        self._wake.set()
        if self.buffered:
            try:
                await self.flush_with_retry(stop_after=timeout)
            except Exception as exc:  # noqa: BLE001
                log.error("%s unreachable at shutdown: %d rows not written (%s)", self.name,
                          self.buffered, exc)


class _PartialFlush(Exception):
    def __init__(self, failed: list[_Chunk]) -> None:
        super().__init__(f"{len(failed)} tables not written")
        self.failed = failed
