"""``vigil backfill``: the worker's detection run over recorded telemetry, into the store.

The points go through the worker's own :class:`~vigil.streams.pipeline.DetectionPipeline`
in time order, from fresh states, so the stored steps, events and incidents are what a worker
would have stored had it seen the data live.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from vigil.detectors.resample import iter_points_in_time_order, step_of
from vigil.sinks.store import HistoryWriter, store_for_url
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings

__all__ = ["backfill"]



class _MemoryStates:
    """The state store of a backfill: every series starts fresh, states stay in the
    pipeline's own memory (duck-types :class:`~vigil.streams.state.RedisStateStore`)."""

    async def load(self, series, resumed: bool = False):
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
    :class:`~vigil.lab.datasets.Dataset`) and store its steps, events, incidents, series
    and labelled windows in the history store at ``url`` (``clickhouse://`` or
    ``postgresql://``). Returns row counts per table.

    The points go through :class:`~vigil.streams.pipeline.DetectionPipeline` in time order,
    ``chunk`` points at a time, from fresh states — exactly what a worker would have stored
    had it seen the data live. ``step_s`` overrides the detector's step (default: the
    settings' one).
    """


    settings = settings or Settings()
    params = settings.detector if step_s is None else replace(settings.detector, step_s=step_s)
    store = store_for_url(url)
    store.ensure_schema()
    writer = HistoryWriter(store, batch_rows=10**9, max_rows=10**9)
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


