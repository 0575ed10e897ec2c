"""Parquet files (``vigil export``'s layout) load into the same Dataset as CSVs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vigil.lab.datasets import load_dataset
from vigil.series import parse_series as parse_series_id
from vigil.series import series_id

T0 = 1_709_251_200_000  # 2024-03-01 00:00 UTC


def _write(path, **columns) -> None:
    pq.write_table(pa.table(columns), path)


def test_export_layout_with_series_and_labels(tmp_path):
    cpu, mem = 'cpu_usage_percent{host="db-1"}', 'mem_used_bytes{dc="a\\"b",host="db-1"}'
    ts = pa.array(np.r_[T0 + 60_000 * np.arange(6), T0 + 60_000 * np.arange(4)],
                  pa.timestamp("ms", tz="UTC"))
    _write(tmp_path / "export.parquet",
           timestamp=ts,
           value=pa.array([1.0, 2, 3, 4, 5, 6, 10, 11, 12, 13], pa.float64()),
           series=pa.array([cpu] * 6 + [mem] * 4),
           label=pa.array([0, 0, 1, 1, 0, 1, 0, 0, 0, 0], pa.int8()))
    ds = load_dataset(tmp_path / "export.parquet")
    assert ds.source == "parquet" and set(ds.series) == {cpu, mem}
    s = ds.series[cpu]
    assert s.name == "cpu_usage_percent" and s.labels == {"host": "db-1"}
    assert s.ts_ms.tolist() == (T0 + 60_000 * np.arange(6)).tolist()
    assert s.values.tolist() == [1, 2, 3, 4, 5, 6]
    assert ds.series[mem].labels == {"dc": 'a"b', "host": "db-1"}
    # Runs of label = 1 become windows, as in the CSV loader.
    assert [(lab.series, lab.start_ms, lab.end_ms) for lab in ds.labels] == [
        (cpu, T0 + 120_000, T0 + 180_000), (cpu, T0 + 300_000, T0 + 300_000)]


@pytest.mark.parametrize("stamps", [
    pa.array(T0 + 60_000 * np.arange(3), pa.int64()),
    pa.array(["2024-03-01T00:00:00Z", "2024-03-01 00:01:00", "2024-03-01T00:02:00+00:00"]),
    pa.array((T0 + 60_000 * np.arange(3)) * 1000, pa.timestamp("us")),
    pa.array(T0 + 60_000 * np.arange(3), pa.timestamp("ms", tz="UTC")),
])
def test_every_accepted_timestamp_form_gives_the_same_series(tmp_path, stamps):
    _write(tmp_path / "load-1.parquet", timestamp=stamps, value=[1.0, 2.0, 3.0])
    ds = load_dataset(tmp_path / "load-1.parquet")
    (s,) = ds.series.values()
    assert s.id == "load_1"  # no series column: one series named after the file
    assert s.ts_ms.tolist() == (T0 + 60_000 * np.arange(3)).tolist()
    assert ds.labels == []


def test_a_folder_unsorted_rows_nulls_and_duplicates(tmp_path):
    _write(tmp_path / "a.parquet", timestamp=pa.array([T0 + 120_000, T0, T0 + 60_000, T0],
                                                      pa.int64()),
           value=pa.array([3.0, 1.0, None, 9.0]))
    _write(tmp_path / "b.parquet", timestamp=pa.array([T0], pa.int64()), value=[5.0])
    ds = load_dataset(tmp_path)
    assert set(ds.series) == {"a", "b"}
    a = ds.series["a"]
    # Sorted, the null dropped, of two rows at one time the last one kept.
    assert a.ts_ms.tolist() == [T0, T0 + 120_000] and a.values.tolist() == [9.0, 3.0]
    assert ds.meta["duplicates_dropped"] == {"a": 1}


def test_bad_files_get_a_clear_error(tmp_path):
    _write(tmp_path / "x.parquet", ts=pa.array([T0], pa.int64()), value=[1.0])
    with pytest.raises(ValueError, match="expected columns 'timestamp' and 'value'"):
        load_dataset(tmp_path / "x.parquet")
    _write(tmp_path / "y.parquet", timestamp=pa.array([T0], pa.int64()), value=["high"])
    with pytest.raises(ValueError, match="'value' is not numeric"):
        load_dataset(tmp_path / "y.parquet")
    (tmp_path / "z.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_dataset(tmp_path / "z.parquet")
    _write(tmp_path / "w.parquet", timestamp=pa.array([T0], pa.int64()), value=[1.0],
           series=["cpu{host=db-1}"])
    with pytest.raises(ValueError, match="not a series id"):
        load_dataset(tmp_path / "w.parquet")


@pytest.mark.parametrize("sid", ["up", 'cpu{host="web-01"}', 'x{a="1",b="q\\"uote\\\\d"}'])
def test_series_ids_parse_back_to_themselves(sid):
    assert series_id(*parse_series_id(sid)) == sid
