"""The online seasonal detector: one compact state record per series, updated in batches.

For every closed step ``y_t`` of a series (see :mod:`vigil.detectors.resample`):

* **Baseline.** A slow level ``B`` (half-life ~1 day) and two seasonal profiles are learned
  from the value: a daily profile ``D`` in 15-minute slots and a weekly profile ``W`` in
  hourly slots (deviation from the daily one), both interpolated linearly between slots and
  stored as float32. A profile is *applied* only once it explains enough of the variance
  around ``B`` out of sample (``1 - E[(y-B-D)^2] / E[(y-B)^2] ≥ daily_on``), so a series
  without seasonality gets none. The forecast is Holt-style on the deseasonalised value::

      expected_t = L_{t-1} + T_{t-1} + g_d·D(t) + g_w·W(t)

  with level ``L`` and trend ``T`` updated from the Huber-clipped residual, so a spike does
  not drag the baseline while a lasting level shift is learned within hours.
* **Scale.** ``σ = 1.2533 · EW mean |r|`` (an exponentially weighted mean absolute
  deviation, robust to the outliers it is clipped against), floored at ``scale_floor`` times
  the series' typical step ``EW mean |Δy|`` over *all* steps: on a mostly-constant series
  (zero disk writes, a noise-free square wave) the MAD collapses to ~0 and every blip would
  otherwise score 1e9σ.
* **Scores** as equivalent Gaussian z-scores, the largest of:
  point ``|r|/σ``; level shift (short EW mean of the clipped z); variance change (short EW
  mean of z²); total variation ``S = Σ|y(t+1) − y(t)|`` over a short window against its
  long-run value (bursts of oscillation at a normal mean level); flatline (a run of
  unchanged values, scored by how rare an unchanged step is for this series). Each window
  statistic is normalised by its own long-run spread, so one parameter set serves all series.
* **Drift** (opens incidents, never holds them): the mean over ``drift_window_steps`` of the
  clipped deviation from the *slow* baseline ``B`` (plus the profiles), against its own
  long-run spread — a rise of 1–2σ lasting hours, which ``L`` follows within the hour so the
  level statistic misses it. Only while the level statistic is past ``drift_level_z`` (a
  trend the forecast follows is no drift), on series ``drift_min_days`` old, once per
  excursion.
* **What is news.** A score past ``z_open`` opens an incident only if it is news for the
  series: *rare* — fewer than ``rarity_max`` excursions of the score (runs above
  ``z_close``) reached the level just under it (levels ``z_open·√2^k``) in the recent past
  (decayed count, half-life ``rarity_halflife_s`` at ``z_open``, × ``rarity_growth`` per level
  up; recurring excursions not counted), so a series that spikes this high every few hours
  has learned that such spikes are its normal, while a much larger one is still news — and
  not *recurring*: as high as the scores at this hour of the day on about two previous days
  (a nightly job). Flatlines are exempt (their score already says how rare an
  unchanged step is for the series). A *burst* is news even where single extreme steps are
  not: the count of extreme steps in the last ``burst_window_s`` (EW) is improbable under
  the series' long-run rate of them (Poisson tail ``≤ burst_p``, at least
  ``burst_min_hits``) — spikes that come much denser than usual. The scores themselves are
  unchanged.
* **Incidents** open when a score that is news passes ``z_open``, stay open while it is above
  ``z_close``, and resolve after ``resolve_steps`` calm steps, at most ``resolve_max_s`` of
  them (hysteresis): a long anomaly is one ``open``, an ``update`` when it becomes critical,
  and one ``resolve``.

All state lives in one fixed-size record per series (:data:`STATE_DTYPE`, about 1.8 KB),
held as a struct of arrays (:class:`~vigil.detectors.bank.StateBank`); a batch updates the
touched series step by step, vectorised over all of them at once.

>>> det = SeriesDetector()
>>> t0 = 1_700_006_400_000  # a Wednesday, 00:00 UTC
>>> rng = np.random.default_rng(0)
>>> for i in range(3 * 1440):
...     _ = det.learn_one(t0 + i * 60_000, 50 + rng.normal())
>>> det.score_one(t0 + 3 * 1440 * 60_000, 50.5) < 0.9
True
>>> det.score_one(t0 + 3 * 1440 * 60_000, 80.0) > 0.999
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammainc, ndtr

from vigil.detectors.bank import (
    DAILY_SLOTS,
    RARITY_LEVELS,
    STATE_DTYPE,
    WEEKLY_SLOTS,
    StateBank,
    new_state_bank,
)
from vigil.detectors.resample import Steps, resample_batch, step_of

__all__ = [
    "ANOMALY_TYPES",
    "EVENT_KINDS",
    "MAX_FILL_S",
    "SEVERITIES",
    "DetectorParams",
    "OnlineDetector",
    "SeriesDetector",
    "StepResults",
    "StepScore",
    "describe",
    "STATE_DTYPE",
    "new_state_bank",
]

_MEAN_ABS_Z = float(np.sqrt(2.0 / np.pi))  # E|z| for z ~ N(0, 1)
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
MONDAY_OFFSET_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; 1970-01-05 a Monday

ANOMALY_TYPES = ("none", "point", "level_shift", "variance", "oscillation", "flatline", "drift")
SEVERITIES = ("none", "warning", "critical")
EVENT_KINDS = ("", "open", "update", "resolve")


def _alpha(step_s: float, halflife_s: float) -> float:
    """Per-step weight of an exponential average with the given half-life."""
    return float(1.0 - 0.5 ** (step_s / halflife_s))


#: Gaps of up to this many seconds are filled with the last value (the default of
#: :attr:`DetectorParams.max_fill_s`, and of the lab models that resample a series alike).
MAX_FILL_S = 300


def _knob(default, description: str):
    """A dataclass field with its description in ``metadata["description"]``: what
    ``dataclasses.fields`` gives a docs generator, and what pydantic reads as the field's
    description where :class:`DetectorParams` is nested in the settings."""
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class DetectorParams:
    """Every knob of the online detector; times are in seconds so one set fits any step.

    The defaults are one parameter set for all series (no per-series tuning). Each field's
    description (its meaning and unit) is in its metadata, ``metadata["description"]``:

    >>> from dataclasses import fields
    >>> first = fields(DetectorParams)[0]
    >>> first.name, first.metadata["description"].split(":")[0]
    ('step_s', 'Step length in seconds')

    A name carries its unit (``_s``, ``_steps``, ``_days``, ``_weeks``; ``z`` for a score in
    σ); the others are ratios, counts or a probability, as their description says. Scores are
    equivalent Gaussian z-scores: multiples of σ, the series' robust scale (or of a window
    statistic's own long-run spread).
    """

    step_s: int = _knob(
        60, "Step length in seconds: each series is resampled to one value (the mean of its "
        "points) per step.")
    max_fill_s: int = _knob(
        MAX_FILL_S, "Longest gap in seconds filled with the last value (filled steps are not "
        "learned from); a longer gap resets the short windows. At least one step is filled.")
    warmup_steps: int = _knob(
        60, "Observed steps a series needs before it is scored (its scores are 0 until then).")
    level_halflife_s: float = _knob(
        3_600.0, "Half-life in seconds of the fast level L (learned from the Huber-clipped "
        "residual).")
    trend_halflife_s: float = _knob(86_400.0, "Half-life in seconds of the trend T.")
    slow_level_halflife_s: float = _knob(
        86_400.0, "Half-life in seconds of the slow baseline B (learned from calm steps only); "
        "seasonality and drift are measured around it.")
    scale_halflife_s: float = _knob(
        6 * 3_600.0, "Half-life in seconds of the scale σ (an EW mean absolute residual).")
    hourly_scale_halflife_days: float = _knob(
        3.0, "Half-life in days of the scale's hour-of-day profile (each hour's slot learns "
        "once a day; after a day σ is the hour's own).")
    daily_halflife_days: float = _knob(
        3.0, "Half-life in days of the daily profile's 15-minute slots (each learns once a "
        "day).")
    weekly_halflife_weeks: float = _knob(
        2.0, "Half-life in weeks of the weekly profile's hourly slots (each learns once a "
        "week).")
    seasonality_halflife_s: float = _knob(
        3 * 86_400.0, "Half-life in seconds of the out-of-sample variances (around B, B + "
        "daily, B + daily + weekly) that switch the profiles on and off.")
    daily_on: float = _knob(
        0.30, "Share of the variance around B (ratio, 0–1) the daily profile must explain to "
        "be switched on.")
    daily_off: float = _knob(
        0.15, "Share of the variance (ratio, 0–1) under which an applied daily profile is "
        "switched off again (hysteresis with daily_on).")
    daily_min_days: float = _knob(
        1.5, "Age in days a series needs before its daily profile may be applied.")
    learn_all_days: float = _knob(
        2.0, "During a series' first days (this many), the profiles learn from every observed "
        "step, extreme ones too (a sharp daily shape must be learned before it is normal).")
    drift_window_steps: float = _knob(
        60.0, "Span in steps of the drift statistic's EW mean (of the clipped deviation from "
        "the slow baseline).")
    drift_min_days: float = _knob(
        5.0, "Age in days a series needs before drift may open an incident.")
    drift_z: float = _knob(
        6.0, "Drift statistic (in its own long-run spreads) from which drift opens an "
        "incident.")
    drift_level_z: float = _knob(
        3.0, "Level statistic (σ) that must be reached too for drift to open (a trend the "
        "forecast follows is no drift).")
    weekly_on: float = _knob(
        0.20, "Share of the variance around B + daily (ratio, 0–1) the weekly profile must "
        "explain to be switched on.")
    weekly_off: float = _knob(
        0.10, "Share of the variance (ratio, 0–1) under which an applied weekly profile is "
        "switched off again.")
    weekly_min_days: float = _knob(
        9.0, "Age in days a series needs before its weekly profile may be applied.")
    huber_z: float = _knob(
        3.0, "Residuals are clipped to ± this many σ when the level learns (Huber), so a spike "
        "does not drag the baseline.")
    short_window_steps: float = _knob(
        15.0, "Span in steps of the level statistic's EW mean (of the clipped z).")
    variance_window_steps: float = _knob(
        45.0, "Span in steps of the variance and total-variation (oscillation) statistics' EW "
        "means.")
    spread_halflife_s: float = _knob(
        86_400.0, "Half-life in seconds of the window statistics' long-run spreads (their "
        "normalisers), of the total variation's long-run value, of the unchanged-step rate "
        "and of the typical step |Δy|.")
    flat_min_steps: int = _knob(
        10, "Unchanged steps in a row from which the flatline statistic counts.")
    z_open: float = _knob(
        6.0, "Score (σ) from which an incident opens, when the score is news for the series; "
        "also the half-width of the published band (expected ± z_open·σ).")
    z_close: float = _knob(
        3.0, "Score (σ) an open incident's steps must stay under to count as calm (and that "
        "ends an excursion of the score).")
    z_critical: float = _knob(12.0, "Score (σ) from which an incident is critical.")
    resolve_steps: int = _knob(
        40, "Calm steps in a row that resolve an incident (see calm_steps_to_resolve).")
    resolve_max_s: float = _knob(
        12_000.0, "The most calm time in seconds an incident waits to resolve: caps "
        "resolve_steps at long steps.")
    scale_floor: float = _knob(
        0.25, "σ is at least this fraction (ratio) of the series' typical step |Δy| over all "
        "steps, so a mostly-constant series does not score every blip at 1e9 σ.")
    rarity_halflife_s: float = _knob(
        86_400.0, "Half-life in seconds of the count of recent excursions that reached "
        "z_open (each level up, z_open·√2^k, is remembered rarity_growth times longer).")
    rarity_max: float = _knob(
        2.0, "A score is rare (news) while fewer than this many excursions (a decayed count) "
        "reached its level recently.")
    rarity_growth: float = _knob(
        1.3, "Factor (ratio) by which the rarity half-life grows per level up (levels "
        "z_open·√2^k).")
    recur_halflife_s: float = _knob(
        3 * 86_400.0, "Half-life in seconds of the hour-of-day memory of extreme scores (their "
        "count and maximum).")
    recur_margin: float = _knob(
        1.5, "A score at most this multiple (ratio) of the highest one at this hour on "
        "previous days is recurring (a nightly job), not news.")
    recur_min_count: float = _knob(
        1.2, "Extreme events at this hour (a decayed count, about days) needed before a score "
        "can be recurring.")
    burst_window_s: float = _knob(
        3_600.0, "Half-life in seconds of the recent count of extreme steps (the burst "
        "window).")
    burst_halflife_s: float = _knob(
        3 * 86_400.0, "Half-life in seconds of the long-run rate of extreme steps that a "
        "burst is measured against.")
    burst_p: float = _knob(
        1e-4, "Poisson tail probability of the recent count, under the long-run rate, at or "
        "below which extreme steps are a burst (news even where single ones are not).")
    burst_min_hits: float = _knob(
        3.0, "Fewest extreme steps (EW count) in the burst window that can be a burst.")

    @property
    def step_ms(self) -> int:
        return int(self.step_s * 1000)

    @property
    def calm_steps_to_resolve(self) -> int:
        """Calm steps that resolve an incident: ``resolve_steps``, but no more than
        ``resolve_max_s`` worth (40 steps are 40 minutes at a 1-minute step and 3 h 20 at 5
        minutes, but 40 hours at an hourly step, long enough to merge a day's anomalies).

        >>> [DetectorParams(step_s=s).calm_steps_to_resolve for s in (60, 300, 900, 3600)]
        [40, 40, 14, 4]
        """
        return max(1, min(self.resolve_steps, math.ceil(self.resolve_max_s / self.step_s)))

    @property
    def max_fill_steps(self) -> int:
        """Missing steps filled over a gap: ``max_fill_s`` worth, but at least one step (a
        single missing point of hourly data is not a gap that resets the short windows)."""
        return max(1, int(self.max_fill_s // self.step_s))


@dataclass(slots=True)
class StepResults:
    """Per-step outputs of one batch (aligned with :class:`Steps`)."""

    steps: Steps
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    z: np.ndarray  # equivalent z-score (largest of the statistics), 0 during warm-up
    score: np.ndarray  # 1 - two-sided Gaussian tail probability of z
    anomaly_type: np.ndarray  # index into ANOMALY_TYPES
    contextual: np.ndarray  # bool: value plausible for the series, but not at this time
    event: np.ndarray  # index into EVENT_KINDS
    severity: np.ndarray  # index into SEVERITIES
    incident_start_ms: np.ndarray
    seasonality: np.ndarray  # 0 none, 1 daily, 2 daily + weekly

    def events(self) -> np.ndarray:
        """Positions of the steps that produced an incident event."""
        return np.flatnonzero(self.event)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log from exactly rounded operations only (positive ``x``).

    ``np.log`` may take a vectorised path for some elements of an array and a scalar one for
    others, with results a unit in the last place apart; the detector's decisions would then
    depend on how a batch happened to be split. ``x = m·2^e`` (exact, ``frexp``, with m in
    [√½, √2)) and ``ln m = 2·atanh(u)``, ``u = (m−1)/(m+1)``, summed to u⁹ (error < 1e-9).

    >>> x = np.array([1e-3, 0.5, 0.7, 1.0, 1.4, 7.0, 1e12])
    >>> float(np.max(np.abs(_log(x) - np.log(x)))) < 1e-9
    True
    """
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, 2.0 * m, m)
    e = np.where(low, e - 1, e)
    u = (m - 1.0) / (m + 1.0)
    u2 = u * u
    series = u * (1.0 + u2 * (1.0 / 3.0 + u2 * (1.0 / 5.0 + u2 * (1.0 / 7.0 + u2 / 9.0))))
    return 2.0 * series + e * _LN2


