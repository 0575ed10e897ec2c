"""The lab's cross-validation protocol: splits in time order, no leak from the test period,
and the preparation options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.cli import app
from vigil.lab.datasets import load_dataset
from vigil.lab.models import IsolationForestModel
from vigil.lab.prepare import Preparation, PreparedModel
from vigil.lab.protocol import clip_windows, rolling_origin_splits
from vigil.lab.run import run_cv, summarise

T0 = 1_700_006_400  # s, a Wednesday 00:00 UTC
N = 2000  # 5-minute rows, ~7 days
SPIKES = (400, 650, 900, 1150, 1350, 1500, 1700, 1900)


def _write_series(folder: Path, name: str, seed: int, scale: float = 1.0) -> None:
    rng = np.random.default_rng(seed)
    t = T0 + 300 * np.arange(N)
    y = 50 + 10 * np.sin(2 * np.pi * np.arange(N) / 288) + rng.normal(size=N)
    label = np.zeros(N, int)
    for i in SPIKES:
        y[i] += 25 if (i // 250) % 2 else -25
        label[i - 3 : i + 5] = 1
    y = y * scale
    rows = [f"{a},{b!r},{c}" for a, b, c in zip(t.tolist(), y.tolist(), label.tolist(),
                                                  strict=True)]
    (folder / f"{name}.csv").write_text("timestamp,value,label\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    _write_series(root, "cpu", 1)
    _write_series(root, "latency", 2)
    return root


@pytest.mark.parametrize("n, folds, gap, fraction", [
    (100, 3, 2, 0.2), (1000, 5, 0, 0.3), (4032, 3, 24, 0.3), (57, 2, 5, 0.5), (20, 1, 1, 0.25),
])
def test_no_validation_or_test_row_precedes_a_training_row(n, folds, gap, fraction):
    ts = 1_000 + 300_000 * np.arange(n)  # rows in time order, as every loader gives them
    s = rolling_origin_splits(n, folds, gap, fraction)
    assert len(s.folds) == folds
    test = ts[s.test.start : s.test.stop]
    assert len(test) and test.min() > ts[s.development.stop - 1]
    previous_train = 0
    for f in s.folds:
        train = ts[f.train.start : f.train.stop]
        validation = ts[f.validation.start : f.validation.stop]
        assert f.train.start == 0 and len(train) > previous_train  # training grows
        previous_train = len(train)
        assert validation.min() > train.max()
        assert f.validation.start - f.train.stop == gap
        assert f.validation.stop <= s.development.stop  # folds stay in the development part
        assert test.min() > validation.max()
        assert s.test.start - s.development.stop == gap


def test_too_few_rows_or_bad_settings_are_refused():
    with pytest.raises(ValueError, match="too few"):
        rolling_origin_splits(10, 5, 3, 0.3)
    with pytest.raises(ValueError, match="test_fraction"):
        rolling_origin_splits(100, 3, 0, 1.0)
    with pytest.raises(ValueError, match="n_folds"):
        rolling_origin_splits(100, 0, 0, 0.3)


def test_windows_are_cut_to_the_rows_they_overlap():
    ts = np.arange(100) * 10
    assert clip_windows(ts, [(0, 50), (95, 105), (400, 990)], range(10, 50)) == [
        (100, 100), (400, 490)]
    assert clip_windows(ts, [(0, 50)], range(60, 100)) == []


def test_the_test_period_does_not_influence_thresholds_or_hyperparameters(folder):
    dataset = load_dataset(folder)
    names = ["online", "iforest"]
    run = run_cv(dataset, names, 300, progress=False, n_folds=2)
    test_start = {sid: r.start for sid, r in zip(run.ids, run.rows, strict=True)}
    # Every value of every test period changed beyond recognition.
    for sid, s in dataset.series.items():
        s.values[test_start[sid]:] = s.values[test_start[sid]:] * -7.0 + 1e4
    changed = run_cv(dataset, names, 300, progress=False, n_folds=2)
    assert changed.cv == run.cv and changed.thresholds == run.thresholds
    assert all(np.isfinite(t) for th in run.thresholds.values() for t in th.values())
    assert not np.array_equal(changed.scores["iforest"][0], run.scores["iforest"][0])


def test_cv_measures_the_test_period_only(folder, tmp_path):
    out = tmp_path / "lab"
    result = CliRunner().invoke(app, [
        "evaluate", "--data", str(folder), "--out", str(out), "--detectors", "online,iforest",
        "--protocol", "cv", "--folds", "2", "--gap", "12", "--clip-outliers", "0.01",
        "--normalise", "robust",
    ])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["name"] == "cv" and m["cv"]["folds"] == 2 and m["cv"]["gap_rows"] == 12
    assert "warning" not in m["cv"]
    # 70 % of 2000 rows are development; the test period starts 12 rows later.
    for entry in m["series"].values():
        assert entry["scored_rows"] == N - 1400 - 12
    test_spikes = [i for i in SPIKES if i >= 1412]
    assert m["dataset"]["scored_windows"] == m["cv"]["test_windows"] == 2 * len(test_spikes)
    assert m["cv"]["validation_windows"] > 0
    assert m["cv"]["detectors"]["iforest"]["params"]["window"] in (6, 12, 24)
    for name in ("online", "online_score", "iforest"):
        chosen = m["cv"]["detectors"][name]["thresholds"]
        assert {p: e["threshold"] for p, e in m["detectors"][name]["nab"].items()} == chosen
    # The spikes are easy: the online detector finds most test windows.
    assert m["detectors"]["online_incidents"]["event"]["recall"] >= 0.5
    assert m["preparation"]["normalise"] == "robust"
    assert m["preparation"]["clip_outliers"]["quantiles"] == [0.01, 0.99]
    report = (out / "report.html").read_text()
    for text in ("Cross-validation", "rolling-origin", "Best and worst cases", "robust",
                 "0.01 and 0.99 quantiles"):
        assert text in report
    for name, bw in m["best_worst"].items():
        assert name in m["detectors"]
        assert bw["best"]["nab_standard"] >= bw["worst"]["nab_standard"]


def test_a_dataset_whose_validation_blocks_hold_no_window_says_so(folder, tmp_path):
    dataset = load_dataset(folder)
    dataset.labels = [lab for lab in dataset.labels if lab.start_ms >= (T0 + 300 * 1500) * 1000]
    summary, _ = summarise(run_cv(dataset, ["online"], 300, progress=False))
    assert "no labelled window" in summary["cv"]["warning"]


def test_models_trained_on_other_series_never_see_a_test_row(folder):
    # The perceptron and the LSTM train on the *other* series (series folds); under cv only
    # on their development parts. Changing every test value changes their test scores but
    # none of their training, hence no validation score and no threshold.
    dataset = load_dataset(folder)
    names = ["mlp", "lstm", "online+lstm"]
    run = run_cv(dataset, names, 300, progress=False, n_folds=2)
    assert list(run.thresholds) == names
    test_start = {sid: r.start for sid, r in zip(run.ids, run.rows, strict=True)}
    for sid, s in dataset.series.items():
        s.values[test_start[sid]:] = s.values[test_start[sid]:] * -7.0 + 1e4
    changed = run_cv(dataset, names, 300, progress=False, n_folds=2)
    assert changed.cv == run.cv and changed.thresholds == run.thresholds
    for name in ("mlp", "lstm"):
        assert not np.array_equal(changed.scores[name][0], run.scores[name][0])
    assert run.cv["detectors"]["mlp"]["validation_nab"]["standard"] is not None


def test_normalisation_is_learned_on_training_and_clipping_spares_scored_values():
    t = 1_700_006_400_000 + 300_000 * np.arange(800)
    y = 10 + np.random.default_rng(1).normal(size=800)
    y[50] = 60.0  # an outlier in the training part
    y[700] = 30.0
    prep = Preparation(clip_quantile=0.01, normalise="robust")
    model = PreparedModel(IsolationForestModel(step_s=300), prep).fit(y[:300], t[:300])
    scores = model.score_samples(y, t)
    assert int(np.nanargmax(scores[300:])) + 300 == 700  # the scored spike is not clipped
    # A robust normalisation learned on the training part: units do not matter.
    scaled = PreparedModel(IsolationForestModel(step_s=300), prep).fit(
        y[:300] * 1000 + 5, t[:300])
    np.testing.assert_allclose(scaled.score_samples(y * 1000 + 5, t), scores, rtol=1e-6)
    _, _, low, high = prep.fit(y[:300])
    assert high < 60.0
    with pytest.raises(ValueError):
        Preparation(normalise="minmax")
    with pytest.raises(ValueError):
        Preparation(clip_quantile=0.7)
