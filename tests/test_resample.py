"""Tests for vigil.detectors.resample: raw points to one value per step, for many series.

The state bank is the detector's (``new_state_bank``); only its resampling fields are used.
Times are whole minutes after a fixed Monday so that step boundaries are easy to read: step
``at(m)`` is centred on minute ``m`` and holds the points in ``[m − 0.5, m + 0.5)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detectors.online import new_state_bank
from vigil.detectors.resample import (
    Held,
    Steps,
    hold_back,
    last_row_of_step,
    resample_batch,
    step_of,
)

T0 = 1_699_833_600_000  # Monday 2023-11-13 00:00 UTC
STEP = 60_000
MAX_FILL = 5


def feed(bank, index, ts, values, max_fill: int = MAX_FILL) -> Steps:
    return resample_batch(
        bank,
        np.asarray(index, np.int64),
        np.asarray(ts, np.int64),
        np.asarray(values, np.float64),
        STEP,
        max_fill,
    )


def at(minute: float) -> int:
    return T0 + int(round(minute * STEP))


def as_rows(steps: Steps) -> list[tuple[int, int, float, bool, bool]]:
    return [
        (int(i), int(t), float(v), bool(f), bool(g))
        for i, t, v, f, g in zip(
            steps.index, steps.ts_ms, steps.value, steps.filled, steps.after_gap, strict=True
        )
    ]


def test_points_within_a_step_are_averaged():
    bank = new_state_bank(1)
    ts = [at(-0.5), at(-0.25), at(0), at(0.49), at(0.5)]
    steps = feed(bank, [0] * 5, ts, [1.0, 2.0, 3.0, 10.0, 100.0])
    assert steps.ts_ms.tolist() == [at(0)]
    assert steps.value.tolist() == pytest.approx([4.0])  # (1 + 2 + 3 + 10) / 4
    assert not steps.filled.any() and not steps.after_gap.any()


def test_step_is_the_nearest_grid_time_half_a_step_either_side():
    bank = new_state_bank(1)
    half = STEP // 2
    # t − step/2 belongs to t, t + step/2 to the next step; just before it still to t.
    ts = [at(2) - half, at(2) + half - 1, at(2) + half]
    steps = feed(bank, [0] * 3, ts, [7.0, 9.0, 8.0])
    assert as_rows(steps) == [(0, at(2), 8.0, False, False)]
    assert int(bank["bucket_ms"][0]) == at(3)
    assert step_of(np.array(ts), STEP).tolist() == [at(2), at(2), at(3)]
    assert step_of(at(2) - half - 1, STEP) == at(1)  # plain ints too
    assert last_row_of_step(np.array(ts), np.array([at(1), at(2), at(3)]), STEP).tolist() == [
        -1, 1, 2,
    ]


def test_jittered_nominal_timestamps_give_one_point_per_step():
    rng = np.random.default_rng(5)
    n, series = 500, 3
    grid = T0 + STEP * np.arange(n, dtype=np.int64)
    # Nominal times (collectors stamping each sample on the grid) up to 40 % of a step off.
    jitter = rng.integers(-int(0.4 * STEP), int(0.4 * STEP) + 1, (series, n))
    ts = (grid + jitter).ravel()
    index = np.repeat(np.arange(series), n)
    values = rng.normal(10.0, 2.0, series * n)
    bank = new_state_bank(series)
    steps = feed(bank, index, ts, values)
    assert steps.dropped == 0 and len(steps) == series * (n - 1)  # last step of each open
    assert not steps.filled.any() and not steps.after_gap.any()
    keep = np.tile(np.r_[np.ones(n - 1, bool), False], series)
    assert steps.ts_ms.tolist() == np.tile(grid, series)[keep].tolist()
    assert steps.value.tolist() == values[keep].tolist()  # one raw point each, not a mean
    assert bank["bucket_count"].tolist() == [1] * series
    assert last_row_of_step(ts[:n], steps.ts_ms[: n - 1], STEP).tolist() == list(range(n - 1))


def test_open_step_closes_only_when_a_later_steps_point_arrives():
    bank = new_state_bank(1)
    assert len(feed(bank, [0], [at(0)], [1.0])) == 0
    assert len(feed(bank, [0], [at(0.4)], [3.0])) == 0  # same step: still open
    assert int(bank["bucket_count"][0]) == 2
    steps = feed(bank, [0], [at(1.2)], [50.0])
    assert as_rows(steps) == [(0, at(0), 2.0, False, False)]
    # The new point's step is now the open one, carried in state.
    assert (int(bank["bucket_ms"][0]), float(bank["bucket_sum"][0])) == (at(1), 50.0)


def test_short_gap_is_filled_with_the_last_value_and_marked_filled():
    bank = new_state_bank(1)
    # Steps 0 and 1 observed, 2..4 missing (3 <= MAX_FILL), 5 observed, 6 stays open.
    steps = feed(bank, [0] * 4, [at(0), at(1), at(5), at(6)], [1.0, 2.0, 9.0, 0.0])
    assert as_rows(steps) == [
        (0, at(0), 1.0, False, False),
        (0, at(1), 2.0, False, False),
        (0, at(2), 2.0, True, False),
        (0, at(3), 2.0, True, False),
        (0, at(4), 2.0, True, False),
        (0, at(5), 9.0, False, False),
    ]


def test_gap_of_exactly_max_fill_steps_is_filled_one_more_is_not():
    bank = new_state_bank(2)
    ts = [at(0), at(1 + MAX_FILL), at(2 + MAX_FILL)]  # MAX_FILL missing steps
    ts2 = [at(0), at(2 + MAX_FILL), at(3 + MAX_FILL)]  # MAX_FILL + 1 missing steps
    steps = feed(bank, [0, 0, 0, 1, 1, 1], ts + ts2, [1.0, 2.0, 3.0] * 2)
    s0, s1 = steps.index == 0, steps.index == 1
    assert int(steps.filled[s0].sum()) == MAX_FILL and not steps.after_gap[s0].any()
    assert not steps.filled[s1].any()
    assert steps.after_gap[s1].tolist() == [False, True]


def test_long_gap_is_not_filled_and_marks_the_next_step_after_gap():
    bank = new_state_bank(1)
    feed(bank, [0, 0], [at(0), at(1)], [1.0, 2.0])
    steps = feed(bank, [0, 0], [at(120), at(121)], [5.0, 6.0])  # 118 steps missing
    assert as_rows(steps) == [(0, at(1), 2.0, False, False), (0, at(120), 5.0, False, True)]


def test_short_gap_spanning_two_batches_is_filled_from_state():
    bank = new_state_bank(1)
    feed(bank, [0, 0], [at(0), at(1)], [1.0, 4.0])
    steps = feed(bank, [0, 0], [at(4), at(5)], [7.0, 8.0])  # steps 2 and 3 missing
    assert as_rows(steps) == [
        (0, at(1), 4.0, False, False),
        (0, at(2), 4.0, True, False),
        (0, at(3), 4.0, True, False),
        (0, at(4), 7.0, False, False),
    ]


def test_out_of_order_points_within_a_batch_are_sorted():
    rng = np.random.default_rng(11)
    n = 400
    index = rng.integers(0, 3, n)
    ts = T0 + np.sort(rng.integers(0, 90 * STEP, n))
    ts += index  # no repeated timestamps within a series, whatever the draw
    values = rng.normal(10.0, 2.0, n)
    ordered_bank, shuffled_bank = new_state_bank(3), new_state_bank(3)
    ordered = feed(ordered_bank, index, ts, values)
    perm = rng.permutation(n)
    shuffled = feed(shuffled_bank, index[perm], ts[perm], values[perm])
    assert len(ordered) > 100
    assert as_rows(shuffled) == as_rows(ordered)
    assert shuffled_bank.tobytes() == ordered_bank.tobytes()


def test_steps_come_ordered_by_series_then_time():
    bank = new_state_bank(3)
    index = [2, 0, 1, 2, 0, 1, 2, 0, 1]
    ts = [at(2), at(2), at(2), at(0), at(0), at(0), at(1), at(1), at(1)]
    steps = feed(bank, index, ts, np.arange(9.0))
    assert list(zip(steps.index.tolist(), steps.ts_ms.tolist(), strict=True)) == [
        (0, at(0)),
        (0, at(1)),
        (1, at(0)),
        (1, at(1)),
        (2, at(0)),
        (2, at(1)),
    ]


def test_points_at_or_before_the_watermark_are_dropped_and_counted():
    bank = new_state_bank(1)
    feed(bank, [0] * 3, [at(0), at(1), at(1.3)], [1.0, 2.0, 3.0])
    assert int(bank["watermark_ms"][0]) == at(1.3)
    before = bank.tobytes()
    # Equal to the watermark, inside the open step but older, and in a closed step.
    steps = feed(bank, [0] * 3, [at(1.3), at(1.2), at(0.2)], [100.0, 100.0, 100.0])
    assert steps.dropped == 3 and len(steps) == 0
    assert bank.tobytes() == before
    # A later point is still applied; only the stale ones of its batch are counted.
    steps = feed(bank, [0, 0], [at(0.4), at(2)], [100.0, 6.0])
    assert steps.dropped == 1
    assert as_rows(steps) == [(0, at(1), 2.5, False, False)]


def test_watermarks_are_kept_per_series():
    bank = new_state_bank(2)
    feed(bank, [0, 0], [at(0), at(10)], [1.0, 1.0])
    # Minute 5 is stale for series 0 but new for series 1.
    steps = feed(bank, [0, 1, 1], [at(5), at(5), at(6)], [9.0, 2.0, 3.0])
    assert steps.dropped == 1
    assert as_rows(steps) == [(1, at(5), 2.0, False, False)]


def test_repeated_timestamp_within_a_batch_keeps_the_first_arrival():
    bank = new_state_bank(1)
    steps = feed(bank, [0] * 4, [at(0), at(0), at(0.4), at(1)], [1.0, 99.0, 3.0, 0.0])
    assert steps.dropped == 1
    assert steps.value.tolist() == [2.0]


def test_non_finite_values_are_dropped_and_counted():
    bank = new_state_bank(1)
    values = [1.0, np.nan, 3.0, np.inf, -np.inf, 5.0, 0.0]
    ts = [at(0), at(0.2), at(0.4), at(1), at(1.3), at(2), at(3)]
    steps = feed(bank, [0] * 7, ts, values)
    assert steps.dropped == 3
    # Step 1 had only non-finite points: it is missing, so it is filled.
    assert as_rows(steps) == [
        (0, at(0), 2.0, False, False),
        (0, at(1), 2.0, True, False),
        (0, at(2), 5.0, False, False),
    ]
    assert np.isfinite(bank["bucket_sum"]).all()


def feed_late(bank, held: Held, index, ts, values, lateness: int) -> tuple[Steps, Held, int, int]:
    """One batch through the allowed lateness (:func:`hold_back`) and then the resampler."""
    arrived = Held(np.asarray(index, np.int64), np.asarray(ts, np.int64),
                   np.asarray(values, np.float64))
    release, held, late, duplicate = hold_back(held, arrived, bank["watermark_ms"], STEP,
                                               lateness)
    return feed(bank, release.index, release.ts_ms, release.values), held, late, duplicate


def test_points_out_of_order_within_the_lateness_join_their_steps():
    # Two series, 4 points a step for 40 steps, dealt into 4 "partitions" at random and read
    # one partition chunk after another: up to 3 steps out of order.
    rng = np.random.default_rng(11)
    minutes = np.repeat(np.arange(40.0), 4) + np.tile([0.0, 0.1, 0.2, 0.3], 40)
    values = rng.normal(10.0, 2.0, minutes.size)
    index = np.repeat([[0], [1]], minutes.size, axis=1).ravel()
    ts = np.array([at(m) for m in np.r_[minutes, minutes]])
    values = np.r_[values, values + 100.0]
    partition = rng.integers(0, 4, ts.size)
    batches = []
    for window in range(0, 40, 3):  # each partition's next 3 minutes, one partition at a time
        for p in rng.permutation(4):
            rows = np.flatnonzero((partition == p) & (ts >= at(window - 0.5))
                                  & (ts < at(window + 2.5)))
            batches.append(rows)
    assert sum(len(b) for b in batches) == ts.size

    bank, held = new_state_bank(2), Held.empty()
    got = []
    for rows in batches:
        steps, held, late, duplicate = feed_late(bank, held, index[rows], ts[rows],
                                                 values[rows], lateness=3)
        assert late == duplicate == 0
        got += as_rows(steps)
    # Without a lateness, the same arrival order loses points as older than the watermark.
    plain = new_state_bank(2)
    assert sum(feed(plain, index[r], ts[r], values[r]).dropped for r in batches) > 20

    # The steps are those of the points in time order, every point in its step; only the
    # newest steps (3 held back, plus the one open in the bank) are still to close.
    order = np.lexsort((ts, index))
    want = [r for r in as_rows(feed(new_state_bank(2), index[order], ts[order], values[order]))
            if r[1] < at(36)]
    got.sort(key=lambda r: (r[0], r[1]))
    assert [r[:2] for r in got] == [r[:2] for r in want] and len(want) == 2 * 36
    np.testing.assert_allclose([r[2] for r in got], [r[2] for r in want], rtol=1e-14)
    assert len(held) == 2 * 3 * 4

def test_points_older_than_the_lateness_are_dropped_as_late():
    bank, held = new_state_bank(1), Held.empty()
    steps, held, late, _ = feed_late(bank, held, [0] * 3, [at(0), at(1), at(5)],
                                     [1.0, 2.0, 3.0], lateness=2)
    assert as_rows(steps) == [(0, at(0), 1.0, False, False)]  # step 1 open, 5 held
    # Minute 1.2 is late but its step is open: it joins it. Minute 0.2 is past it: late.
    steps, held, late, duplicate = feed_late(bank, held, [0, 0], [at(1.2), at(0.2)],
                                             [4.0, 9.0], lateness=2)
    assert (late, duplicate, len(steps)) == (1, 0, 0)
    steps, held, late, _ = feed_late(bank, held, [0], [at(8)], [5.0], lateness=2)
    assert as_rows(steps) == [(0, at(1), 3.0, False, False)]  # (2 + 4) / 2
    assert held.ts_ms.tolist() == [at(8)]  # step 5 is open in the bank, 8 held


def test_a_redelivered_point_is_applied_once_whether_held_or_released():
    bank, held = new_state_bank(1), Held.empty()
    ts, values = [at(0), at(1), at(2), at(3)], [1.0, 2.0, 3.0, 4.0]
    _, held, _, _ = feed_late(bank, held, [0] * 4, ts, values, lateness=1)
    before = (bank.tobytes(), held.ts_ms.tolist(), held.values.tolist())
    steps, held, late, duplicate = feed_late(bank, held, [0] * 4, ts, values, lateness=1)
    assert (len(steps), late, duplicate) == (0, 3, 1)  # minutes 0-2 released; 3 held
    assert (bank.tobytes(), held.ts_ms.tolist(), held.values.tolist()) == before


def test_no_lateness_holds_nothing_back():
    bank, held = new_state_bank(1), Held.empty()
    release, held, late, duplicate = hold_back(
        held, Held(np.zeros(3, np.int64), np.array([at(2), at(0), at(1)]), np.ones(3)),
        bank["watermark_ms"], STEP, 0)
    assert len(held) == 0 and len(release) == 3 and late == duplicate == 0
    assert release.ts_ms.tolist() == [at(0), at(1), at(2)]


def _random_batches(seed: int, n_series: int, n_batches: int):
    """Batches of raw points as real feeds make them: jittered and irregular timestamps,
    several points in some steps (hundreds in a few, beyond the 8- and 128-term blocks of the
    pairwise sum), gaps short and long, repeats, replays, NaN and ±inf, shuffled order."""
    rng = np.random.default_rng(seed)
    clock = np.full(n_series, T0)
    for _ in range(n_batches):
        index, ts = [], []
        for row in range(n_series):
            k = int(rng.choice([0, 1, 3, 20, 300], p=[0.2, 0.4, 0.2, 0.15, 0.05]))
            fast = rng.random() < 0.1  # a burst: up to 240 points a step
            gaps = rng.choice([0, 1_000, 20_000, 60_000, 240_000, 900_000], size=k,
                              p=[0.05, 0.3, 0.3, 0.25, 0.07, 0.03]) // (250 if fast else 1)
            times = clock[row] + np.cumsum(gaps)
            if k:
                clock[row] = times[-1]
            replay = rng.random(k) < 0.05  # redeliveries of older points
            times = np.where(replay, times - rng.integers(0, 600_000, k), times)
            index += [row] * k
            ts += times.tolist()
        values = rng.lognormal(3, 2, len(ts)) * rng.choice([-1, 1], len(ts))
        odd = rng.random(len(ts))
        values[odd < 0.02] = np.nan
        values[(odd >= 0.02) & (odd < 0.025)] = np.inf
        order = rng.permutation(len(ts)) if rng.random() < 0.5 else np.arange(len(ts))
        yield (np.asarray(index, np.int64)[order], np.asarray(ts, np.int64)[order],
               values[order])


@pytest.mark.parametrize("seed", range(6))
def test_compiled_resampling_matches_the_numpy_version_to_the_last_bit(seed):
    # The compiled pass replaced a vectorised numpy version (bench/reference_resample.py):
    # the same steps, values summed as np.add.reduceat sums them, the same states after.
    from bench import reference_resample

    bank, reference_bank = new_state_bank(7), new_state_bank(7)
    closed = 0
    for index, ts, values in _random_batches(seed, n_series=7, n_batches=25):
        max_fill = int(seed % 3) * 3
        got = resample_batch(bank, index, ts, values, STEP, max_fill)
        want = reference_resample.resample_batch(
            reference_bank, index, ts, values, STEP, max_fill)
        assert as_rows(got) == as_rows(want)
        assert got.value.tobytes() == want.value.tobytes()  # bit for bit, signed zeros too
        assert got.dropped == want.dropped
        assert bank.tobytes() == reference_bank.tobytes()
        closed += len(got)
    assert closed > 500 and got.filled.dtype == bool  # the batches did close steps