_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476


def _int_power(base: float, n: np.ndarray) -> np.ndarray:
    """``base ** n`` for non-negative integer ``n`` from exactly rounded products only.

    >>> float(_int_power(0.5, np.array([10]))[0]) == 0.5**10
    True
    """
    n = np.asarray(n, np.int64).copy()
    out = np.ones(len(n))
    b = float(base)
    while n.any():
        out = np.where(n & 1, out * b, out)
        b *= b
        n >>= 1
    return out


def _interp(profile: np.ndarray, rows: np.ndarray, pos: np.ndarray):
    """Linear interpolation in cyclic slot profiles; returns value, slots and weights."""
    n = profile.shape[1]
    i0 = pos.astype(np.int64) % n
    w = pos - np.floor(pos)
    i1 = (i0 + 1) % n
    value = (1.0 - w) * profile[rows, i0] + w * profile[rows, i1]
    return value, i0, i1, w


class OnlineDetector:
    """Batch form of the detector over a bank of series states (the hot path).

    Parameters
    ----------
    params
        :class:`DetectorParams`; one set for every series.

    >>> det = OnlineDetector()
    >>> bank = new_state_bank(2)
    >>> t = 1_700_006_400_000 + 60_000 * np.arange(200)
    >>> idx = np.r_[np.zeros(200, int), np.ones(200, int)]
    >>> y = np.r_[np.full(200, 5.0) + np.sin(np.arange(200)), np.full(200, 9.0)]
    >>> y[199] = 40.0  # a spike on series 0 (its step closes with the next batch)
    >>> r = det.process(bank, idx, np.r_[t, t], y)
    >>> r = det.process(bank, [0, 1], [t[-1] + 60_000] * 2, [5.0, 9.0])
    >>> [ANOMALY_TYPES[a] for a in r.anomaly_type], [EVENT_KINDS[e] for e in r.event]
    (['point', 'none'], ['open', ''])
    """

    def __init__(self, params: DetectorParams | None = None) -> None:
        self.params = params or DetectorParams()
        p = self.params
        s = p.step_s
        self._a_level = _alpha(s, p.level_halflife_s)
        self._a_trend = _alpha(s, p.trend_halflife_s)
        self._a_slow = _alpha(s, p.slow_level_halflife_s)
        self._a_scale = _alpha(s, p.scale_halflife_s)
        self._a_daily = _alpha(s, p.daily_halflife_days * 900.0)
        self._a_weekly = _alpha(s, p.weekly_halflife_weeks * 3600.0)
        self._a_season = _alpha(s, p.seasonality_halflife_s)
        self._a_short = 2.0 / (p.short_window_steps + 1.0)
        self._a_var = 2.0 / (p.variance_window_steps + 1.0)
        self._a_drift = 2.0 / (p.drift_window_steps + 1.0)
        # Spread of an EW mean of iid N(0,1) over the drift window (the floor of its spread).
        self._drift_floor = float(np.sqrt(self._a_drift / (2.0 - self._a_drift)))
        self._drift_min_steps = p.drift_min_days * 86_400 / s
        self._resolve_steps = p.calm_steps_to_resolve
        self._a_spread = _alpha(s, p.spread_halflife_s)
        self._daily_min_steps = p.daily_min_days * 86_400 / s
        self._learn_all_steps = p.learn_all_days * 86_400 / s
        self._day_steps = 86_400 / s
        self._a_hour = _alpha(s, p.hourly_scale_halflife_days * 3600.0)
        self._weekly_min_steps = p.weekly_min_days * 86_400 / s
        # Spread of a short EW mean of iid N(0,1) — the floor of the level statistic's spread.
        self._level_floor = float(np.sqrt(self._a_short / (2.0 - self._a_short)))
        # ... and of a short EW mean of |N(0,1)| (sd of |z| is 0.60).
        self._var_floor = float(0.60 * np.sqrt(self._a_var / (2.0 - self._a_var)))
        # ... and of the log of a short EW mean of |Δy| for Gaussian noise (CV of |Δy| 0.76).
        self._tv_floor = float(0.76 * np.sqrt(self._a_var / (2.0 - self._a_var)))
        self._recur_decay = 0.5 ** (s / p.recur_halflife_s)
        self._rarity_decays = [
            0.5 ** (s / (p.rarity_halflife_s * p.rarity_growth**k)) for k in range(RARITY_LEVELS)
        ]
        self._a_burst = _alpha(s, p.burst_window_s)
        self._a_burst_long = _alpha(s, p.burst_halflife_s)
        self._levels = p.z_open * np.sqrt(2.0) ** np.arange(RARITY_LEVELS)

    def process(
        self, bank: StateBank, index, ts_ms, values, direction: np.ndarray | None = None
    ) -> StepResults:
        """Fold raw points (any order, any series mix) into ``bank`` and score closed steps.

        ``direction`` (optional, one int per bank row) says which deviations count: ``+1``
        only values above the expectation (e.g. memory or disk *used*), ``-1`` only below,
        ``0`` both. Oscillation and flatline count either way.
        """
        p = self.params
        steps = resample_batch(bank, index, ts_ms, values, p.step_ms, p.max_fill_steps)
        return self.process_steps(bank, steps, direction)

    def process_steps(
        self, bank: StateBank, steps: Steps, direction: np.ndarray | None = None
    ) -> StepResults:
        """Score and learn already-resampled steps (ordered by series then time)."""
        n = len(steps)
        out = StepResults(
            steps=steps,
            expected=np.zeros(n),
            lower=np.zeros(n),
            upper=np.zeros(n),
            z=np.zeros(n),
            score=np.zeros(n),
            anomaly_type=np.zeros(n, np.int8),
            contextual=np.zeros(n, bool),
            event=np.zeros(n, np.int8),
            severity=np.zeros(n, np.int8),
            incident_start_ms=np.full(n, -1, np.int64),
            seasonality=np.zeros(n, np.int8),
        )
        if n == 0:
            return out
        # The batch's series, busiest first: round r (the r-th step of every series that has
        # one) then covers a prefix of them, worked on through views without copies.
        first = np.r_[True, steps.index[1:] != steps.index[:-1]]
        starts = np.flatnonzero(first)
        counts = np.diff(np.r_[starts, n])
        busiest = np.argsort(-counts, kind="stable")
        rows = steps.index[starts][busiest]
        in_place = len(rows) == len(bank) and bool((rows == np.arange(len(bank))).all())
        local = bank if in_place else bank.take(rows)
        series_of_step = np.cumsum(first) - 1
        local_of_series = np.empty(len(rows), np.int64)
        local_of_series[busiest] = np.arange(len(rows))
        local_index = local_of_series[series_of_step]
        rank = np.arange(n) - starts[series_of_step]
        order = np.lexsort((local_index, rank))
        rounds = int(counts.max())
        bounds = np.searchsorted(rank[order], np.arange(rounds + 1))
        sign = None if direction is None else np.asarray(direction, np.float64)[rows]
        for r in range(rounds):
            pos = order[bounds[r] : bounds[r + 1]]
            k = len(pos)
            part = local if k == len(local) else local.prefix(k)
            self._round(part, pos, steps, out, None if sign is None else sign[:k])
        if not in_place:
            bank.put(rows, local)
        return out

    # One step for the first k series of `st` (a StateBank or a prefix view of one); pos are
    # the positions of their steps in `steps`, in the same order.
    def _round(
        self,
        st: StateBank,
        pos: np.ndarray,
        steps: Steps,
        out: StepResults,
        sign: np.ndarray | None = None,
    ) -> None:
        p = self.params
        k = len(pos)
        rows = np.arange(k)
        t = steps.ts_ms[pos]
        y = steps.value[pos]
        filled = steps.filled[pos]
        after_gap = steps.after_gap[pos]
        observed = ~filled

        fresh = st["n_steps"] == 0
        if fresh.any():
            f = fresh
            st["level"][f] = y[f]
            st["slow_level"][f] = y[f]
            st["prev_value"][f] = y[f]
            st["tv_short"][f] = 0.0
            st["level_spread"][f] = self._level_floor
            st["var_short"][f] = _MEAN_ABS_Z
            st["var_center"][f] = _MEAN_ABS_Z
            st["var_spread"][f] = self._var_floor
            st["tv_spread"][f] = self._tv_floor
            st["drift_spread"][f] = self._drift_floor
            st["drift_armed"][f] = 1

        # Bias-corrected weights: early on, averages weigh every observation equally.
        n = st["n_steps"].astype(np.float64)
        warm = 1.0 / (n + 1.0)

        def weight(alpha: float) -> np.ndarray:
            return np.maximum(alpha, warm)

        # Seasonal components at this time.
        daily_pos = (t % DAY_MS) / (DAY_MS / DAILY_SLOTS)
        weekly_pos = ((t - MONDAY_OFFSET_MS) % WEEK_MS) / (WEEK_MS / WEEKLY_SLOTS)
        s_d, d0, d1, dw = _interp(st["daily"], rows, daily_pos)
        s_w, w0, w1, ww = self._weekly_value(st, rows, weekly_pos)

        # Seasonality detection (out of sample: profiles before this step's update).
        dev = y - st["slow_level"]
        var_none, var_daily, var_weekly = st["var_none"], st["var_daily"], st["var_weekly"]
        with np.errstate(over="ignore"):  # a zero variance: gain −inf, the component stays off
            daily_gain = 1.0 - var_daily / np.maximum(var_none, 1e-300)
            weekly_gain = 1.0 - var_weekly / np.maximum(var_daily, 1e-300)
        old_d, old_w = st["daily_on"].astype(bool), st["weekly_on"].astype(bool)
        new_d = np.where(old_d, daily_gain > p.daily_off, daily_gain > p.daily_on)
        new_d &= n >= self._daily_min_steps
        new_w = np.where(old_w, weekly_gain > p.weekly_off, weekly_gain > p.weekly_on)
        new_w &= new_d & (n >= self._weekly_min_steps)
        # Re-base the fast level when a component is switched, so the forecast is continuous.
        st["level"] += np.where(new_d & ~old_d, -s_d, 0.0) + np.where(~new_d & old_d, s_d, 0.0)
        st["level"] += np.where(new_w & ~old_w, -s_w, 0.0) + np.where(~new_w & old_w, s_w, 0.0)
        st["daily_on"], st["weekly_on"] = new_d, new_w
        season = np.where(new_d, s_d, 0.0) + np.where(new_w, s_w, 0.0)

        # Forecast and residual.
        forecast = st["level"] + st["trend"]
        expected = forecast + season
        r = y - expected
        # Noise often follows the day (busy hours are noisier): after a day, the scale is the
        # hour's own, but never under a third of the overall one.
        hour_pos = (t % DAY_MS) / 3_600_000.0
        mad_hour, h0, h1, hw = _interp(st["mad_hourly"], rows, hour_pos)
        hours_known = n >= self._day_steps
        mad = np.where(hours_known, np.maximum(mad_hour, st["mad"] / 3.0), st["mad"])
        sigma = 1.2533 * mad
        sigma = np.maximum(sigma, 1e-9 + 1e-6 * np.abs(st["slow_level"]))
        # Floor: a fraction of the series' typical step |Δy| over all steps (anomalies too),
        # so a mostly-constant series (σ → 0) does not turn every blip into z = 1e12.
        sigma = np.maximum(sigma, p.scale_floor * st["dy_all"])
        z = r / sigma
        zc = np.clip(z, -4.0, 4.0)
        if sign is not None:
            # One-sided series: deviations the other way count as none at all.
            ignored = (sign != 0) & (z * sign < 0)
            zc = np.where(ignored, 0.0, zc)

        # Window statistics (short EW windows against their own long-run spread).
        a_s = self._a_short
        level_short = (1 - a_s) * st["level_short"] + a_s * zc
        a_v = self._a_var
        var_short = (1 - a_v) * st["var_short"] + a_v * np.abs(zc - st["level_short"])
        dy = np.abs(y - st["prev_value"])
        dy_all = st["dy_all"]
        tv_long = st["tv_long"]
        dy_c = np.where(tv_long > 0, np.minimum(dy, 10.0 * tv_long), dy)
        tv_short = (1 - a_v) * st["tv_short"] + a_v * dy_c
        zero = dy <= 1e-12 * np.maximum(1.0, np.abs(y))
        flat_run = np.where(zero, st["flat_run"] + 1, 0)
        # A long gap resets the short windows: nothing is known about the time in between.
        if after_gap.any():
            g = after_gap
            level_short[g] = 0.0
            var_short[g] = st["var_center"][g]
            tv_short[g] = tv_long[g]
            flat_run[g] = 0

        stat_point = np.abs(z) if sign is None else np.where(ignored, 0.0, np.abs(z))
        stat_level = np.abs(level_short) / np.maximum(1.25 * st["level_spread"], self._level_floor)
        stat_var = (var_short - st["var_center"]) / np.maximum(
            1.25 * st["var_spread"], self._var_floor
        )
        # Total variation on a log scale: the ratio of two EW means is right-skewed.
        with np.errstate(over="ignore"):
            ratio = np.maximum(tv_short, 1e-300) / np.maximum(tv_long, 1e-300)
        log_ratio = _log(np.minimum(ratio, 1e300))
        log_ratio = np.where(tv_long > 0, np.clip(log_ratio, -20.0, 20.0), 0.0)
        stat_osc = log_ratio / np.maximum(1.25 * st["tv_spread"], self._tv_floor)
        rare = -_log(np.clip(st["zero_rate"], 1e-3, 0.999))
        stat_flat = np.where(
            flat_run >= p.flat_min_steps, np.sqrt(2.0 * flat_run * rare), 0.0
        )
        stats = np.stack([stat_point, stat_level, stat_var, stat_osc, stat_flat])
        best = np.argmax(stats, axis=0)
        z_eff = stats[best, rows]
        scoring = observed & (n >= p.warmup_steps)
        z_eff = np.where(scoring, np.maximum(z_eff, 0.0), 0.0)
        extreme = z_eff >= p.z_open
        # Rarity and recurrence (see _novelty) decide whether an incident opens; within an
        # open incident every extreme step is part of it.
        novel = np.ones(k, bool)
        ext = np.flatnonzero(extreme)
        if len(ext):
            novel[ext] = self._novelty(
                st, ext, t[ext], z_eff[ext], hours_known[ext], h0[ext], h1[ext], hw[ext]
            )
        # A flatline is scored by how rare an unchanged step is for the series already.
        novel |= best == ANOMALY_TYPES.index("flatline") - 1
        # Burst: many extreme steps lately for a series where they are rare. The recent count
        # (EW, ~burst_window_s) against the Poisson tail of the long-run rate's count.
        hit = extreme.astype(np.float64)
        b_short = (1 - self._a_burst) * st["burst_short"] + self._a_burst * hit
        b_mean = st["burst_mean"].astype(np.float64)
        burst = np.zeros(k, bool)
        cand = np.flatnonzero(scoring & extreme & (b_short >= p.burst_min_hits * self._a_burst))
        if len(cand):
            count = b_short[cand] / self._a_burst
            mean = np.maximum(b_mean[cand] / self._a_burst, 1e-6)
            burst[cand] = gammainc(count, mean) <= p.burst_p  # P(X ≥ count), X ~ Poisson(mean)
        a_bl = weight(self._a_burst_long)
        st["burst_mean"] = np.where(observed, b_mean + a_bl * (hit - b_mean), b_mean)
        st["burst_short"] = np.where(observed, b_short, st["burst_short"])
        is_open = st["incident_open"].astype(bool)
        anomalous = extreme & (novel | burst | is_open)
        kind = best + 1  # index into ANOMALY_TYPES

        # Drift: the values have stayed off the slow baseline (half-life a day) for hours —
        # a rise the fast level has followed, so the level statistic alone, which compares
        # with the fast level, no longer sees it. The drift window's mean of the clipped
        # deviation against its own long-run spread; it opens an incident when it first
        # passes drift_z while the fast level statistic is past drift_level_z too (a trend
        # the forecast follows is no drift), on a series old enough for the baseline and the
        # spread to be known. It only opens: what holds an incident open is the other scores;
        # and once per excursion (re-armed when the statistic is back under z_close, and
        # only outside incidents).
        zs = np.clip((y - st["slow_level"] - season) / sigma, -4.0, 4.0)
        if sign is not None:
            zs = np.where((sign != 0) & (zs * sign < 0), 0.0, zs)
        drift_short = (1 - self._a_drift) * st["drift_short"] + self._a_drift * zs
        drift_short = np.where(after_gap, 0.0, drift_short)
        d_spread = np.maximum(1.25 * st["drift_spread"], self._drift_floor)
        stat_drift = np.abs(drift_short) / d_spread
        armed = st["drift_armed"].astype(bool)
        new_drift = (
            scoring & ~anomalous & ~is_open & armed
            & (n >= self._drift_min_steps)
            & (stat_drift >= p.drift_z)
            & (stat_level >= p.drift_level_z)
        )
        # Disarmed by any incident: a shift already told (a permanent level shift, whose
        # incident resolves once the fast level has learned it) must not come back as drift
        # while the slow baseline catches up.
        armed = np.where(anomalous | is_open, False, armed | (stat_drift < p.z_close))
        st["drift_armed"] = np.where(observed, armed, st["drift_armed"].astype(bool))
        if new_drift.any():
            anomalous = anomalous | new_drift
            kind = np.where(new_drift, ANOMALY_TYPES.index("drift"), kind)
            z_eff = np.where(new_drift, np.maximum(z_eff, stat_drift), z_eff)

        # Contextual: a point anomaly whose value is ordinary for the series at another time.
        contextual = anomalous & (stat_point >= p.z_open) & new_d
        if contextual.any():
            c_rows = np.flatnonzero(contextual)
            base = st["slow_level"][c_rows] + np.where(new_w[c_rows], s_w[c_rows], 0.0)
            profile = st["daily"][c_rows]
            floor = base + profile.min(axis=1) - 3 * sigma[c_rows]
            ceiling = base + profile.max(axis=1) + 3 * sigma[c_rows]
            contextual[c_rows] = (y[c_rows] >= floor) & (y[c_rows] <= ceiling)

        # ---- learning (observed steps only; profiles and spreads skip anomalous steps) ----
        learn = observed
        calm = observed & ~extreme
        a_dy = np.maximum(self._a_spread, 1.0 / np.maximum(n, 1.0))
        st["dy_all"] = np.where(
            observed & (n >= 1), (1 - a_dy) * dy_all + a_dy * dy, dy_all
        )
        # The peak of the current excursion of the score (0 once it is back under z_close):
        # an excursion counts once per level however often it wavers around one.
        peak = np.where(z_eff >= p.z_close, np.maximum(st["z_peak"], z_eff), 0.0)
        st["z_peak"] = np.where(observed, peak, st["z_peak"]).astype(np.float32)
        r_clip = np.clip(r, -p.huber_z * sigma, p.huber_z * sigma)
        # Until the scale is known (first steps) learn the level from the raw residual.
        r_clip = np.where(n < 3, r, r_clip)
        level = np.where(learn, forecast + weight(self._a_level) * r_clip, forecast)
        trend = np.where(
            learn & (n >= 3),
            (1 - self._a_trend) * st["trend"] + self._a_trend * (level - st["level"]),
            st["trend"],
        )
        a_mad = weight(self._a_scale)
        abs_r = np.abs(r)
        abs_r = np.where(n >= 3, np.minimum(abs_r, 4.0 * np.maximum(sigma, 1e-300)), abs_r)
        st["mad"] = np.where(learn, (1 - a_mad) * st["mad"] + a_mad * abs_r, st["mad"])
        # Move the two interpolating hour slots towards |r| (no mean constraint here); during
        # a series' first day every slot simply follows the overall scale.
        hourly = st["mad_hourly"]
        step = np.where(learn & hours_known, self._a_hour * (abs_r - mad_hour), 0.0)
        hourly[rows, h0] += ((1.0 - hw) * step).astype(np.float32)
        hourly[rows, h1] += (hw * step).astype(np.float32)
        first_day = np.flatnonzero(~hours_known)
        if len(first_day):
            hourly[first_day] = st["mad"][first_day, None]
        st["level"], st["trend"] = level, trend

        # Slow baseline, profiles and seasonality variances learn from calm steps only.
        a_season = weight(self._a_season)
        e_none, e_d, e_w = dev, dev - s_d, dev - s_d - s_w
        st["var_none"] = np.where(calm, (1 - a_season) * var_none + a_season * e_none**2, var_none)
        st["var_daily"] = np.where(calm, (1 - a_season) * var_daily + a_season * e_d**2, var_daily)
        st["var_weekly"] = np.where(
            calm, (1 - a_season) * var_weekly + a_season * e_w**2, var_weekly
        )
        a_slow = weight(self._a_slow)
        st["slow_level"] = np.where(calm, st["slow_level"] + a_slow * e_w, st["slow_level"])
        # ... except during the series' first days: nothing is known yet to call anomalous,
        # and a sharp daily shape (a batch job's plateau) that scores as extreme before the
        # profile knows it would otherwise never be learned.
        c = (calm | (observed & (n < self._learn_all_steps))).astype(np.float64)
        # Early on a slot's value is the mean of its visits so far (bias-corrected weight).
        visits = n / DAILY_SLOTS
        a_d = np.maximum(self._a_daily, 1.0 / (visits + 1.0))
        self._learn_profile(st["daily"], rows, d0, d1, dw, c * a_d * e_w)
        self._learn_weekly(st, rows, w0, w1, ww, c * self._a_weekly * e_w)

        a_sp = weight(self._a_spread)
        st["level_spread"] = np.where(
            calm, (1 - a_sp) * st["level_spread"] + a_sp * np.abs(level_short), st["level_spread"]
        )
        st["var_spread"] = np.where(
            calm,
            (1 - a_sp) * st["var_spread"] + a_sp * np.abs(var_short - st["var_center"]),
            st["var_spread"],
        )
        st["var_center"] = np.where(
            calm, (1 - a_sp) * st["var_center"] + a_sp * var_short, st["var_center"]
        )
        tv_known = tv_long > 0
        st["tv_spread"] = np.where(
            calm & tv_known,
            (1 - a_sp) * st["tv_spread"] + a_sp * np.abs(log_ratio),
            st["tv_spread"],
        )
        st["tv_long"] = np.where(calm, (1 - a_sp) * tv_long + a_sp * dy_c, tv_long)
        st["zero_rate"] = np.where(
            calm, (1 - a_sp) * st["zero_rate"] + a_sp * zero, st["zero_rate"]
        )
        st["level_short"] = np.where(observed, level_short, st["level_short"])
        st["drift_spread"] = np.where(
            calm, (1 - a_sp) * st["drift_spread"] + a_sp * np.abs(drift_short), st["drift_spread"]
        )
        st["drift_short"] = np.where(observed, drift_short, st["drift_short"])
        st["var_short"] = np.where(observed, var_short, st["var_short"])
        st["tv_short"] = np.where(observed, tv_short, st["tv_short"])
        st["flat_run"] = np.where(observed, flat_run, st["flat_run"])
        st["prev_value"] = np.where(observed, y, st["prev_value"])
        st["n_steps"] += observed

        # ---- incidents with hysteresis ----
        p_z = p.z_open
        severity = np.where(z_eff >= p.z_critical, 2, np.where(anomalous, 1, 0))
        opening = ~is_open & anomalous
        hot = is_open & (z_eff >= p.z_close)
        # A filled step (a missing point) neither counts as calm nor breaks the calm run.
        calm_count = np.where(
            is_open & ~hot,
            st["incident_calm"] + observed,
            0,
        )
        resolving = is_open & (calm_count >= self._resolve_steps)
        escalating = is_open & (severity > st["incident_severity"])
        previous_severity = st["incident_severity"].copy()
        event = np.zeros(k, np.int8)
        event[opening] = 1
        event[escalating] = 2
        event[resolving] = 3
        st["incident_start_ms"] = np.where(opening, t, st["incident_start_ms"])
        start = st["incident_start_ms"].copy()
        st["incident_severity"] = np.where(
            opening | escalating, severity, np.where(resolving, 0, st["incident_severity"])
        )
        st["incident_peak"] = np.where(
            opening, z_eff, np.where(is_open, np.maximum(st["incident_peak"], z_eff), 0)
        )
        st["incident_calm"] = np.where(resolving, 0, calm_count)
        st["incident_open"] = (is_open | opening) & ~resolving

        band = p_z * sigma
        out.expected[pos] = expected
        out.lower[pos] = expected - band
        out.upper[pos] = expected + band
        out.z[pos] = z_eff
        out.score[pos] = likelihood(z_eff)
        out.anomaly_type[pos] = np.where(anomalous, kind, 0)
        out.contextual[pos] = contextual
        out.event[pos] = event
        # A resolve reports the severity the incident had; other steps their own.
        out.severity[pos] = np.where(resolving, previous_severity, severity)
        out.incident_start_ms[pos] = np.where(is_open | opening, start, -1)
        out.seasonality[pos] = new_d.astype(np.int8) + new_w.astype(np.int8)

    def _novelty(self, st, e, t, z, hours_known, h0, h1, hw) -> np.ndarray:
        """Whether the extreme scores ``z`` of rows ``e`` are news for their series (and learn).

        * **Rarity**: a decayed count of the times the score recently rose past the level
          just under ``z`` (levels ``z_open·√2^k``). A series that spikes this high every few
          hours has learned that such spikes are its normal. Level k forgets with half-life
          ``rarity_halflife_s · rarity_growth^k`` (large excursions are remembered longer);
          recurring excursions are not counted (they are explained by the hour of the day).
        * **Recurrence**: on about two previous days (decayed count of extreme events in this
          hour of the day), a score as high (decayed maximum) at this hour: a nightly job.

        The counts are only touched on extreme steps, so they decay lazily: each row keeps the
        time of its last update and is brought forward by ``decay^steps`` (exact products).
        """
        p = self.params
        rows = e
        steps = (t - st["rare_ts_ms"][e]) // p.step_ms
        steps = np.where(st["rare_ts_ms"][e] < 0, 0, np.maximum(steps, 0))
        f_recur = _int_power(self._recur_decay, steps)
        # Each level forgets at its own pace: rarity_halflife_s at z_open, × rarity_growth per
        # level up (a 50σ burst is remembered for days, a 7σ blip for about one).
        exceed = st["exceed"][rows] * np.stack(
            [_int_power(d, steps) for d in self._rarity_decays], axis=1
        )
        hour_max = st["z_hour_max"][rows] * f_recur[:, None]
        hour_count = st["z_hour_count"][rows] * f_recur[:, None]
        i = np.arange(len(e))
        level_k = np.clip(
            np.floor(2.0 * _log(z / p.z_open) / _LN2), 0, RARITY_LEVELS - 1
        ).astype(np.int64)
        rare = exceed[i, level_k] < p.rarity_max
        recurring = (
            hours_known
            & (np.maximum(hour_count[i, h0], hour_count[i, h1]) >= p.recur_min_count)
            & (z <= p.recur_margin * np.maximum(hour_max[i, h0], hour_max[i, h1]))
        )
        # Learn: the levels this excursion passes for the first time, and this hour's events.
        peak = st["z_peak"][rows].astype(np.float64)
        # A recurring excursion (the nightly job) is explained already: it does not make other
        # excursions of its size look normal.
        crossed = (z[:, None] >= self._levels) & (peak[:, None] < self._levels)
        exceed += crossed & ~recurring[:, None]
        known = hours_known.astype(np.float64)
        zk = z * known
        hour_max[i, h0] = np.maximum(hour_max[i, h0], zk)
        hour_max[i, h1] = np.maximum(hour_max[i, h1], zk)
        h_near = np.where(hw < 0.5, h0, h1)
        hour_count[i, h_near] += known * (peak < p.z_open)
        st["exceed"][rows] = exceed
        st["z_hour_max"][rows] = hour_max
        st["z_hour_count"][rows] = hour_count
        st["rare_ts_ms"][rows] = t
        return rare & ~recurring

    # The weekly profile may only hold what differs between days of the week; anything that
    # repeats every day belongs to the daily profile (else the two split the daily shape and
    # every daily series looks weekly). So its effective value is the stored slot minus the
    # mean of the same hour over the 7 days, kept as a running per-hour sum.
    @staticmethod
    def _weekly_value(st, rows, pos):
        value, i0, i1, w = _interp(st["weekly"], rows, pos)
        sums = st["weekly_hour_sum"]
        hour_mean = ((1.0 - w) * sums[rows, i0 % 24] + w * sums[rows, i1 % 24]) / 7.0
        return value - hour_mean, i0, i1, w

    @staticmethod
    def _learn_weekly(st, rows, i0, i1, w, delta) -> None:
        profile, sums = st["weekly"], st["weekly_hour_sum"]
        for slot, weight in ((i0, 1.0 - w), (i1, w)):
            d = (weight * delta).astype(np.float32)
            profile[rows, slot] += d
            sums[rows, slot % 24] += d

    @staticmethod
    def _learn_profile(profile, rows, i0, i1, w, delta) -> None:
        """Move the two interpolating slots towards the target, keeping the profile's mean 0."""
        # Each row appears once per round and i0 != i1, so plain fancy-index adds are exact.
        slots = profile.shape[1]
        profile[rows, i0] += ((1.0 - w) * delta).astype(np.float32)
        profile[rows, i1] += (w * delta).astype(np.float32)
        profile -= (delta / slots).astype(np.float32)[:, None]


