"""Period detection and STL decomposition (``vigil.lab.decompose``)."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.lab.decompose import decompose, detect_period, fill_gaps

STEP_S = 1800  # half-hour steps: a day is 48 steps, a week 336
DAY, WEEK = 48, 336


def daily_sine(days: int, noise: float = 0.2, seed: int = 1) -> np.ndarray:
    t = np.arange(days * DAY)
    rng = np.random.default_rng(seed)
    return 50 + 5 * np.sin(2 * np.pi * t / DAY) + noise * 5 * rng.normal(size=t.size)


def weekly_pattern(weeks: int, seed: int = 2) -> np.ndarray:
    """Weekdays high, weekends low (no daily cycle), plus noise."""
    t = np.arange(weeks * WEEK)
    weekend = (t // DAY) % 7 >= 5
    rng = np.random.default_rng(seed)
    return np.where(weekend, 20.0, 60.0) + 3 * rng.normal(size=t.size)


def test_a_noisy_daily_sine_has_a_daily_period():
    x = daily_sine(10)
    assert detect_period(x, STEP_S) == DAY
    d = decompose(x, STEP_S)
    assert d.period == DAY
    assert d.seasonal_strength > 0.9
    assert np.ptp(d.seasonal) > 8  # the sine's full swing (amplitude 5) is in the seasonal part


def test_a_weekly_pattern_over_three_weeks_has_a_weekly_period():
    x = weekly_pattern(3)
    assert detect_period(x, STEP_S) == WEEK
    d = decompose(x, STEP_S)
    assert d.period == WEEK and d.seasonal_strength > 0.8


def test_white_noise_has_no_period_and_no_seasonal_part():
    x = np.random.default_rng(3).normal(size=4 * WEEK)
    assert detect_period(x, STEP_S) is None
    d = decompose(x, STEP_S)
    assert d.period is None
    assert not d.seasonal.any()
    assert d.seasonal_strength == 0.0


def test_a_random_walk_has_no_period():
    x = np.cumsum(np.random.default_rng(4).normal(size=4 * WEEK))
    assert detect_period(x, STEP_S) is None


def test_a_constant_series_has_no_period_and_zero_strengths():
    x = np.full(3 * WEEK, 7.0)
    assert detect_period(x, STEP_S) is None
    d = decompose(x, STEP_S)
    assert d.period is None
    assert d.seasonal_strength == 0.0 and d.trend_strength == 0.0
    np.testing.assert_allclose(d.trend, 7.0)
    np.testing.assert_allclose(d.resid, 0.0)


def test_gaps_are_interpolated_and_the_period_still_found():
    x = daily_sine(10)
    x[100:130] = np.nan  # most of a day missing
    x[300] = np.nan
    d = decompose(x, STEP_S)
    assert d.period == DAY
    assert np.isfinite(d.observed).all()
    np.testing.assert_allclose(d.observed[~np.isnan(x)], x[~np.isnan(x)])
    np.testing.assert_allclose(d.observed[300], (x[299] + x[301]) / 2)


def test_fill_gaps_takes_the_nearest_value_at_the_ends():
    assert fill_gaps([np.nan, np.nan, 2.0, np.nan, 4.0, np.nan]).tolist() == [
        2.0, 2.0, 2.0, 3.0, 4.0, 4.0]


def test_a_series_shorter_than_two_periods_has_no_seasonality():
    x = daily_sine(10)[: 2 * DAY - 1]
    assert detect_period(x, STEP_S) is None
    assert decompose(x, STEP_S).period is None
    # Two full days are enough.
    assert detect_period(daily_sine(10)[: 2 * DAY], STEP_S) == DAY


def test_a_weekly_candidate_needs_two_weeks_of_data():
    # 10 days of the weekly pattern: too short for a week, and no daily cycle in it.
    assert detect_period(weekly_pattern(3)[: 10 * DAY], STEP_S) is None


@pytest.mark.parametrize("series", [
    daily_sine(10), weekly_pattern(3), np.random.default_rng(5).normal(size=1000),
    np.cumsum(np.random.default_rng(6).normal(size=1000)), np.full(500, 3.0),
])
def test_components_sum_to_the_filled_series_and_strengths_are_in_0_1(series):
    series = series.copy()
    series[40:45] = np.nan
    d = decompose(series, STEP_S)
    assert d.trend.shape == d.seasonal.shape == d.resid.shape == series.shape
    np.testing.assert_allclose(d.trend + d.seasonal + d.resid, d.observed, atol=1e-9)
    np.testing.assert_allclose(d.observed, fill_gaps(series))
    assert 0.0 <= d.seasonal_strength <= 1.0
    assert 0.0 <= d.trend_strength <= 1.0


def test_a_trending_series_has_a_strong_trend():
    t = np.arange(5 * DAY)
    x = 0.1 * t + np.random.default_rng(7).normal(size=t.size)
    d = decompose(x, STEP_S)
    assert d.period is None and d.trend_strength > 0.9


def test_a_step_of_a_minute_uses_day_and_week_candidates():
    # One day of 1-minute steps is 1440; a 3-day daily sine is found at that lag.
    t = np.arange(3 * 1440)
    x = np.sin(2 * np.pi * t / 1440) + 0.1 * np.random.default_rng(8).normal(size=t.size)
    assert detect_period(x, 60) == 1440
