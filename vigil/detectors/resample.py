"""Resampling raw points to a fixed step, for many series at once.

Raw telemetry arrives at irregular times. The detectors work on a regular grid: every
``step_ms`` milliseconds one value per series, the mean of the raw points in that step. A
step is *centred* on its grid time: step ``t`` (a multiple of ``step_ms``) holds the points
in ``[t − step_ms/2, t + step_ms/2)`` (:func:`step_of`), so nominal timestamps with a little
jitter either way (12:04:58 for the 12:05 sample) land one per step. A step is *closed*
(and handed to the detector) when the first point of a later step arrives; until then its
running sum and count live in the series' state.

Gaps of at most ``max_fill_steps`` missing steps are filled with the last value (marked
``filled`` — the detector does not learn from them); a longer gap is not filled and the first
step after it is marked ``after_gap``.

Replays are idempotent: a point at or before the series' *watermark* (the newest raw
timestamp already applied) is dropped and counted, never applied twice.

Points of one series may also arrive out of order (unkeyed producers spread a series over
several input partitions, read in chunks). :func:`hold_back` is the allowed lateness in
front of :func:`resample_batch`: it holds back each series' raw points of its newest
``lateness_steps`` steps, so that a point up to that many steps late still joins its step;
the points it releases arrive in time order, and steps close ``lateness_steps`` steps later
than without it. With ``lateness_steps = 0`` it holds nothing back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from vigil.detectors.bank import StateBank

__all__ = [
    "Held",
    "MAX_HELD_POINTS",
    "Steps",
    "hold_back",
    "iter_points_in_time_order",
    "last_row_of_step",
    "merged_chunks",
    "resample_batch",
    "step_of",
]


@dataclass(slots=True)
class Steps:
    """Closed, regular steps produced from one batch, ordered by series then time."""

    index: np.ndarray  # int64, row of the series in the state bank
    ts_ms: np.ndarray  # int64, grid time of the step (its centre)
    value: np.ndarray  # float64, mean of the raw points in the step (or the filled value)
    filled: np.ndarray  # bool, value copied from the previous step over a short gap
    after_gap: np.ndarray  # bool, first step after a gap too long to fill
    dropped: int = 0  # raw points at or before their watermark (replays, late or duplicate)

    def __len__(self) -> int:
        return len(self.index)


#: At most this many raw points are held back per series (16 bytes each in its state); beyond
#: it the oldest are released early, so a series sampled every second still fits.
MAX_HELD_POINTS = 256


@dataclass(slots=True)
class Held:
    """Raw points: ``index`` (bank row), ``ts_ms``, ``values``; ordered by row then time
    when :func:`hold_back` returns them."""

    index: np.ndarray
    ts_ms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @staticmethod
    def empty() -> Held:
        return Held(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def hold_back(
    held: Held,
    arrived: Held,
    watermark_ms: np.ndarray,
    step_ms: int,
    lateness_steps: int,
    max_held: int = MAX_HELD_POINTS,
) -> tuple[Held, Held, int, int]:
    """Merge newly ``arrived`` points with those ``held`` back; release what is old enough.

    Per series (bank row), with ``newest`` the step of its newest point held or arrived, the
    points of steps up to ``newest − lateness_steps`` are released (to
    :func:`resample_batch`, in time order) and the others stay held; so a step closes once a
    point ``lateness_steps`` + 1 steps later has arrived, and a point that arrives up to
    ``lateness_steps`` steps late still joins its step. ``watermark_ms`` (per row: the newest
    point already released) is the limit: an arrived point at or before it is *late* (its
    step is closed, or it is a replay) and dropped; one with the timestamp of a point held or
    arrived before it is a *duplicate* (a redelivery) and dropped.

    Returns ``(release, held, late, duplicate)``.

    >>> t0 = 1_699_999_980_000  # a whole minute
    >>> arrived = Held(np.zeros(4, np.int64), t0 + np.array([0, 180_000, 60_000, 240_000]),
    ...                np.array([1., 4., 2., 5.]))
    >>> release, held, late, dup = hold_back(Held.empty(), arrived, np.array([-1]), 60_000, 2)
    >>> release.values.tolist(), held.values.tolist()  # steps 0..2 out, 3 and 4 held
    ([1.0, 2.0], [4.0, 5.0])
    >>> wm = np.array([release.ts_ms[-1]])  # resample_batch moves the watermark to minute 1
    >>> late_one = Held(np.zeros(3, np.int64), t0 + np.array([30_000, 120_000, 180_000]),
    ...                 np.array([9., 3., 4.]))
    >>> release, held, late, dup = hold_back(held, late_one, wm, 60_000, 2)
    >>> release.values.tolist(), held.values.tolist(), late, dup  # minute 2 joins its step
    ([3.0], [4.0, 5.0], 1, 1)
    """
    rows = np.asarray(arrived.index, np.int64)
    ts = np.asarray(arrived.ts_ms, np.int64)
    fresh = ts > np.asarray(watermark_ms, np.int64)[rows]
    late = int(len(rows) - fresh.sum())
    index = np.r_[held.index, rows[fresh]].astype(np.int64)
    ts = np.r_[held.ts_ms, ts[fresh]].astype(np.int64)
    values = np.r_[held.values, np.asarray(arrived.values, np.float64)[fresh]]
    if len(index) == 0:
        return Held.empty(), Held.empty(), late, 0
    # Held points come first: a stable sort keeps the first arrival of a repeated timestamp.
    order = np.lexsort((ts, index))
    index, ts, values = index[order], ts[order], values[order]
    repeat = np.zeros(len(index), bool)
    repeat[1:] = (index[1:] == index[:-1]) & (ts[1:] == ts[:-1])
    duplicate = int(repeat.sum())
    index, ts, values = index[~repeat], ts[~repeat], values[~repeat]

    last_of_series = np.flatnonzero(np.r_[index[1:] != index[:-1], True])
    counts = np.diff(np.r_[-1, last_of_series])
    newest_step = np.repeat(step_of(ts[last_of_series], step_ms), counts)
    from_end = np.repeat(last_of_series, counts) - np.arange(len(index))  # 0 = newest
    keep = (step_of(ts, step_ms) > newest_step - lateness_steps * step_ms) & (
        from_end < max_held
    )
    release = Held(index[~keep], ts[~keep], values[~keep])
    return release, Held(index[keep], ts[keep], values[keep]), late, duplicate


def step_of(ts_ms, step_ms: int):
    """The step (grid time) of raw timestamp(s) ``ts_ms``: the nearest multiple of ``step_ms``.

    Step ``t`` covers ``[t − step_ms/2, t + step_ms/2)``; works on ints and int64 arrays.

    >>> step_of(np.array([-30_000, 0, 29_999, 30_000, 89_999]), 60_000).tolist()
    [0, 0, 0, 60000, 60000]
    """
    return (ts_ms + step_ms // 2) // step_ms * step_ms


def _empty_steps(dropped: int) -> Steps:
    return Steps(
        index=np.empty(0, np.int64),
        ts_ms=np.empty(0, np.int64),
        value=np.empty(0, np.float64),
        filled=np.empty(0, bool),
        after_gap=np.empty(0, bool),
        dropped=dropped,
    )


def _in_order(index: np.ndarray, ts_ms: np.ndarray) -> bool:
    """Whether the points are ordered by series then time already (the stable sort would
    leave them as they are: a history, or a batch of whole series, skips the sort).

    >>> _in_order(np.array([0, 0, 1]), np.array([5, 5, 1])), _in_order(np.array([1, 0]),
    ...                                                                  np.array([0, 0]))
    (True, False)
    """
    same = index[1:] == index[:-1]
    return bool(np.all((index[1:] > index[:-1]) | (same & (ts_ms[1:] >= ts_ms[:-1]))))


def _ordered(index, ts_ms, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points as arrays (int64, int64, float64) ordered by series then time: a stable
    sort, so equal timestamps keep their arrival order, skipped when they are in order."""
    index = np.asarray(index, np.int64)
    ts_ms = np.asarray(ts_ms, np.int64)
    values = np.asarray(values, np.float64)
    if not _in_order(index, ts_ms):
        order = np.lexsort((ts_ms, index))
        index, ts_ms, values = index[order], ts_ms[order], values[order]
    return index, ts_ms, values


