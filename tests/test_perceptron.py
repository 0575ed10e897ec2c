"""The article's supervised perceptron and the lab's by-series training of it."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.lab import run as lab
from vigil.lab.datasets import AnomalyLabel, Dataset, SeriesData
from vigil.lab.perceptron import (
    WindowPerceptron,
    labelled_windows,
    series_folds,
    subsample,
    window_inputs,
)

STEP_S = 300
STEP_MS = STEP_S * 1000
T0 = 1_700_006_400_000
N = 600
SPIKES = (250, 400, 520)


def _series(seed: int = 0, n: int = N, spikes=SPIKES) -> tuple[np.ndarray, np.ndarray]:
    ts = T0 + STEP_MS * np.arange(n)
    y = 10 + np.sin(np.arange(n) / 7.0) + 0.2 * np.random.default_rng(seed).normal(size=n)
    for k in spikes:
        y[k] += 8.0
    return ts, y


def _separable(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of noisy sines; a third end with a spike (the positives)."""
    rng = np.random.default_rng(seed)
    windows = np.sin(np.arange(100) / 6.0 + rng.uniform(0, 6, (n, 1)))
    windows += 0.1 * rng.normal(size=(n, 100))
    y = (np.arange(n) % 3 == 0).astype(float)
    windows[y == 1, -1] += 6.0
    X = np.vstack([window_inputs(w, 100) for w in windows])
    return X, y, windows


def _trained(seed: int = 0, **kw) -> WindowPerceptron:
    X, y, _ = _separable()
    params = {"step_s": STEP_S, "epochs": 2, "batch_size": 128, "seed": seed, **kw}
    return WindowPerceptron(**params).fit_windows(X, y)


def test_window_inputs_are_min_max_scaled_windows_and_their_total_variation():
    v = np.r_[np.zeros(5), 10.0, 20.0, 20.0]
    X = window_inputs(v, window=4)
    assert X.shape == (5, 5)
    np.testing.assert_allclose(X[-1], [0.0, 0.5, 1.0, 1.0, 1.0])
    assert X[:2].tolist() == [[0.0] * 5] * 2  # a constant window: zeros, not 0/0
    assert window_inputs(v[:3], window=4).shape == (0, 5)
    # Scale- and offset-free, as the article needs to carry across series.
    np.testing.assert_allclose(window_inputs(3 * v + 100, window=4), X)


def test_fit_returns_the_model_and_scores_every_row_causally():
    model = WindowPerceptron(step_s=STEP_S, epochs=1, batch_size=128)
    X, y, _ = _separable(200)
    assert model.fit_windows(X, y) is model
    assert set(vars(model)) >= {"mean_", "scale_", "net_", "loss_"}
    ts, v = _series()
    full = model.score_samples(v, ts)
    assert full.shape == (N,) and not np.isnan(full).any()
    assert (full[:99] == 0).all() and (full[99:] > 0).all() and (full[99:] < 1).all()
    cut = 300
    changed = v.copy()
    changed[cut:] = changed[cut:] * 5 - 40
    np.testing.assert_array_equal(model.score_samples(changed, ts)[:cut], full[:cut])
    np.testing.assert_array_equal(model.score_samples(v[:cut], ts[:cut]), full[:cut])
    assert not np.array_equal(model.score_samples(changed, ts)[cut:], full[cut:])


def test_a_seed_makes_training_deterministic():
    ts, v = _series()
    a, b, c = _trained(seed=3), _trained(seed=3), _trained(seed=4)
    assert a.loss_ == b.loss_
    np.testing.assert_array_equal(a.score_samples(v, ts), b.score_samples(v, ts))
    assert not np.array_equal(a.score_samples(v, ts), c.score_samples(v, ts))


def test_the_article_architecture_and_defaults():
    model = _trained()
    linear = [m for m in model.net_ if hasattr(m, "weight")]
    assert [tuple(m.weight.shape) for m in linear] == [(55, 101), (1024, 55), (1, 1024)]
    assert {type(m).__name__ for m in model.net_} == {"Linear", "Sigmoid"}
    assert WindowPerceptron().lr == 5e-5 and WindowPerceptron().window == 100


