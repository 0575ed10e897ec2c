"""History stored by the worker, read back for the lab: ``vigil export`` and the
``--store`` source of ``vigil evaluate`` / ``vigil train``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vigil.detectors.resample import step_of
from vigil.lab.datasets import AnomalyLabel, Dataset, SeriesData
from vigil.redact import redact_url
from vigil.series import parse_series
from vigil.sinks.store import HistoryStore, store_for_url

__all__ = ["export", "load_history"]


def _points_table(store: HistoryStore, selectors: Sequence[str], since_ms: int,
                  until_ms: int | None):
    """The selected series' stored steps (missing values left out) as a pyarrow table in the
    shared snapshot layout: ``timestamp`` (ms, UTC), ``value``, ``series``, ``label`` (0/1 from
    the stored labelled windows)."""
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

    store = store_for_url(url)
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
    :class:`~vigil.lab.datasets.Dataset` the file loaders return (``source``
    ``clickhouse`` or ``postgres``: the store's kind); labels are the stored labelled
    windows (from backfilled data sets)."""

    store = store_for_url(url)
    try:
        series = {}
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
    return Dataset(series, labels, source=store.kind,
                   meta={"path": redact_url(url), "since_ms": since_ms,
                         "until_ms": until_ms})
