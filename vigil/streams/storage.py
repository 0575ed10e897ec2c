"""The worker's hook into history storage (ClickHouse), when ``clickhouse_url`` is set.

:func:`attach_storage` gives the detect agent a :class:`History` to hand each batch to (steps,
events — a memory append, never a wait), and adds to the app: the writer's background flush
task, an agent that stores operators' feedback, and a daily retention timer. The writer
itself — bounded buffer, retries, drop-oldest — is :class:`vigil.sinks.clickhouse.
ClickHouseWriter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import faust
import orjson

from vigil.sinks.clickhouse import ClickHouseStore, ClickHouseWriter, feedback_row
from vigil.streams import metrics
from vigil.streams.records import AnomalyEvent
from vigil.streams.settings import Settings

__all__ = ["History", "attach_storage", "new_writer"]

log = logging.getLogger("vigil.storage")


def new_writer(settings: Settings, store: ClickHouseStore | None = None) -> ClickHouseWriter:
    """A writer with the settings' bounds whose counts feed the worker's metrics."""
    return ClickHouseWriter(
        store or ClickHouseStore(settings.clickhouse_url),
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

    def __init__(self, writer: ClickHouseWriter) -> None:
        self.writer = writer

    def record(self, series: Sequence[str], results, events: Sequence[AnomalyEvent]) -> None:
        if results is not None:
            self.writer.add_steps(series, results)
        if events:
            self.writer.add_events(events)


def attach_storage(app: faust.App, settings: Settings) -> History | None:
    """Wire ClickHouse storage into ``app``; None when ``clickhouse_url`` is empty."""
    if not settings.clickhouse_url:
        log.info("ClickHouse storage is off (VIGIL_CLICKHOUSE_URL is not set)")
        return None
    writer = new_writer(settings)
    history = History(writer)
    feedback_topic = app.topic(
        settings.feedback_topic, internal=True, key_serializer="raw", value_serializer="raw"
    )

    @app.task
    async def clickhouse_writer() -> None:
        log.info("ClickHouse storage on: %s (batches of %d rows or %.1f s, buffer bound %d)",
                 writer.store.url.split("@")[-1], writer.batch_rows, writer.flush_s,
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
            log.warning("ClickHouse retention failed: %s", exc)

    return history


# --------------------------------------------------------------------------- history in/out


class _MemoryStates:
    """The state store of a backfill: every series starts fresh, states stay in the
    pipeline's own memory (duck-types :class:`~vigil.streams.state.RedisStateStore`)."""

    async def load(self, series):
        return [None] * len(series)

    async def save(self, series, states, points: int = 0) -> None:
        return None