def test_training_lowers_the_loss_and_ranks_planted_anomalies_first():
    model = _trained(epochs=6, lr=1e-3, batch_size=64)
    assert model.loss_[-1] < 0.5 * model.loss_[0]
    X, y, _ = _separable(300, seed=9)  # new windows
    p = model.predict_windows(X)
    assert p[y == 1].min() > p[y == 0].max()
    # On a series: the planted spikes score above every window before the first one (later
    # windows still hold a spike, which training never showed as normal).
    ts, v = _series(seed=5)
    scores = model.score_samples(v, ts)
    assert min(scores[k] for k in SPIKES) > 0.5 > scores[99:SPIKES[0]].max()


def test_labelled_windows_mark_windows_ending_inside_a_label():
    ts, v = _series()
    model = WindowPerceptron(step_s=STEP_S)
    X, y = labelled_windows(model, v, ts, [(int(ts[200]), int(ts[209]))])
    assert X.shape == (N - 99, 101)
    np.testing.assert_array_equal(np.flatnonzero(y) + 99, np.arange(200, 210))


def test_subsample_keeps_positives_first_and_caps_the_rows():
    X = np.arange(1000.0)[:, None]
    y = (np.arange(1000) % 50 == 0).astype(float)
    Xs, ys = subsample(X, y, cap=100, seed=1)
    assert len(ys) == 100 and ys.sum() == 20
    assert set(Xs[ys == 1, 0]) == set(X[y == 1, 0])
    assert subsample(X, y, cap=2000)[0] is X


def test_series_folds_hold_each_series_out_once():
    ids = [f"s{i}" for i in range(10)]
    folds = series_folds(ids, k=4, seed=2)
    assert len(folds) == 4 and sorted(sum(folds, [])) == ids
    assert series_folds(ids, k=4, seed=2) == folds
    assert [len(f) for f in series_folds(ids[:3], k=4)] == [1, 1, 1]


def _dataset(n_series: int = 4) -> Dataset:
    series, labels = {}, []
    for i in range(n_series):
        ts, v = _series(seed=i, spikes=(300 + 40 * i,))
        s = SeriesData(f"m{i}", {}, ts, v)
        series[s.id] = s
        k = 300 + 40 * i
        labels.append(AnomalyLabel(s.id, int(ts[k - 2]), int(ts[k + 5]), "point", "spike"))
    return Dataset(series, labels, "csv")


def test_the_lab_never_trains_on_the_series_it_scores():
    ds = _dataset()
    ids = list(ds.series)
    kw = {"folds": 4, "max_windows": 400, "epochs": 1}
    trained_on: dict[str, list[str]] = {}
    scores = lab.supervised_scores(ds, ids, "mlp", STEP_S, trained_on=trained_on, **kw)
    assert len(scores) == 4 and all(len(s) == N for s in scores)
    for sid in ids:
        assert sid not in trained_on[sid] and set(trained_on[sid]) == set(ids) - {sid}
    # Relabelling one series changes nothing in its own scores (its labels never reach its
    # model), but does change the scores of the series trained on it.
    moved = [lab_ if lab_.series != ids[0] else
             AnomalyLabel(ids[0], int(T0 + 100 * STEP_MS), int(T0 + 130 * STEP_MS), "x", "y")
             for lab_ in ds.labels]
    relabelled = lab.supervised_scores(Dataset(ds.series, moved, "csv"), ids, "mlp", STEP_S, **kw)
    np.testing.assert_array_equal(relabelled[0], scores[0])
    assert not np.array_equal(relabelled[1], scores[1])


def test_the_lab_runs_mlp_on_request_and_refuses_a_single_series(monkeypatch):
    monkeypatch.setattr(lab, "SUPERVISED_MAX_WINDOWS", 300)
    monkeypatch.setattr(lab, "SUPERVISED_EPOCHS", 1)
    ds = _dataset(3)
    run = lab.run_detectors(ds, ["mlp", "iforest"], STEP_S, progress=False)
    assert set(run.scores) == {"mlp", "iforest"}
    assert [len(s) for s in run.scores["mlp"]] == [N] * 3
    summary, _ = lab.summarise(run)
    assert summary["detectors"]["mlp"]["description"] == lab.ENTRY_NAMES["mlp"]
    one = Dataset(dict(list(ds.series.items())[:1]), ds.labels[:1], "csv")
    with pytest.raises(ValueError, match="two series"):
        lab.run_detectors(one, ["mlp"], STEP_S, progress=False)
