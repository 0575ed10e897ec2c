"""Tests for the benchmark harness: output format and workload encoding, on tiny sizes.

No timing thresholds here — speed is what ``vigil bench`` reports, not what tests assert.
The end-to-end parts need a broker and a worker and are exercised by running the bench.
"""

from __future__ import annotations

import numpy as np
import orjson

from bench.pipeline import Workload
from bench.report import FIGURE_LINE, format_value, machine_line
from bench.run import run_detector
from vigil.devtools.replay import encode_messages
from vigil.streams.parsers import make_parser
from vigil.streams.state import VALUE_BYTES


def test_detector_figures_print_as_name_number_unit(capsys):
    results = run_detector({50: 2, 120: 2}, skip=1, learn_steps=80)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    parsed = {}
    for line in lines:
        match = FIGURE_LINE.match(line)
        assert match, f"not 'name: number unit': {line!r}"
        parsed[match["name"]] = (float(match["value"]), match["unit"])
    names = {"detector_core_50_series", "detector_core_120_series", "state_bytes_per_series"}
    assert parsed.keys() == results.keys() == names
    assert parsed["detector_core_50_series"][1] == "points/s"
    assert parsed["detector_core_50_series"][0] > 0
    assert parsed["state_bytes_per_series"] == (VALUE_BYTES, "bytes")


def test_format_value_never_uses_exponents():
    for value in (0.000123, 0.5, 7, 12.345, 999.9, 951_234.5, 3.2e9):
        text = format_value(value)
        assert "e" not in text
        assert FIGURE_LINE.match(f"x: {text} unit")
    assert format_value(1372) == "1372"  # sizes and counts are exact, not rounded


def test_machine_line():
    line = machine_line()
    assert line.startswith("machine: ")
    assert " cores, " in line and ", Python 3." in line


def test_workload_messages_are_what_replay_writes_and_the_parser_reads():
    workload = Workload(n_series=250, per_message=100, start_ms=1_714_564_800_000)
    values = workload.values(3)
    messages = workload.messages(3, values)
    assert [n for _, _, n in messages] == [0, 100, 200]
    # Keys group whole blocks of series, so each series stays on one partition.
    assert [key for key, _, _ in messages] == [b"0", b"1", b"2"]

    ts = np.full(250, workload.minute_ms(3))
    expected = [payload for payload, _ in encode_messages(workload.series, ts, values, 100)]
    assert [orjson.loads(p) for _, p, _ in messages] == [orjson.loads(p) for p in expected]

    parser = make_parser("auto")
    result = parser.parse(messages[1][1], now_ms=1_714_564_800_000 + 86_400_000)
    assert not result.rejects
    assert result.series == workload.series[100:200]
    assert result.values == values[100:200].tolist()


def test_alert_latency_bench_measures_every_incident(broker, redis_url):
    from bench.notifier import measure_alert_latency
    from bench.pipeline import Services

    result = measure_alert_latency(Services(broker, redis_url), incidents=5, rate=5.0)
    assert result.received == 5
    assert 0 < result.p50_ms <= result.p95_ms <= result.max_ms


def test_nab_variants_move_windows_onto_the_rows_and_score_like_the_lab(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from bench.nab_variants import score_variant, write_variant
    from vigil.lab.datasets import load_dataset
    from vigil.lab.run import run_detectors, summarise

    nab_dev = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev"
    rel = ["artificialWithAnomaly/art_daily_jumpsup.csv",
           "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"]
    src = tmp_path / "src"
    windows = json.loads((nab_dev / "combined_windows.json").read_text())
    for r in rel:
        (src / "data" / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nab_dev / "data" / r, src / "data" / r)
    (src / "combined_windows.json").write_text(json.dumps({r: windows[r] for r in rel}))
    # The original: the same figure as the lab's own sweep over the same scores.
    got = score_variant(src, tmp_path / "out")
    summary, _ = summarise(run_detectors(load_dataset(src), ["online"], 300, progress=False))
    lab = summary["detectors"]["online_score"]["nab"]
    for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert got[profile] == lab[profile]["score"]
    # Hourly means: a twelfth of the rows, every window still on rows of the file.
    write_variant(src, tmp_path / "hourly", "hourly means")
    hourly = load_dataset(tmp_path / "hourly")
    assert all(np.all(np.diff(s.ts_ms) == 3_600_000) for s in hourly.series.values())
    assert len(hourly.labels) == 3
    assert score_variant(tmp_path / "hourly", tmp_path / "out_h")["steps"] == [3600]


def test_nab_variants_read_a_corpus_with_empty_values_as_the_loader_does(tmp_path):
    import json

    from bench.nab_variants import write_variant
    from vigil.lab.datasets import load_dataset

    src = tmp_path / "src"
    (src / "data" / "x").mkdir(parents=True)
    rows = ["timestamp,value"] + [
        f"2024-01-{1 + h // 24:02d} {h % 24:02d}:00:00,{'' if h in (30, 31) else h % 5}"
        for h in range(96)]
    (src / "data" / "x" / "a.csv").write_text("\n".join(rows) + "\n")
    (src / "combined_windows.json").write_text(json.dumps(
        {"x/a.csv": [["2024-01-03 00:00:00.000000", "2024-01-03 05:00:00.000000"]]}))
    write_variant(src, tmp_path / "missing", "10% of rows missing")
    original, varied = load_dataset(src), load_dataset(tmp_path / "missing")
    (s,) = varied.series.values()
    assert len(s) < len(next(iter(original.series.values()))) == 94  # two empty rows left out
    assert np.isfinite(s.values).all() and len(varied.labels) == 1


def test_remote_write_bench_requests_decode_to_their_samples():
    from bench.remote_write import request_bodies
    from vigil.streams.remote_write import decode_write_request, to_messages

    bodies = request_bodies(requests=2, series=30, start_ms=1_714_564_800_000)
    out = [to_messages(decode_write_request(b, 1 << 20, 100)) for b in bodies]
    assert [o.samples for o in out] == [30, 30]
    parsed = [make_parser("json").parse(m, 1_714_564_800_000) for m in out[1].messages]
    assert sum(len(p) for p in parsed) == 30 and all(p.rejects == [] for p in parsed)
    assert sum(len(p.counters) for p in parsed) == 30


def test_generated_month_spreads_its_starts_over_a_week_on_the_minute():
    from bench.generated_month import STARTS_MS, spread_starts

    starts = spread_starts(16)
    assert len(set(starts)) == 16 and all(s % 60_000 == 0 for s in starts)
    assert starts[0] >= STARTS_MS[0] and starts[-1] < STARTS_MS[0] + 7 * 86_400_000
    hours = {(s % 86_400_000) // 3_600_000 for s in starts}
    assert len(hours) >= 8  # the demo starts at any hour: so must the spread