def resample_batch(
    bank: StateBank,
    index: np.ndarray,
    ts_ms: np.ndarray,
    values: np.ndarray,
    step_ms: int,
    max_fill_steps: int,
) -> Steps:
    """Fold a batch of raw points into ``bank`` and return the steps it closed.

    ``bank`` holds the series states (its fields ``watermark_ms``, ``bucket_ms``,
    ``bucket_sum``, ``bucket_count``, ``last_step_ms`` and ``last_value`` are used, see
    :mod:`vigil.detectors.bank`); it is updated in place. ``index[i]`` is the bank row of
    point ``i``.

    The points are ordered by series then time (a stable sort, so equal timestamps keep
    their arrival order; skipped when they are in order already), then one compiled pass
    (:func:`_fold`) drops replays, repeats and non-finite values, sums each step's points as
    numpy's ``add.reduceat`` does (:func:`_step_sum`: the same steps to the last bit as the
    vectorised version it replaced, ``bench/reference_resample.py``), closes steps and fills
    short gaps. It runs twice: once to count the steps it will close, once to write them.

    >>> from vigil.detectors.bank import new_state_bank
    >>> bank = new_state_bank(1)
    >>> t0 = 1_699_999_980_000  # a whole minute
    >>> ts = t0 + np.array([0, 30_000, 60_000, 250_000])
    >>> steps = resample_batch(bank, np.zeros(4, np.int64), ts, np.array([1., 3., 5., 7.]),
    ...                        step_ms=60_000, max_fill_steps=5)
    >>> steps.value.tolist()  # step 0 (0 s), step 1 (30 s, 60 s); step 4 (250 s) stays open
    [1.0, 4.0]
    >>> steps = resample_batch(bank, [0], [t0 + 300_000], [9.0], step_ms=60_000, max_fill_steps=5)
    >>> steps.value.tolist(), steps.filled.tolist()  # steps 2 and 3 were missing
    ([4.0, 4.0, 7.0], [True, True, False])
    """
    index, ts_ms, values = _ordered(index, ts_ms, values)
    if len(index) == 0:
        return _empty_steps(0)
    records = bank.records
    n_out, dropped = _fold(records, index, ts_ms, values, step_ms, max_fill_steps, False,
                           *_outputs(0))
    out = _outputs(n_out)
    _fold(records, index, ts_ms, values, step_ms, max_fill_steps, True, *out)
    return Steps(*out, dropped=dropped)