def likelihood(z):
    """The anomaly likelihood ``1 − 2·Φ(−z)`` of a score of ``z`` σ: 0 at z = 0, → 1 as z grows.

    >>> round(float(likelihood(3.0)), 4)
    0.9973
    """
    return 1.0 - 2.0 * ndtr(-z)


@dataclass(slots=True)
class StepScore:
    """What :class:`SeriesDetector` says about one closed step."""

    ts_ms: int
    value: float
    expected: float
    lower: float
    upper: float
    z: float
    score: float
    anomaly_type: str
    contextual: bool
    event: str
    severity: str
    incident_start_ms: int


class SeriesDetector:
    """river-style detector for one series: ``learn_one`` and ``score_one``.

    It runs the very same batch code as the worker on a bank of one state. ``learn_one``
    folds a raw point in and returns the steps it closed (usually one, scored before they
    were learned); ``score_one`` says how anomalous a value at time ``ts_ms`` would be as the
    next step, without changing anything.
    """

    def __init__(self, params: DetectorParams | None = None, direction: str = "both") -> None:
        self.detector = OnlineDetector(params)
        self.state = new_state_bank(1)
        self.direction = np.array([{"up": 1, "down": -1, "both": 0}[direction]])

    def learn_one(self, ts_ms: int, value: float) -> list[StepScore]:
        result = self.detector.process(self.state, [0], [ts_ms], [value], self.direction)
        return _unpack(result)

    def score_one(self, ts_ms: int, value: float) -> float:
        state = self.state.copy()
        p = self.detector.params
        step = p.step_ms
        # Score `value` as the next step at ts_ms: close the open step, then the probe's.
        if state["bucket_count"][0] > 0:
            self.detector.process_steps(
                state,
                resample_batch(state, [0], [state["bucket_ms"][0] + step], [0.0], step, 0),
            )
        steps = Steps(
            index=np.zeros(1, np.int64),
            ts_ms=np.array([step_of(ts_ms, step)]),
            value=np.array([float(value)]),
            filled=np.zeros(1, bool),
            after_gap=np.zeros(1, bool),
        )
        return float(self.detector.process_steps(state, steps, self.direction).score[0])