def backfill(
    dataset,
    url: str,
    settings: Settings | None = None,
    step_s: int | None = None,
    chunk: int = 50_000,
    progress=None,
) -> dict[str, int]:
    """Run the worker's detection code causally over ``dataset`` (a
    :class:`~vigil.detectors.datasets.Dataset`) and store its steps, events, incidents, series
    and labelled windows in ClickHouse at ``url``. Returns row counts per table.

    The points go through :class:`~vigil.streams.pipeline.DetectionPipeline` in time order,
    ``chunk`` points at a time, from fresh states — exactly what a worker would have stored
    had it seen the data live. ``step_s`` overrides the detector's step (default: the
    settings' one).
    """
    from dataclasses import replace

    from vigil.detectors.datasets import iter_points_in_time_order
    from vigil.detectors.resample import step_of
    from vigil.streams.pipeline import DetectionPipeline

    settings = settings or Settings()
    params = settings.detector if step_s is None else replace(settings.detector, step_s=step_s)
    store = ClickHouseStore(url)
    store.ensure_schema()
    writer = ClickHouseWriter(store, batch_rows=10**9, max_rows=10**9)
    pipeline = DetectionPipeline(_MemoryStates(), params, directions=settings.directions,
                                 history_steps=0)

    async def run() -> None:
        for series, ts, values in iter_points_in_time_order(dataset, chunk):
            batch = await pipeline.process(series, ts, values)
            await pipeline.save(batch)
            writer.add_steps(batch.series, batch.results)
            writer.add_events(batch.events)
            await writer.flush_with_retry(stop_after=10)
            if progress is not None:
                progress(len(series))
        # The resampler closes a step when a later one begins: one point per series at the
        # grid time after its last step closes that step (the probe's own step is never scored).
        step_ms = params.step_ms
        ends = [(sid, s.ts_ms[-1], s.values[-1]) for sid, s in dataset.series.items() if len(s)]
        if ends:
            import numpy as np

            last = np.array([int(t) for _, t, _ in ends], np.int64)
            batch = await pipeline.process(
                [sid for sid, _, _ in ends], step_of(last, step_ms) + step_ms,
                np.array([float(v) for _, _, v in ends]))
            writer.add_steps(batch.series, batch.results)
            writer.add_events(batch.events)
        writer.add("labels", [
            (lab.series, int(lab.start_ms), int(lab.end_ms), lab.kind, lab.type,
             int(lab.start_ms) // 1000)
            for lab in dataset.labels
        ])
        await writer.flush_with_retry(stop_after=10)

    try:
        asyncio.run(run())
    finally:
        store.close()
    return dict(writer.written)


def _points_table(store: ClickHouseStore, selectors: Sequence[str], since_ms: int,
                  until_ms: int | None):
    """The selected series' stored steps (missing values left out) as a pyarrow table in the
    shared snapshot layout: ``timestamp`` (ms, UTC), ``value``, ``series``, ``label`` (0/1 from
    the stored labelled windows)."""
    import numpy as np
    import pyarrow as pa

    series = store.series_matching(selectors)
    windows: dict[str, list[tuple[int, int]]] = {}
    for s, start, end, _, _ in store.labelled_windows(series, since_ms, until_ms):
        windows.setdefault(s, []).append((start, end))
    parts = []
    for s, ts, value, _ in store.read_points(series, since_ms, until_ms):
        keep = np.isfinite(value)
        ts, value = ts[keep], value[keep]
        label = np.zeros(len(ts), np.int8)
        for start, end in windows.get(s, ()):
            label[(ts >= start) & (ts <= end)] = 1
        parts.append(pa.table({
            "timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "value": pa.array(value, pa.float64()),
            "series": pa.array([s] * len(ts), pa.string()),
            "label": pa.array(label, pa.int8()),
        }))
    schema = pa.schema([("timestamp", pa.timestamp("ms", tz="UTC")), ("value", pa.float64()),
                        ("series", pa.string()), ("label", pa.int8())])
    return pa.concat_tables(parts) if parts else schema.empty_table()


def export(url: str, selectors: Sequence[str], since_ms: int, until_ms: int | None,
           fmt: str, out) -> int:
    """Write the selected series' steps to ``out`` as Parquet or CSV; returns the rows."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    store = ClickHouseStore(url)
    try:
        table = _points_table(store, selectors, since_ms, until_ms)
    finally:
        store.close()
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(table, out)
    else:
        raise ValueError(f"unknown format {fmt!r}: parquet or csv")
    return table.num_rows


def load_history(url: str, selectors: Sequence[str] = (), since_ms: int = 0,
                 until_ms: int | None = None):
    """The stored steps of the selected series as the same in-memory
    :class:`~vigil.detectors.datasets.Dataset` the file loaders return (``source``
    ``clickhouse``); labels are the stored labelled windows (from backfilled data sets)."""
    from vigil.detectors.datasets import AnomalyLabel, Dataset, SeriesData
    from vigil.detectors.resample import step_of
    from vigil.streams.records import parse_series

    store = ClickHouseStore(url)
    try:
        series = {}
        import numpy as np

        for s, ts, value, _ in store.read_points(
                store.series_matching(selectors), since_ms, until_ms):
            keep = np.isfinite(value)
            name, labels = parse_series(s)
            series[s] = SeriesData(name, labels, ts[keep], value[keep])
        labels = []
        for s, a, b, k, t in store.labelled_windows(list(series), since_ms, until_ms):
            # Rows are steps stamped with their grid time (the centre of the step): a window
            # starts and ends on the steps that hold its first and last labelled point (NAB's
            # scorer needs rows), or the last stored step before them. The step is the
            # smallest spacing of the stored steps (short gaps were filled when stored).
            ts = series[s].ts_ms
            if not len(ts):
                continue
            if len(ts) > 1:
                a, b = step_of(np.array([a, b], np.int64), int(np.diff(ts).min()))
            lo, hi = np.searchsorted(ts, [a, b], side="right") - 1
            labels.append(AnomalyLabel(s, int(ts[max(lo, 0)]), int(ts[max(hi, 0)]), k, t))
    finally:
        store.close()
    return Dataset(series, labels, source="clickhouse",
                   meta={"path": url.split("@")[-1], "since_ms": since_ms,
                         "until_ms": until_ms})
