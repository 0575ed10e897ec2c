"""The offline models' shared contract: fit returns self, one causal score per row."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detectors.online import DetectorParams, SeriesDetector
from vigil.lab.models import (
    MODELS,
    OnlineModel,
    SeasonalNormaliser,
    window_features,
)

STEP_S = 300
T0 = 1_700_006_400_000  # a Wednesday, 00:00 UTC
N = 3 * 288  # three days of 5-minute rows
TRAIN = 288
SPIKE = 700


def _series(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ts = T0 + STEP_S * 1000 * np.arange(N)
    day = 2 * np.pi * (ts % 86_400_000) / 86_400_000
    values = 50 + 10 * np.sin(day) + np.random.default_rng(seed).normal(size=N)
    values[SPIKE] += 40.0
    return ts, values


@pytest.fixture(params=sorted(MODELS))
def model_class(request):
    return MODELS[request.param]


def test_fit_returns_the_model_and_scores_every_row(model_class):
    ts, y = _series()
    model = model_class(step_s=STEP_S)
    assert model.fit(y[:TRAIN], ts[:TRAIN]) is model
    scores = model.score_samples(y, ts)
    assert scores.shape == (N,)
    assert not np.isnan(scores).any()  # a regular series: every row closes its own step


def test_a_spike_scores_among_the_highest(model_class):
    ts, y = _series()
    scores = model_class(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN]).score_samples(y, ts)
    assert scores[SPIKE] >= np.quantile(scores[TRAIN:], 0.99)


def test_scores_do_not_depend_on_later_points(model_class):
    ts, y = _series()
    model = model_class(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN])
    full = model.score_samples(y, ts)
    cut = 500
    changed = y.copy()
    changed[cut:] = changed[cut:] * 3 + 100
    np.testing.assert_array_equal(model.score_samples(changed, ts)[:cut], full[:cut])
    np.testing.assert_array_equal(model.score_samples(y[:cut], ts[:cut]), full[:cut])
    assert not np.array_equal(model.score_samples(changed, ts)[cut:], full[cut:])


def test_scoring_twice_gives_the_same_scores(model_class):
    ts, y = _series()
    model = model_class(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN])
    np.testing.assert_array_equal(model.score_samples(y, ts), model.score_samples(y, ts))


def test_online_model_is_the_series_detector_fed_point_by_point():
    ts, y = _series()
    model = OnlineModel(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN])
    detector = SeriesDetector(DetectorParams(step_s=STEP_S))
    z = {}
    opened = set()
    for t, v in zip(ts.tolist(), y.tolist(), strict=True):
        for step in detector.learn_one(t, v):
            z[step.ts_ms] = step.z
            if step.event == "open":
                opened.add(step.ts_ms)
    scores = model.score_samples(y, ts)
    # Point by point, the last step is still open; every earlier one matches exactly.
    assert [z[t] for t in ts[:-1].tolist()] == scores[:-1].tolist()
    assert set(ts[model.incident_openings(y, ts)].tolist()) - {int(ts[-1])} == opened
    assert int(ts[SPIKE]) in opened


def test_only_the_last_row_of_a_step_carries_its_score(model_class):
    ts, y = _series()
    ts = ts.copy()
    ts[401] = ts[400] + 60_000  # row 401 now shares row 400's step (and closes it)
    scores = model_class(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN]).score_samples(y, ts)
    assert np.isnan(scores[400]) and not np.isnan(scores[401])
    assert np.isnan(scores).sum() == 1


def test_normaliser_uses_a_daily_profile_only_when_the_series_has_one():
    ts, y = _series()
    assert SeasonalNormaliser().fit(y[:TRAIN * 2], ts[:TRAIN * 2]).seasonal_
    flat = 50 + np.random.default_rng(1).normal(size=N)
    assert not SeasonalNormaliser().fit(flat[:TRAIN * 2], ts[:TRAIN * 2]).seasonal_
    # Less than two days of training: no profile, however seasonal.
    assert not SeasonalNormaliser().fit(y[:TRAIN], ts[:TRAIN]).seasonal_


def test_normaliser_scale_stays_positive_on_a_constant_series():
    ts = T0 + STEP_S * 1000 * np.arange(100)
    norm = SeasonalNormaliser().fit(np.full(100, 7.0), ts)
    assert norm.scale_ > 0
    assert np.isfinite(norm.transform([7.0, 8.0], ts[:2])).all()


def test_window_features_see_only_the_past():
    z = np.random.default_rng(2).normal(size=50)
    full = window_features(z, 5)
    assert full.shape == (50, 5)
    np.testing.assert_array_equal(window_features(z[:30], 5), full[:30])


def test_prophet_can_follow_a_forecast_that_drifts_away():
    from vigil.lab.models import ProphetModel

    ts, y = _series()
    drifted = y.copy()
    # After training the level climbs by 100 and stays; the planted anomaly becomes a dip
    # of 40 below that new level (its +40 spike turned into −40).
    drifted[TRAIN:] += 100 * np.minimum(1.0, np.arange(N - TRAIN) / 100)
    drifted[SPIKE] -= 80
    plain = ProphetModel(step_s=STEP_S).fit(y[:TRAIN], ts[:TRAIN]).score_samples(drifted, ts)
    following = ProphetModel(step_s=STEP_S, residual_halflife_steps=12).fit(
        y[:TRAIN], ts[:TRAIN]).score_samples(drifted, ts)
    # Plain, the dip sits closer to the old forecast than the whole drifted level does.
    assert plain[SPIKE] < np.median(plain[TRAIN + 100:])
    # Following the residual's recent level, the dip stands out again.
    assert following[SPIKE] >= np.quantile(following[TRAIN:], 0.99)
    # Still causal (up to rounding: the recursive filter runs over a differently sized array).
    model = ProphetModel(step_s=STEP_S, residual_halflife_steps=12).fit(y[:TRAIN], ts[:TRAIN])
    np.testing.assert_allclose(
        model.score_samples(drifted[: SPIKE + 1], ts[: SPIKE + 1]), following[: SPIKE + 1],
        rtol=1e-12)