def _unpack(result: StepResults) -> list[StepScore]:
    s = result.steps
    return [
        StepScore(
            ts_ms=int(s.ts_ms[i]),
            value=float(s.value[i]),
            expected=float(result.expected[i]),
            lower=float(result.lower[i]),
            upper=float(result.upper[i]),
            z=float(result.z[i]),
            score=float(result.score[i]),
            anomaly_type=ANOMALY_TYPES[result.anomaly_type[i]],
            contextual=bool(result.contextual[i]),
            event=EVENT_KINDS[result.event[i]],
            severity=SEVERITIES[result.severity[i]],
            incident_start_ms=int(result.incident_start_ms[i]),
        )
        for i in range(len(s))
    ]



def describe(result: StepResults, i: int) -> str:
    """A one-line reason for a person, for step ``i`` of ``result``.

    The reason names the statistic that fired and its size in σ of its own normal spread.
    """
    event = EVENT_KINDS[result.event[i]]
    value, expected, z = result.steps.value[i], result.expected[i], result.z[i]
    if event == "resolve":
        return f"back to normal: {value:.4g} (expected {expected:.4g})"
    kind = ANOMALY_TYPES[result.anomaly_type[i]]
    direction = "above" if value >= expected else "below"
    if kind == "point":
        text = f"{value:.4g} is {z:.1f}σ {direction} the expected {expected:.4g}"
        if result.contextual[i]:
            text += " — normal at other hours, not at this time of day"
        return text
    if kind == "level_shift":
        return f"level shift: recent values stay {direction} the expected {expected:.4g} ({z:.1f}σ)"
    if kind == "variance":
        return f"variance change: noise around {expected:.4g} much larger than usual ({z:.1f}σ)"
    if kind == "oscillation":
        return f"oscillation: total variation Σ|Δx| far above its usual value ({z:.1f}σ)"
    if kind == "flatline":
        return f"flatline: value stuck at {value:.4g} ({z:.1f}σ rare for this series)"
    if kind == "drift":
        return (f"drift: values have stayed {direction} their usual level for hours "
                f"({value:.4g}, expected {expected:.4g}; {z:.1f}σ)")
    return f"score {z:.1f}σ"
