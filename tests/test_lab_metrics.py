"""Event-wise, point-wise and point-adjusted metrics and the detection delay on made-up cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vigil.lab.evaluation import (
    event_metrics,
    mean_detection_delay_ms,
    point_adjusted_f1,
    point_f1,
)
from vigil.lab.nab import ScoredFile

STEP = 60_000
N = 200  # probation: rows 0-29


def _file(*windows: tuple[int, int]) -> ScoredFile:
    return ScoredFile(np.arange(N) * STEP, [(a * STEP, b * STEP) for a, b in windows])


def _det(*rows: int) -> np.ndarray:
    d = np.zeros(N, bool)
    d[list(rows)] = True
    return d


def test_no_detections_find_nothing_and_score_zero():
    f = _file((100, 119))
    m = event_metrics([f], [_det()])
    assert (m.found, m.alarms, m.precision, m.recall, m.f1) == (0, 0, 0.0, 0.0, 0.0)
    assert point_f1([f], [_det()]) == 0.0
    assert math.isnan(mean_detection_delay_ms([f], [_det()]))


def test_detections_in_probation_are_ignored():
    f = _file((100, 119))
    assert event_metrics([f], [_det(3, 10, 29)]).alarms == 0
    assert point_f1([f], [_det(3, 105)]) == point_f1([f], [_det(105)])


def test_a_window_is_found_once_however_many_detections_fall_in_it():
    f = _file((100, 119), (150, 159))
    m = event_metrics([f], [_det(101, 105, 110)])
    assert (m.found, m.windows, m.alarms, m.true_alarms) == (1, 2, 3, 3)
    assert m.recall == 0.5 and m.precision == 1.0
    assert m.f1 == pytest.approx(2 / 3)


def test_an_alarm_is_a_run_of_detections_and_true_when_it_touches_a_window():
    f = _file((100, 119))
    m = event_metrics([f], [_det(*range(95, 101), *range(60, 70))])
    assert (m.alarms, m.true_alarms, m.found) == (2, 1, 1)


def test_counts_add_over_files():
    f = _file((100, 119))
    m = event_metrics([f, f], [_det(100), _det(50)])
    assert (m.windows, m.found, m.alarms, m.true_alarms) == (2, 1, 2, 1)


def test_point_f1_counts_rows_and_point_adjustment_inflates_it():
    f = _file((100, 119))
    exact = _det(*range(100, 120))
    assert point_f1([f], [exact]) == 1.0
    one = _det(100)
    assert point_f1([f], [one]) == pytest.approx(2 * (1 / 20) / (1 + 1 / 20))
    assert point_adjusted_f1([f], [one]) == 1.0  # one row earns the whole window
    noisy = _det(100, 60, 61)
    assert point_adjusted_f1([f], [noisy]) == pytest.approx(2 * (20 / 22) / (20 / 22 + 1))


def test_delay_is_from_window_start_to_first_detection_of_found_windows():
    f = _file((100, 119), (150, 159), (180, 189))
    delay = mean_detection_delay_ms([f], [_det(95, 104, 110, 150)])
    assert delay == (4 * STEP + 0) / 2