def _outputs(n: int) -> tuple[np.ndarray, ...]:
    return (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.float64),
            np.empty(n, np.bool_), np.empty(n, np.bool_))


# The pairwise summation numpy's add.reduce uses for float64 (numpy/_core/src/umath/
# loops_utils.h.src): below 8 terms one by one from −0.0, up to PW_BLOCKSIZE in 8
# interleaved partial sums, above it split in two halves of multiples of 8.
PW_BLOCKSIZE = 128


@njit(cache=True)
def _pairwise_sum(x, start, n):
    if n < 8:
        res = -0.0
        for i in range(start, start + n):
            res += x[i]
        return res
    if n <= PW_BLOCKSIZE:
        r0, r1, r2, r3 = x[start], x[start + 1], x[start + 2], x[start + 3]
        r4, r5, r6, r7 = x[start + 4], x[start + 5], x[start + 6], x[start + 7]
        i = 8
        while i < n - (n % 8):
            a = start + i
            r0 += x[a]
            r1 += x[a + 1]
            r2 += x[a + 2]
            r3 += x[a + 3]
            r4 += x[a + 4]
            r5 += x[a + 5]
            r6 += x[a + 6]
            r7 += x[a + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += x[start + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(x, start, n2) + _pairwise_sum(x, start + n2, n - n2)


#: :func:`step_of` for the compiled pass (the same code, compiled for int64 scalars).
_step_of = njit(cache=True)(step_of)


@njit(cache=True, inline="always")
def _step_sum(x, start, stop):
    """The sum of ``x[start:stop]`` as ``np.add.reduceat`` gives it: the first term, plus the
    pairwise sum of the others."""
    if stop - start == 1:
        return x[start]
    return x[start] + _pairwise_sum(x, start + 1, stop - start - 1)


@njit(cache=True)
def _fold(states, index, ts_ms, values, step_ms, max_fill_steps, write,
          out_index, out_ts, out_value, out_filled, out_after_gap):
    """Fold points (ordered by series, then time) into ``states``; return the number of
    steps closed (written to the ``out_*`` arrays when ``write``, which also updates the
    states) and of points dropped.

    Per series: points at or before its watermark, repeating the previous point's timestamp
    or not finite are dropped; the others are summed per step; the step open in its state
    joins its first step or is closed before it; its last step stays open; each closed step
    is preceded by the copies of the last value that fill a gap of at most
    ``max_fill_steps`` steps (a longer gap marks it ``after_gap``).
    """
    n = len(index)
    kept = np.empty(n, np.float64)  # a series' kept values, contiguous for the step sums
    kept_step = np.empty(n, np.int64)
    n_out = 0
    dropped = 0
    i = 0
    while i < n:
        row = index[i]
        end = i
        while end < n and index[end] == row:
            end += 1
        s = states[row]
        # Idempotency: points at or before the watermark, and repeated timestamps, go.
        k = 0
        newest = np.int64(-1)
        watermark = s.watermark_ms
        for p in range(i, end):
            t = ts_ms[p]
            if t <= watermark or (p > i and ts_ms[p - 1] == t) or not np.isfinite(values[p]):
                dropped += 1
                continue
            kept[k] = values[p]
            kept_step[k] = _step_of(t, step_ms)
            newest = t
            k += 1
        if k > 0:
            last_ts, last_value = s.last_step_ms, s.last_value
            g = 0
            while g < k:
                stop = g + 1
                while stop < k and kept_step[stop] == kept_step[g]:
                    stop += 1
                bucket = kept_step[g]
                total = _step_sum(kept, g, stop)
                count = np.int64(stop - g)
                # The step open in the state joins this series' first step, or is closed.
                has_open = g == 0 and s.bucket_count > 0
                close_open = has_open and s.bucket_ms != bucket
                if has_open and not close_open:
                    total = total + s.bucket_sum
                    count = count + s.bucket_count
                # Up to two closed steps: the state's open one, then this one unless it is
                # the series' newest, which stays open.
                for which in range(2):
                    if which == 0:
                        if not close_open:
                            continue
                        t, value = s.bucket_ms, s.bucket_sum / s.bucket_count
                    else:
                        if stop == k:
                            continue
                        t, value = bucket, total / count
                    # A gap of at most max_fill_steps since the previous closed step (if
                    # known) is filled with copies of its value; a longer one is marked.
                    missing = (t - last_ts) // step_ms - 1 if last_ts >= 0 else 0
                    fill = missing if 1 <= missing <= max_fill_steps else 0
                    if write:
                        for m in range(fill):
                            out_index[n_out + m] = row
                            out_ts[n_out + m] = t - (fill - m) * step_ms
                            out_value[n_out + m] = last_value
                            out_filled[n_out + m] = True
                            out_after_gap[n_out + m] = False
                        j = n_out + fill
                        out_index[j] = row
                        out_ts[j] = t
                        out_value[j] = value
                        out_filled[j] = False
                        out_after_gap[j] = missing > max_fill_steps
                    n_out += fill + 1
                    last_ts, last_value = t, value
                if stop == k and write:
                    s.bucket_ms = bucket
                    s.bucket_sum = total
                    s.bucket_count = count
                g = stop
            if write:
                s.watermark_ms = newest
                s.last_step_ms = last_ts
                s.last_value = last_value
        i = end
    return n_out, dropped


def last_row_of_step(row_ts_ms: np.ndarray, step_ts_ms: np.ndarray, step_ms: int) -> np.ndarray:
    """For each step, the last raw row (sorted ``row_ts_ms``) inside it, or −1 if none.

    A step's verdict is known once its last raw point is in, so offline evaluation puts it
    on that row; a filled step (no raw point) has no row.

    >>> rows = np.array([0, 30_000, 60_000, 250_000])
    >>> last_row_of_step(rows, np.array([0, 60_000, 120_000, 240_000]), 60_000).tolist()
    [0, 2, -1, 3]
    """
    bucket = step_of(np.asarray(row_ts_ms, np.int64), step_ms)
    step_ts_ms = np.asarray(step_ts_ms, np.int64)
    last = np.searchsorted(bucket, step_ts_ms, side="right") - 1
    inside = (last >= 0) & (bucket[np.maximum(last, 0)] == step_ts_ms)
    return np.where(inside, last, -1)


def iter_points_in_time_order(
    dataset: Any, chunk: int = 10_000, *, shift_to_ms: int | None = None
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """All points of all series merged by timestamp (ties by series id), in columnar chunks.

    ``dataset`` is anything with a ``series`` mapping of id → an object with ``ts_ms`` and
    ``values`` arrays (the lab's datasets, the generator's telemetry).

    Yields ``(series_ids, ts_ms, values)`` with at most ``chunk`` points each. With
    ``shift_to_ms`` timestamps move by one constant so that the newest point lands there.

    >>> from types import SimpleNamespace as NS
    >>> a = NS(ts_ms=np.array([0, 120]), values=np.array([1.0, 3.0]))
    >>> b = NS(ts_ms=np.array([60, 120]), values=np.array([2.0, 4.0]))
    >>> for ids, ts, vs in iter_points_in_time_order(NS(series={"a": a, "b": b}), 3):
    ...     print(ids, ts.tolist(), vs.tolist())
    ['a', 'b', 'a'] [0, 60, 120] [1.0, 2.0, 3.0]
    ['b'] [120] [4.0]
    """
    ids = sorted(dataset.series)
    offset = 0
    if shift_to_ms is not None:
        newest = max((int(s.ts_ms[-1]) for s in dataset.series.values() if len(s)), default=0)
        offset = shift_to_ms - newest
    for series_index, ts, values in merged_chunks(dataset.series, ids, chunk):
        yield [ids[i] for i in series_index.tolist()], ts + offset, values


def merged_chunks(
    series: Mapping[str, Any], ids: list[str], chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(index into ids, ts_ms, values)`` chunks of all points, by time then series id."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    parts = [series[sid] for sid in ids]
    if not parts:
        return
    ts = np.concatenate([np.asarray(s.ts_ms, np.int64) for s in parts])
    values = np.concatenate([np.asarray(s.values, np.float64) for s in parts])
    index = np.repeat(np.arange(len(parts)), [len(s.ts_ms) for s in parts])
    order = np.lexsort((index, ts))
    for lo in range(0, len(order), chunk):
        rows = order[lo : lo + chunk]
        yield index[rows], ts[rows], values[rows]
