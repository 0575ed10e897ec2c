"""``vigil evaluate`` on a small generated dataset: metrics.json, report.html and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.cli import app
from vigil.lab.datasets import infer_step_s, load_dataset, write_telemetry
from vigil.lab.nab import PROFILES, normalised, raw_score
from vigil.lab.run import (
    EARLIER_ONLINE,
    ENTRY_NAMES,
    LSTM_ENTRIES,
    decompose_series,
    run_detectors,
    summarise,
)
from vigil.lab.synthetic import generate_telemetry

START_MS = 1_700_006_400_000


@pytest.fixture(scope="module")
def telemetry(tmp_path_factory) -> Path:
    t = generate_telemetry(
        hosts=1, metrics=["cpu_usage_percent", "http_latency_ms"], days=9, step_s=300,
        start_ms=START_MS, seed=5,
    )
    return write_telemetry(t, tmp_path_factory.mktemp("telemetry"))


def test_evaluate_writes_metrics_and_a_report_naming_every_detector(telemetry, tmp_path):
    out = tmp_path / "lab"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(telemetry), "--out", str(out), "--protocol", "nab"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"dataset", "protocol", "preparation", "detectors", "series",
                            "best_worst", "run_seconds", "cross_validation"}
    assert metrics["protocol"]["name"] == "nab"
    assert metrics["dataset"]["step_s"] == 300 and metrics["dataset"]["series"] == 2
    # The default run: every detector but those trained on other series and the detector of
    # an earlier day (run on request).
    on_request = {"mlp", *LSTM_ENTRIES, *(f"online+{n}" for n in LSTM_ENTRIES),
                  *EARLIER_ONLINE}
    assert set(metrics["detectors"]) == set(ENTRY_NAMES) - on_request
    for entry in metrics["detectors"].values():
        assert set(entry["nab"]) == set(PROFILES)
        assert {"precision", "recall", "f1"} <= set(entry["event"])
        assert {"point_f1", "point_adjusted_f1_inflated", "mean_delay_min"} <= set(entry)
        assert 0.0 <= entry["event"]["f1"] <= 1.0
    report = (out / "report.html").read_text()
    for name in set(ENTRY_NAMES) - on_request:
        assert name in report
    plots = sorted((out / "plots").glob("*.png"))
    decompositions = sorted((out / "plots").glob("*_stl.png"))
    assert len(plots) == 4 and len(decompositions) == 2
    for p in plots:
        assert f'src="plots/{p.name}"' in report
    for p in decompositions:
        assert f'href="plots/{p.name}"' in report


def test_evaluate_reports_each_series_period_and_strengths(telemetry, tmp_path):
    out = tmp_path / "lab"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(telemetry), "--out", str(out), "--detectors", "ocsvm"]
    )
    assert result.exit_code == 0, result.output
    series = json.loads((out / "metrics.json").read_text())["series"]
    dataset = load_dataset(telemetry)
    for sid, entry in series.items():
        s = dataset.series[sid]
        _, d = decompose_series(s.ts_ms, s.values, 300)
        assert entry["period_steps"] == d.period
        assert entry["seasonal_strength"] == pytest.approx(d.seasonal_strength)
        assert entry["trend_strength"] == pytest.approx(d.trend_strength)
        assert 0.0 <= entry["seasonal_strength"] <= 1.0 and 0.0 <= entry["trend_strength"] <= 1.0
    # The generated CPU series follows a daily cycle (288 five-minute steps).
    cpu = next(e for sid, e in series.items() if sid.startswith("cpu_usage_percent"))
    assert cpu["period_steps"] == 288 and cpu["seasonal_strength"] > 0.5
    report = (out / "report.html").read_text()
    assert "seasonal strength" in report and "288 (1 d)" in report


def test_cv_is_the_default_off_nab_and_warns_when_validation_has_no_labels(telemetry, tmp_path):
    # The generator labels nothing in its first 7 days: in 9 days all fall in the test period.
    out = tmp_path / "lab"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(telemetry), "--out", str(out), "--detectors", "online"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: no labelled window falls in any validation block" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "cv" and metrics["cv"]["validation_windows"] == 0
    assert "Warning: no labelled window" in (out / "report.html").read_text()


def test_the_lab_grid_puts_a_long_gap_back_as_interpolated_steps():
    ts = np.r_[np.arange(0, 100), np.arange(200, 300)] * 300_000
    values = np.arange(len(ts), dtype=float)
    grid_ms, d = decompose_series(ts, values, 300)
    assert len(grid_ms) == len(d.observed) == 300
    assert np.all(np.diff(grid_ms) == 300_000)
    # The 100 missing steps lie on the straight line between the values on either side.
    np.testing.assert_allclose(d.observed[100:200], np.linspace(99, 100, 102)[1:-1])


def test_evaluate_runs_only_the_chosen_detectors(telemetry, tmp_path):
    out = tmp_path / "lab"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(telemetry), "--out", str(out), "--detectors", "ocsvm"]
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "metrics.json").read_text())["detectors"]) == {"ocsvm"}


def test_the_detector_of_an_earlier_day_is_an_entry_under_both_protocols(telemetry, tmp_path):
    for protocol in ("nab", "cv"):
        out = tmp_path / protocol
        result = CliRunner().invoke(app, [
            "evaluate", "--data", str(telemetry), "--out", str(out), "--protocol", protocol,
            "--detectors", "online,online_2026_12_04"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert "online_2026_12_04" in metrics["detectors"]
        assert "online_2026_12_04" in (out / "report.html").read_text()


def test_an_unknown_detector_is_refused(telemetry, tmp_path):
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(telemetry), "--out", str(tmp_path), "--detectors", "nosuch"]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "metrics.json").exists()


def test_a_dataset_without_labels_is_refused(telemetry, tmp_path):
    dataset = load_dataset(telemetry)
    dataset.labels = []
    with pytest.raises(ValueError, match="no labelled anomalies"):
        run_detectors(dataset, ["ocsvm"], 300, progress=False)


def test_reported_nab_scores_are_those_of_the_reported_detections(telemetry):
    dataset = load_dataset(telemetry)
    assert infer_step_s(dataset) == 300
    run = run_detectors(dataset, ["online", "iforest"], 300, progress=False)
    summary, detections = summarise(run)
    windows = sum(len(f.windows) for f in run.files)
    assert windows == len(dataset.labels)
    for name in ("online_incidents", "online", "iforest"):
        expected = normalised(raw_score(run.files, detections[name], "standard"), windows,
                              "standard")
        assert summary["detectors"][name]["nab"]["standard"]["score"] == pytest.approx(expected)
    # The sweep may always choose to detect nothing, which scores 0.
    for name in ("online", "iforest"):
        for p in PROFILES:
            assert summary["detectors"][name]["nab"][p]["score"] >= 0.0
    assert any(d.any() for d in detections["online_incidents"])
    for d, f in zip(detections["online"], run.files, strict=True):
        assert len(d) == len(f.ts_ms)


def test_lstm_entries_score_every_row_and_the_combination_keeps_the_online_openings(telemetry):
    from vigil.lab.datasets import load_dataset
    from vigil.lab.models import OnlineModel
    from vigil.lab.run import lstm_scores

    ds = load_dataset(telemetry)
    ids = list(ds.series)
    alone, combined = lstm_scores(ds, ids, "autoencoder", 300, max_windows=500, epochs=1,
                                  window=16)
    online = OnlineModel(step_s=300).fit(None, None).score_and_openings_many(
        [(ds.series[sid].values, ds.series[sid].ts_ms) for sid in ids])
    for sid, a, c, (_, opened) in zip(ids, alone, combined, online, strict=True):
        assert len(a) == len(c) == len(ds.series[sid])
        step_rows = ~np.isnan(a)
        assert step_rows.sum() > 0.9 * len(a)  # one score per step (5-minute rows)
        assert set(np.unique(c[step_rows])) <= {0.0, 1.0}
        assert (c[opened] == 1.0).all()  # every online opening is kept


def _series_at_steps(specs=(("five_min", 300, 3000), ("hourly", 3600, 800))):
    # An hourly series beside a 5-minute one (NAB's realAdExchange beside realAWSCloudwatch):
    # resampled at the 5-minute step, the hourly one would be eleven gaps per observed step.
    # ``specs``: (name, step in seconds, rows) of each series, a spike at 80 % of its rows.
    from vigil.lab.datasets import AnomalyLabel, Dataset, SeriesData

    rng = np.random.default_rng(2)
    series = {}
    for name, step_s, n in specs:
        ts = START_MS + step_s * 1000 * np.arange(n)
        y = 10 + rng.normal(size=n)
        y[int(0.8 * n)] += 25
        s = SeriesData(name, {}, ts, y)
        series[s.id] = s
    labels = [AnomalyLabel(sid, int(s.ts_ms[int(0.8 * len(s)) - 5]),
                           int(s.ts_ms[int(0.8 * len(s)) + 5]), "point", "spike")
              for sid, s in series.items()]
    return Dataset(series, labels, "csv")


def test_each_series_is_evaluated_at_its_own_step():
    from vigil.lab.datasets import series_steps
    from vigil.lab.models import OnlineModel

    ds = _series_at_steps()
    series = ds.series
    steps = series_steps(ds)
    assert list(steps.values()) == [300, 3600]
    assert series_steps(ds, 300) == dict.fromkeys(series, 300)
    run = run_detectors(ds, ["online"], 300, progress=False, steps=steps)
    hourly = series["hourly"]
    z, opened = OnlineModel(step_s=3600).fit(None, None).score_and_openings(
        hourly.values, hourly.ts_ms)
    np.testing.assert_array_equal(run.scores["online"][1], z)
    np.testing.assert_array_equal(run.openings[1], opened)
    assert opened[int(0.8 * len(hourly))]  # the spike is found at the hourly step
    at_300 = run_detectors(ds, ["online"], 300, progress=False)
    assert not np.array_equal(at_300.scores["online"][1], z)
    summary, _ = summarise(run)
    assert summary["dataset"]["series_steps_s"] == {"300": 1, "3600": 1}
    assert [e["step_s"] for e in summary["series"].values()] == [300, 3600]


def test_the_models_trained_across_series_take_each_series_at_its_own_step():
    # The perceptron and the LSTM count steps, not seconds: one network serves all three
    # series, each resampled at its own step. At one common step (300 s) the 1-minute series
    # would be averaged into 5-minute steps, and the hourly one's residuals would come from
    # the online detector run at 300 s.
    from vigil.lab.datasets import series_steps
    from vigil.lab.lstm_training import series_residuals
    from vigil.lab.models import OnlineModel
    from vigil.lab.run import lstm_fold_scores, lstm_scores, supervised_scores

    ds = _series_at_steps((("five_min", 300, 3000), ("hourly", 3600, 800),
                           ("one_min", 60, 3000)))
    ids, steps = list(ds.series), series_steps(ds)
    assert list(steps.values()) == [300, 3600, 60]
    hourly, one_min = ds.series["hourly"], ds.series["one_min"]
    mlp = supervised_scores(ds, ids, "mlp", 300, max_windows=400, epochs=1, steps=steps)
    for scores, s in ((mlp[1], hourly), (mlp[2], one_min)):
        # A window is 100 of the series' own steps: a score on every row from the 100th on.
        assert len(scores) == len(s) and not np.isnan(scores).any()
        assert (scores[:99] == 0).all() and (scores[99:] > 0).all()
    kw = {"max_windows": 300, "epochs": 1, "window": 16, "steps": steps}
    seen, _ = lstm_fold_scores(ds, ids, "autoencoder", 300, **kw)
    np.testing.assert_array_equal(seen["one_min"].ts_ms, one_min.ts_ms)  # a step per row
    alone = series_residuals([(hourly.values, hourly.ts_ms)], 3600)[0]
    np.testing.assert_array_equal(seen["hourly"].residual, alone.residual)
    _, combined = lstm_scores(ds, ids, "autoencoder", 300, **kw)
    for k, (s, step) in enumerate(((hourly, 3600), (one_min, 60)), start=1):
        _, opened = OnlineModel(step_s=step).fit(None, None).score_and_openings(
            s.values, s.ts_ms)
        assert opened.any() and (combined[k][opened] == 1.0).all()  # its openings kept


def test_several_corpora_are_judged_in_one_run_with_each_one_and_their_mean(telemetry, tmp_path):
    other = write_telemetry(generate_telemetry(
        hosts=1, metrics=["memory_used_percent"], days=9, step_s=300, start_ms=START_MS,
        seed=6), tmp_path / "other")
    out = tmp_path / "both"
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(telemetry), "--data", str(other), "--out", str(out),
        "--protocol", "nab", "--detectors", "online",
    ])
    assert result.exit_code == 0, result.output
    combined = json.loads((out / "metrics.json").read_text())
    names = list(combined["corpora"])
    assert len(names) == 2 and names[0] != names[1]
    # Each corpus is exactly its own single run, written beside the others.
    for name in names:
        alone = json.loads((out / name / "metrics.json").read_text())
        figures = combined["corpora"][name]["detectors"]["online_incidents"]
        entry = alone["detectors"]["online_incidents"]
        assert figures["nab"] == {p: v["score"] for p, v in entry["nab"].items()}
        assert figures["outside"] == entry["event"]["alarms"] - entry["event"]["true_alarms"]
    mean = combined["mean"]["online_incidents"]
    for profile in PROFILES:
        scores = [combined["corpora"][n]["detectors"]["online_incidents"]["nab"][profile]
                  for n in names]
        assert mean["nab"][profile] == pytest.approx(sum(scores) / 2)
    report = (out / "report.html").read_text()
    assert all(f'href="{n}/report.html"' in report for n in names) and "mean of 2" in report
    assert "online_incidents" in result.output and " mean " in result.output
    # The presentation of the same run: eleven slides, the alert slide drawn from a real
    # opening.
    pdf = (out / "slides.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") == 11
    assert (out / "alert-example.png").read_bytes()[:4] == b"\x89PNG"


def test_a_nab_run_cross_validates_the_online_entries_as_a_cv_run_does(telemetry, tmp_path):
    common = ["--data", str(telemetry), "--detectors", "online", "--test-fraction", "0.5",
              "--folds", "2"]
    for protocol in ("nab", "cv"):
        result = CliRunner().invoke(app, ["evaluate", "--out", str(tmp_path / protocol),
                                          "--protocol", protocol, *common])
        assert result.exit_code == 0, result.output
    beside = json.loads((tmp_path / "nab" / "metrics.json").read_text())["cross_validation"]
    cv = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert beside["folds"] == 2 and beside["test_fraction"] == 0.5
    assert set(beside["detectors"]) == {"online_incidents", "online", "online_score"}
    for name, r in beside["detectors"].items():
        assert r["test"] == {p: v["score"] for p, v in cv["detectors"][name]["nab"].items()}
    assert beside["detectors"]["online"]["validation_standard"] == (
        cv["cv"]["detectors"]["online"]["validation_nab"]["standard"])


def test_a_nab_window_on_rows_without_a_value_narrows_to_the_rows_that_have_one(tmp_path):
    # cmd-dev's source has rows with empty values; NAB's scorer keeps them, the loader drops
    # them (they are not points), so a window's ends move to its nearest rows with a value.
    (tmp_path / "data" / "x").mkdir(parents=True)
    rows = ["timestamp,value"] + [
        f"2024-01-01 {h:02d}:00:00,{'' if h in (10, 14) else h % 3}" for h in range(24)]
    (tmp_path / "data" / "x" / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "combined_windows.json").write_text(json.dumps({"x/a.csv": [
        ["2024-01-01 10:00:00.000000", "2024-01-01 14:00:00.000000"],
        ["2024-01-01 14:00:00.000000", "2024-01-01 14:00:00.000000"],
    ]}))
    ds = load_dataset(tmp_path)
    (label,) = ds.labels  # the second window holds no row with a value
    hour = 3_600_000
    day = 1_704_067_200_000
    assert (label.start_ms, label.end_ms) == (day + 11 * hour, day + 13 * hour)
    assert ds.meta["windows_snapped"] == 1
    summary, _ = summarise(run_detectors(ds, ["online"], 3600, progress=False))
    assert summary["dataset"]["scored_windows"] == 1
