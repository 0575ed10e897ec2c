"""Datasets on disk: synthetic telemetry round-trips, NAB and plain CSVs load, replay order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vigil.detectors.resample import iter_points_in_time_order
from vigil.lab.datasets import (
    AnomalyLabel,
    Dataset,
    SeriesData,
    load_dataset,
    metric_name,
    parse_timestamps_ms,
    write_telemetry,
)
from vigil.lab.synthetic import Telemetry, generate_telemetry
from vigil.series import parse_series, series_id

NAB_DEV = Path("/work/shared/data/nab-dev")
START_MS = 1_709_251_200_000  # 2024-03-01 00:00 UTC


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    return generate_telemetry(hosts=2, days=10, start_ms=START_MS, seed=11)


@pytest.fixture(scope="module")
def written(telemetry, tmp_path_factory) -> Path:
    return write_telemetry(telemetry, tmp_path_factory.mktemp("telemetry"))


@pytest.mark.parametrize(
    "name, labels",
    [
        ("up", None),
        ("up", {}),
        ("cpu_usage_percent", {"host": "web-01"}),
        ("node_load1", {"role": "db", "host": "db-1", "az": "eu-1a"}),
        ("weird", {"path": 'C:\\temp\\"x"', "note": "two\nlines", "n": 3}),
    ],
)
def test_the_lab_reads_series_ids_back_as_the_streams_layer_writes_them(name, labels):
    assert parse_series(series_id(name, labels)) == (
        name, {k: str(v) for k, v in (labels or {}).items()})


# --------------------------------------------------------------------------- synthetic files


def test_write_then_load_gives_back_exactly_the_same_telemetry(telemetry, written):
    ds = load_dataset(written)
    assert ds.source == "synthetic"
    assert list(ds.series) == list(telemetry.series)
    for sid, s in telemetry.series.items():
        back = ds.series[sid]
        assert (back.name, back.labels) == (s.name, s.labels)
        assert back.ts_ms.dtype == np.int64 and back.values.dtype == np.float64
        assert np.array_equal(back.ts_ms, s.ts_ms)
        assert np.array_equal(back.values, s.values)  # exact floats, not approximately
    assert ds.labels == telemetry.labels
    assert ds.meta["manifest"]["params"] == json.loads(json.dumps(telemetry.params))


def test_points_csv_is_long_format_sorted_by_time_then_series(telemetry, written):
    lines = (written / "points.csv").read_text().splitlines()
    assert lines[0] == "timestamp_ms,name,host,value"
    assert len(lines) - 1 == telemetry.n_points
    rows = [line.split(",") for line in lines[1:2000]]
    keys = [(int(ms), series_id(name, {"host": host})) for ms, name, host, _ in rows]
    assert keys == sorted(keys)
    ms, name, host, value = rows[0]
    assert float(value) == telemetry.series[series_id(name, {"host": host})].values[0]


def test_labels_csv_and_manifest_describe_the_data(telemetry, written):
    labels = (written / "labels.csv").read_text().splitlines()
    assert labels[0] == "series,name,host,start_ms,end_ms,start,end,kind,type"
    assert len(labels) - 1 == len(telemetry.labels)
    first = telemetry.labels[0]
    assert str(first.start_ms) in labels[1] and labels[1].endswith(f",{first.kind},{first.type}")
    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["format"] == "vigil-telemetry" and manifest["format_version"] == 1
    assert manifest["counts"]["points"] == telemetry.n_points
    assert manifest["counts"]["series"] == len(telemetry.series)
    assert sum(manifest["counts"]["labels_by_type"].values()) == len(telemetry.labels)
    assert manifest["start_ms"] == START_MS


def test_a_loaded_dataset_can_be_written_again(written, tmp_path):
    ds = load_dataset(written)
    again = load_dataset(write_telemetry(ds, tmp_path))
    assert again.labels == ds.labels
    assert again.meta["manifest"]["params"] == ds.meta["manifest"]["params"]
    for sid, s in ds.series.items():
        assert np.array_equal(again.series[sid].values, s.values)


def test_write_refuses_series_it_cannot_write_plainly(tmp_path):
    s = SeriesData("cpu", {"host": "a,b"}, np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="quoting"):
        write_telemetry(Dataset({s.id: s}, [], "csv"), tmp_path)
    s = SeriesData("cpu", {"host": "a", "dc": "x"}, np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="host"):
        write_telemetry(Dataset({s.id: s}, [], "csv"), tmp_path)


# --------------------------------------------------------------------------- NAB


@pytest.mark.skipif(not NAB_DEV.is_dir(), reason="NAB dev subset not available")
def test_nab_loads_every_file_and_window():
    ds = load_dataset(NAB_DEV)
    windows = json.loads((NAB_DEV / "combined_windows.json").read_text())
    assert ds.source == "nab"
    assert len(ds.series) == 28 == len(list((NAB_DEV / "data").glob("*/*.csv")))
    assert len(ds.labels) == sum(len(w) for w in windows.values())
    for key in windows:  # every file of the windows file is a series, named after it
        category, file = key.split("/")
        sid = series_id(metric_name(Path(file).stem), {"source": "nab", "category": category})
        assert np.all(np.diff(ds.series[sid].ts_ms) > 0)
    # Two real AWS files repeat a timestamp (a daylight-saving change): deduplicated, counted.
    rows = sum(len(f.read_text().splitlines()) - 1 for f in (NAB_DEV / "data").glob("*/*.csv"))
    assert ds.n_points + sum(ds.meta["duplicates_dropped"].values()) == rows

    cpu = ds.series['ec2_cpu_utilization_24ae8d{category="realAWSCloudwatch",source="nab"}']
    assert cpu.ts_ms[0] == parse_timestamps_ms(["2014-02-14 14:30:00"])[0]
    assert cpu.values[0] == 0.132
    assert metric_name("iio_us-east-1_i-a2eb1cd9_NetworkIn") in {s.name for s in ds.series.values()}
    for lab in ds.labels:
        s = ds.series[lab.series]
        assert s.ts_ms[0] <= lab.start_ms < lab.end_ms <= s.ts_ms[-1]
        assert (lab.kind, lab.type) == ("unknown", "nab_window")


@pytest.mark.skipif(not NAB_DEV.is_dir(), reason="NAB dev subset not available")
def test_nab_can_be_shifted_to_end_now():
    now_ms = 1_800_000_000_000
    original, shifted = load_dataset(NAB_DEV), load_dataset(NAB_DEV, shift_to_ms=now_ms)
    assert max(int(s.ts_ms[-1]) for s in shifted.series.values()) == now_ms
    offset = shifted.meta["shift_ms"]
    for sid, s in original.series.items():
        assert np.array_equal(shifted.series[sid].ts_ms, s.ts_ms + offset)
    assert [lab.start_ms + offset for lab in original.labels] == [
        lab.start_ms for lab in shifted.labels
    ]


# --------------------------------------------------------------------------- plain CSVs


def test_a_single_csv_with_a_label_column(tmp_path):
    path = tmp_path / "checkout-latency.csv"
    path.write_text(
        "timestamp,value,label\n"
        "2024-03-01T00:03:00Z,5.0,1\n"  # out of order: sorted on load
        "2024-03-01T00:00:00Z,1.0,0\n"
        "2024-03-01T00:01:00Z,2.0,1\n"
        "2024-03-01T00:02:00Z,,1\n"  # no value: a missing point
        "2024-03-01T00:04:00Z,3.0,0\n"
        "2024-03-01T00:05:00Z,9.0,1\n"
    )
    ds = load_dataset(path)
    s = ds.series["checkout_latency"]
    assert ds.source == "csv" and s.labels == {}
    assert s.ts_ms.tolist() == [START_MS + m * 60_000 for m in (0, 1, 3, 4, 5)]
    assert s.values.tolist() == [1.0, 2.0, 5.0, 3.0, 9.0]
    minute = 60_000
    assert ds.labels == [
        AnomalyLabel(
            "checkout_latency", START_MS + minute, START_MS + 3 * minute, "unknown", "labelled"
        ),
        AnomalyLabel(
            "checkout_latency", START_MS + 5 * minute, START_MS + 5 * minute, "unknown", "labelled"
        ),
    ]


def test_a_folder_of_csvs_with_epoch_timestamps(tmp_path):
    (tmp_path / "a.csv").write_text("timestamp,value\n1709251260,2\n1709251200,1\n")
    (tmp_path / "b.csv").write_text("timestamp,value\n1709251200000,7\n1709251200000,8\n")
    ds = load_dataset(tmp_path)
    assert ds.series["a"].ts_ms.tolist() == [START_MS, START_MS + 60_000]  # seconds
    assert ds.series["b"].ts_ms.tolist() == [START_MS]  # milliseconds
    assert ds.series["b"].values.tolist() == [8.0]  # a repeated timestamp keeps the last row
    assert ds.meta["duplicates_dropped"] == {"b": 1} and ds.labels == []


def test_timestamps_in_every_accepted_form_agree():
    forms = [
        "2024-03-01 00:00:00",
        "2024-03-01T00:00:00",
        "2024-03-01T00:00:00.000000",
        "2024-03-01T01:00:00+01:00",
        "2024-03-01T00:00:00Z",
        "1709251200",
        "1709251200000",
    ]
    for text in forms:
        assert parse_timestamps_ms([text]).tolist() == [START_MS], text


def test_unknown_paths_are_refused(tmp_path):
    with pytest.raises(ValueError):
        load_dataset(tmp_path)  # an empty folder
    (tmp_path / "x.csv").write_text("time,metric\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        load_dataset(tmp_path / "x.csv")


# --------------------------------------------------------------------------- replay order


def test_points_come_merged_in_time_order_in_chunks(telemetry):
    chunks = list(iter_points_in_time_order(telemetry, chunk=50_000))
    assert all(len(ids) == len(ts) == len(vs) for ids, ts, vs in chunks)
    assert all(len(ids) == 50_000 for ids, _, _ in chunks[:-1]) and len(chunks[-1][0]) <= 50_000
    ids = [sid for chunk in chunks for sid in chunk[0]]
    ts = np.concatenate([chunk[1] for chunk in chunks])
    values = np.concatenate([chunk[2] for chunk in chunks])
    assert len(ts) == telemetry.n_points
    keys = list(zip(ts.tolist(), ids, strict=True))
    assert keys == sorted(keys)  # by time, then series id
    ids = np.array(ids)
    for sid, s in telemetry.series.items():  # every series gets all its points, in order
        mine = ids == sid
        assert np.array_equal(ts[mine], s.ts_ms) and np.array_equal(values[mine], s.values)


def test_replay_can_shift_the_newest_point_to_now(telemetry):
    now_ms = 1_800_000_000_123
    newest = max(int(s.ts_ms[-1]) for s in telemetry.series.values())
    plain = list(iter_points_in_time_order(telemetry, chunk=100_000))
    moved = list(iter_points_in_time_order(telemetry, chunk=100_000, shift_to_ms=now_ms))
    assert moved[-1][1][-1] == now_ms
    for (ids_a, ts_a, vs_a), (ids_b, ts_b, vs_b) in zip(plain, moved, strict=True):
        assert ids_a == ids_b and np.array_equal(vs_a, vs_b)
        assert np.all(ts_b - ts_a == now_ms - newest)
