"""The worker's hook into history storage (ClickHouse or PostgreSQL), when ``clickhouse_url``
or ``postgres_url`` is set.

:func:`attach_storage` gives the detect agent a :class:`History` to hand each batch to (steps,
events — a memory append, never a wait), and adds to the app: the writer's background flush
task, an agent that stores operators' feedback, and a daily retention timer. The writer
itself — bounded buffer, retries, drop-oldest — is :class:`vigil.sinks.store.HistoryWriter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import faust
import orjson

from vigil.events import AnomalyEvent
from vigil.redact import redact_url
from vigil.sinks import metrics
from vigil.sinks.clickhouse import feedback_row
from vigil.sinks.store import HistoryStore, HistoryWriter, open_store
from vigil.streams.settings import Settings

__all__ = ["History", "attach_storage", "new_writer"]

log = logging.getLogger("vigil.storage")


def new_writer(settings: Settings, store: HistoryStore | None = None) -> HistoryWriter:
    """A writer with the settings' bounds whose counts feed the worker's metrics (named
    ``vigil_clickhouse_*`` for either store)."""
    return HistoryWriter(
        store or open_store(settings),
        batch_rows=settings.clickhouse_batch_rows,
        flush_s=settings.clickhouse_flush_s,
        max_rows=settings.clickhouse_buffer_max_rows,
        on_written=lambda table, n: metrics.CLICKHOUSE_ROWS_WRITTEN.labels(table=table).inc(n),
        on_drop=metrics.CLICKHOUSE_ROWS_DROPPED.inc,
        on_error=metrics.CLICKHOUSE_ERRORS.inc,
        on_buffer=metrics.CLICKHOUSE_BUFFER_ROWS.set,
    )


class History:
    """What the detect agent calls once per batch."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    def record(self, series: Sequence[str], results, events: Sequence[AnomalyEvent]) -> None:
        if results is not None:
            self.writer.add_steps(series, results)
        if events:
            self.writer.add_events(events)


def attach_storage(app: faust.App, settings: Settings) -> History | None:
    """Wire history storage into ``app``; None when no store is configured."""
    if not settings.store_url:
        log.info("history storage is off (neither VIGIL_CLICKHOUSE_URL nor VIGIL_POSTGRES_URL "
                 "is set)")
        return None
    writer = new_writer(settings)
    history = History(writer)
    feedback_topic = app.topic(
        settings.feedback_topic, internal=True, key_serializer="raw", value_serializer="raw"
    )

    @app.task
    async def clickhouse_writer() -> None:
        log.info("%s storage on: %s (batches of %d rows or %.1f s, buffer bound %d)",
                 writer.name, redact_url(writer.store.url), writer.batch_rows, writer.flush_s,
                 writer.max_rows)
        try:
            await writer.run()
        finally:
            await writer.close()

    @app.agent(feedback_topic, name="vigil.feedback-store")
    async def store_feedback(stream):
        async for records in stream.take(500, 1.0):
            good = []
            for raw in records:
                try:
                    doc = orjson.loads(raw)
                    good.append(feedback_row(doc))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    # The notifier writes this topic; a stray record is skipped, not fatal.
                    log.warning("feedback record not stored (%s): %.200r", exc, raw)
            writer.add("feedback", good)

    last_retention = [0.0]

    # Checked hourly (a timer's first run is one interval after start), run once a day by
    # the group's leader, so workers restarted daily still apply it.
    @app.timer(3_600.0, on_leader=True)
    async def retention() -> None:
        if not settings.retention_days or not writer.schema_ready:
            return
        if time.monotonic() - last_retention[0] < 86_400 and last_retention[0]:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, writer.store.drop_expired, settings.retention_days)
            last_retention[0] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - retried at the next check
            log.warning("%s retention failed: %s", writer.name, exc)

    return history
