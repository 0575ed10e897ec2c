"""The numpy resampler as it was before the compiled one (commit 43c4968, its code verbatim;
its helpers ``_empty_steps``, ``_in_order`` and ``_ordered`` — the points' coercion and sort,
which both versions share — are the live module's, imported).

``vigil.detectors.resample.resample_batch`` folds a batch's points into steps in one compiled
pass; this is the vectorised numpy version it replaced, kept for the comparison only
(``tests/test_resample.py`` checks on random batches that both give the same steps, to the
last bit, and leave the same state; ``bench/compare_detector.py`` documents the detector's).
"""

from __future__ import annotations

import numpy as np

from vigil.detectors.bank import StateBank
from vigil.detectors.resample import Steps, _empty_steps, _in_order, _ordered, step_of

__all__ = ["resample_batch"]


def resample_batch(
    bank: StateBank,
    index: np.ndarray,
    ts_ms: np.ndarray,
    values: np.ndarray,
    step_ms: int,
    max_fill_steps: int,
) -> Steps:
    """:func:`vigil.detectors.resample.resample_batch` as numpy did it (same contract)."""
    # Order by series then time (stable, so equal timestamps keep arrival order).
    index, ts_ms, values = _ordered(index, ts_ms, values)
    if len(index) == 0:
        return _empty_steps(0)

    # Idempotency: drop points at or before the watermark, and repeated timestamps.
    fresh = ts_ms > bank["watermark_ms"][index]
    repeat = np.zeros(len(index), bool)
    repeat[1:] = (index[1:] == index[:-1]) & (ts_ms[1:] == ts_ms[:-1])
    keep = fresh & ~repeat & np.isfinite(values)
    dropped = int(len(keep) - keep.sum())
    index, ts_ms, values = index[keep], ts_ms[keep], values[keep]
    if len(index) == 0:
        return _empty_steps(dropped)

    # Aggregate within steps: runs of equal (series, bucket).
    bucket = step_of(ts_ms, step_ms)
    starts = np.flatnonzero(
        np.r_[True, (index[1:] != index[:-1]) | (bucket[1:] != bucket[:-1])]
    )
    g_index = index[starts]
    g_bucket = bucket[starts]
    g_sum = np.add.reduceat(values, starts)
    g_count = np.diff(np.r_[starts, len(values)]).astype(np.int64)

    # New watermark per touched series = its newest point in this batch.
    last_of_series = np.flatnonzero(np.r_[index[1:] != index[:-1], True])
    bank["watermark_ms"][index[last_of_series]] = ts_ms[last_of_series]

    first_group = np.r_[True, g_index[1:] != g_index[:-1]]
    last_group = np.r_[g_index[1:] != g_index[:-1], True]

    # The open bucket stored in state joins the first group when it is the same step;
    # otherwise it is closed by this batch and goes out before the batch's groups.
    state_bucket = bank["bucket_ms"][g_index]
    has_open = bank["bucket_count"][g_index] > 0
    merge = first_group & has_open & (state_bucket == g_bucket)
    g_sum[merge] += bank["bucket_sum"][g_index[merge]]
    g_count[merge] += bank["bucket_count"][g_index[merge]]
    close_state = first_group & has_open & (state_bucket != g_bucket)
    cs_index = g_index[close_state]
    cs_bucket = state_bucket[close_state]
    cs_value = bank["bucket_sum"][cs_index] / bank["bucket_count"][cs_index]

    # The last group of each series stays open in state; all others are closed steps.
    bank["bucket_ms"][g_index[last_group]] = g_bucket[last_group]
    bank["bucket_sum"][g_index[last_group]] = g_sum[last_group]
    bank["bucket_count"][g_index[last_group]] = g_count[last_group]
    closed = ~last_group
    c_index = np.r_[cs_index, g_index[closed]]
    c_ts = np.r_[cs_bucket, g_bucket[closed]]
    c_value = np.r_[cs_value, g_sum[closed] / g_count[closed]]
    if len(c_index) == 0:
        return _empty_steps(dropped)
    if not _in_order(c_index, c_ts):
        order = np.lexsort((c_ts, c_index))
        c_index, c_ts, c_value = c_index[order], c_ts[order], c_value[order]

    # Gaps: compare each closed step with the previous closed step of its series.
    first_of_series = np.r_[True, c_index[1:] != c_index[:-1]]
    prev_ts = np.empty_like(c_ts)
    prev_ts[1:] = c_ts[:-1]
    prev_ts[first_of_series] = bank["last_step_ms"][c_index[first_of_series]]
    prev_value = np.empty_like(c_value)
    prev_value[1:] = c_value[:-1]
    prev_value[first_of_series] = bank["last_value"][c_index[first_of_series]]
    known = prev_ts >= 0
    missing = np.where(known, (c_ts - prev_ts) // step_ms - 1, 0)
    fill = np.where((missing >= 1) & (missing <= max_fill_steps), missing, 0)
    after_gap = missing > max_fill_steps

    last_closed = np.r_[c_index[1:] != c_index[:-1], True]
    bank["last_step_ms"][c_index[last_closed]] = c_ts[last_closed]
    bank["last_value"][c_index[last_closed]] = c_value[last_closed]

    if not fill.any():
        return Steps(c_index, c_ts, c_value, np.zeros(len(c_ts), bool), after_gap, dropped)

    # Insert filled steps before each step that follows a short gap.
    reps = fill + 1
    out_index = np.repeat(c_index, reps)
    out_value = np.repeat(c_value, reps)
    out_filled = np.ones(len(out_index), bool)
    out_after_gap = np.zeros(len(out_index), bool)
    ends = np.cumsum(reps) - 1  # position of each real step
    out_filled[ends] = False
    out_after_gap[ends] = after_gap
    # Filled steps carry the previous value and consecutive step times.
    offset_in_run = np.arange(len(out_index)) - np.repeat(ends - fill, reps)
    out_ts = np.repeat(c_ts - fill * step_ms, reps) + offset_in_run * step_ms
    out_value[out_filled] = np.repeat(prev_value, reps)[out_filled]
    return Steps(out_index, out_ts, out_value, out_filled, out_after_gap, dropped)
