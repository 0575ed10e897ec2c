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
  the series' long-run rate of them (Poisson tail ``≤ burst_p``) — spikes that come much
  denser than usual. The scores themselves are unchanged.
* **Incidents** open when a score that is news passes ``z_open`` (``z_critical`` until the
  daily profile may apply: ``quiet_until_daily``), stay open while it is above ``z_close``,
  and resolve after ``resolve_steps`` calm steps, at most ``resolve_max_s`` of them
  (hysteresis): a long anomaly is one ``open``, an ``update`` when it becomes critical, and
  one ``resolve``.

All state lives in one fixed-size record per series (:data:`STATE_DTYPE`, about 1.8 KB),
held in a :class:`~vigil.detectors.bank.StateBank`; a batch's steps are scored and learned
one at a time, each with its series' record, by small compiled functions
(:mod:`vigil.detectors.kernel`).

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
from scipy.special import ndtr

from vigil.detectors.bank import (
    DAILY_SLOTS,
    RARITY_LEVELS,
    STATE_DTYPE,
    WEEKLY_SLOTS,
    StateBank,
    new_state_bank,
)
from vigil.detectors.kernel import (
    GAMMAINC_ADDRESS,
    NDTRI_ADDRESS,
    STDTR_ADDRESS,
    KernelConstants,
    run_steps,
)
from vigil.detectors.resample import Steps, resample_batch, step_of

__all__ = [
    "ANOMALY_TYPES",
    "DAILY_SLOTS",
    "WEEKLY_SLOTS",
    "EVENT_CHANGES",
    "EVENT_KINDS",
    "LONG_FIT_FACTOR",
    "MAX_FILL_S",
    "SEVERITIES",
    "DetectorParams",
    "OnlineDetector",
    "SeriesDetector",
    "StepResults",
    "StepScore",
    "describe",
    "kernel_constants",
    "STATE_DTYPE",
    "new_state_bank",
    "warm_up",
]

ANOMALY_TYPES = ("none", "point", "level_shift", "variance", "oscillation", "flatline", "drift")
SEVERITIES = ("none", "warning", "critical")
EVENT_KINDS = ("", "open", "update", "resolve")
#: What an update tells besides a rise in severity (index 0: nothing more): a distinct
#: anomaly inside the open incident — the value moved the other way, an anomaly of another
#: kind, or a much larger one (see :func:`vigil.detectors.kernel.change`).
EVENT_CHANGES = ("", "direction", "kind", "larger")


def _alpha(step_s: float, halflife_s: float) -> float:
    """Per-step weight of an exponential average with the given half-life."""
    return float(1.0 - 0.5 ** (step_s / halflife_s))


#: The forecast's long fit has this many times forecast_halflife_s (vigil.detectors.forecast).
LONG_FIT_FACTOR = 4.0

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
    σ); the others are ratios, counts, a probability or a switch, as their description says.
    Scores are equivalent Gaussian z-scores: multiples of σ, the series' robust scale (or of a
    window statistic's own long-run spread).
    """

    step_s: int = _knob(
        60, "Step length in seconds: each series is resampled to one value (the mean of its "
        "points) per step.")
    max_fill_s: int = _knob(
        MAX_FILL_S, "Longest gap in seconds filled with the last value (filled steps are not "
        "learned from); a longer gap resets the short windows. At least one step is filled.")
    warmup_steps: int = _knob(
        60, "Observed steps a series needs before every statistic is scored.")
    first_alert_steps: int = _knob(
        10, "Observed steps from which a series is scored at all: until warmup_steps only its "
        "point statistic, as the Gaussian equivalent of a Student t with n − 1 degrees of "
        "freedom (σ rests on n residuals), so only gross anomalies alert that early.")
    level_halflife_s: float = _knob(
        3_600.0, "Half-life in seconds of the fast level L (learned from the Huber-clipped "
        "residual).")
    trend_halflife_s: float = _knob(86_400.0, "Half-life in seconds of the trend T.")
    slow_level_halflife_s: float = _knob(
        86_400.0, "Half-life in seconds of the slow baseline B (learned from calm steps only); "
        "seasonality and drift are measured around it.")
    scale_halflife_s: float = _knob(
        6 * 3_600.0, "Half-life in seconds of the scale σ (an EW mean absolute residual).")
    estimate_max_step_s: float = _knob(
        300.0, "Longest step in seconds the estimates weigh as one step of its own length "
        "(the level, trend, slow baseline, scale, window spreads, seasonality variances and "
        "burst rates). At a longer step each step weighs as one of this length, so an "
        "estimate keeps the number of observations its half-life holds here: an average's "
        "noise depends on how many observations it holds, not on the time they span. The "
        "half-lives were set on 5-minute data; at an hourly step the fast level's 1-hour "
        "half-life would otherwise be one step and follow every spike. The profiles and the "
        "memories of what happened (rarity, recurrence) keep their times.")
    routine_halflife_days: float = _knob(
        3.0, "Half-life in days of everything that remembers the series' routine: the daily "
        "profile's 15-minute slots and the scale's hour-of-day profile (each slot learns once "
        "a day; after a day σ is the hour's own), the out-of-sample variances that switch the "
        "profiles on and off, the hour-of-day memory of extreme scores (recurrence: their "
        "count and maximum) and the long-run rate of extreme steps that a burst is measured "
        "against. One odd day weighs a fifth of it, and a changed routine is learned within "
        "a week.")
    weekly_halflife_weeks: float = _knob(
        2.0, "Half-life in weeks of the weekly profile's hourly slots (each learns once a "
        "week).")
    daily_on: float = _knob(
        0.30, "Share of the variance around B (ratio, 0–1) the daily profile must explain to "
        "be switched on.")
    daily_off: float = _knob(
        0.15, "Share of the variance (ratio, 0–1) under which an applied daily profile is "
        "switched off again (hysteresis with daily_on).")
    daily_min_days: float = _knob(
        1.5, "Age in days a series needs before its daily profile may be applied.")
    quiet_until_daily: bool = _knob(
        True, "On/off switch: until a series may apply its daily profile (daily_min_days), "
        "only a critical score (z_critical, before the early discount) opens an incident. "
        "Before a series has seen its daily cycle, its first morning's ramp departs 6σ and more "
        "from a baseline learned overnight, and nothing yet tells it from an anomaly. Off: "
        "from z_open, as later.")
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
    recur_margin: float = _knob(
        1.5, "A score at most this multiple (ratio) of the highest one at this hour on "
        "previous days is recurring (a nightly job), not news.")
    recur_min_count: float = _knob(
        1.2, "Extreme events at this hour (a decayed count, about days) needed before a score "
        "can be recurring.")
    burst_window_s: float = _knob(
        3_600.0, "Half-life in seconds of the recent count of extreme steps (the burst "
        "window).")
    burst_p: float = _knob(
        1e-4, "Poisson tail probability of the recent count, under the long-run rate, at or "
        "below which extreme steps are a burst (news even where single ones are not).")
    forecast_halflife_s: float = _knob(
        6 * 3_600.0, "Half-life in seconds of the capacity forecast's trend: an EW linear fit "
        "of the deseasonalised value against time (docs/forecasts.md).")
    forecast_min_days: float = _knob(
        2.5, "Age in days a series needs before it is forecast (the daily profile is applied "
        "from daily_min_days, once it proves to explain the variance: before, a daily peak "
        "would look like a climb).")

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
    change: np.ndarray  # index into EVENT_CHANGES (updates only)
    taught: np.ndarray  # bool: an opening withheld, operators taught its pattern is normal

    def events(self) -> np.ndarray:
        """Positions of the steps that produced an incident event."""
        return np.flatnonzero(self.event)


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
        self.constants = kernel_constants(self.params)

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
        """Score and learn already-resampled steps (ordered by series then time).

        One compiled loop (:func:`vigil.detectors.kernel.run_steps`) takes each step in turn
        with its series' record, whatever the batch's shape.
        """
        n = len(steps)
        band = np.zeros(n)
        out = StepResults(
            steps=steps,
            expected=np.zeros(n),
            lower=band,
            upper=band,
            z=np.zeros(n),
            score=band,
            anomaly_type=np.zeros(n, np.int8),
            contextual=np.zeros(n, bool),
            event=np.zeros(n, np.int8),
            severity=np.zeros(n, np.int8),
            incident_start_ms=np.full(n, -1, np.int64),
            seasonality=np.zeros(n, np.int8),
            change=np.zeros(n, np.int8),
            taught=np.zeros(n, bool),
        )
        if n:
            sign = (
                np.zeros(len(bank)) if direction is None
                else np.ascontiguousarray(direction, np.float64)
            )
            run_steps(
                bank.records,
                np.ascontiguousarray(steps.index, np.int64),
                np.ascontiguousarray(steps.ts_ms, np.int64),
                np.ascontiguousarray(steps.value, np.float64),
                np.ascontiguousarray(steps.filled, np.bool_),
                np.ascontiguousarray(steps.after_gap, np.bool_),
                sign,
                self.constants,
                out.expected, band, out.z, out.anomaly_type, out.contextual, out.event,
                out.severity, out.incident_start_ms, out.seasonality, out.change, out.taught,
            )
        out.lower = out.expected - band
        out.upper = out.expected + band
        out.score = likelihood(out.z)
        return out


def kernel_constants(p: DetectorParams) -> KernelConstants:
    """The parameters as the compiled step uses them: per-step weights of the exponential
    averages, the floors of the window statistics' spreads, and ages in steps."""
    s = p.step_s
    e = min(s, p.estimate_max_step_s)  # the step as the estimates weigh it
    a_short = 2.0 / (p.short_window_steps + 1.0)
    a_var = 2.0 / (p.variance_window_steps + 1.0)
    a_drift = 2.0 / (p.drift_window_steps + 1.0)
    day_steps = 86_400 / s
    daily_min_steps = p.daily_min_days * 86_400 / s
    routine_s = p.routine_halflife_days * 86_400.0
    return KernelConstants(
        step_ms=p.step_ms,
        warmup_steps=float(p.warmup_steps),
        a_level=_alpha(e, p.level_halflife_s),
        a_trend=_alpha(e, p.trend_halflife_s),
        a_slow=_alpha(e, p.slow_level_halflife_s),
        a_scale=_alpha(e, p.scale_halflife_s),
        a_daily=_alpha(s, p.routine_halflife_days * 900.0),
        a_weekly=_alpha(s, p.weekly_halflife_weeks * 3600.0),
        a_season=_alpha(e, routine_s),
        a_short=a_short,
        a_var=a_var,
        a_drift=a_drift,
        a_spread=_alpha(e, p.spread_halflife_s),
        a_hour=_alpha(s, p.routine_halflife_days * 3600.0),
        a_burst=_alpha(e, p.burst_window_s),
        a_burst_long=_alpha(e, routine_s),
        # Spread of a short EW mean of iid N(0,1): the floor of the level statistic's spread;
        # of a short EW mean of |N(0,1)| (sd of |z| is 0.60); of the log of a short EW mean
        # of |Δy| for Gaussian noise (CV of |Δy| 0.76); of the drift window's EW mean.
        level_floor=float(np.sqrt(a_short / (2.0 - a_short))),
        var_floor=float(0.60 * np.sqrt(a_var / (2.0 - a_var))),
        tv_floor=float(0.76 * np.sqrt(a_var / (2.0 - a_var))),
        drift_floor=float(np.sqrt(a_drift / (2.0 - a_drift))),
        day_steps=day_steps,
        daily_min_steps=daily_min_steps,
        quiet_steps=daily_min_steps if p.quiet_until_daily else 0.0,
        weekly_min_steps=p.weekly_min_days * 86_400 / s,
        learn_all_steps=p.learn_all_days * 86_400 / s,
        drift_min_steps=p.drift_min_days * 86_400 / s,
        resolve_steps=p.calm_steps_to_resolve,
        daily_on=float(p.daily_on), daily_off=float(p.daily_off),
        weekly_on=float(p.weekly_on), weekly_off=float(p.weekly_off),
        huber_z=float(p.huber_z),
        scale_floor=float(p.scale_floor),
        flat_min_steps=float(p.flat_min_steps),
        z_open=float(p.z_open), z_close=float(p.z_close), z_critical=float(p.z_critical),
        drift_z=float(p.drift_z), drift_level_z=float(p.drift_level_z),
        rarity_max=float(p.rarity_max),
        recur_decay=0.5 ** (s / routine_s),
        recur_margin=float(p.recur_margin),
        recur_min_count=float(p.recur_min_count),
        burst_p=float(p.burst_p),
        gammainc_address=GAMMAINC_ADDRESS,
        stdtr_address=STDTR_ADDRESS,
        ndtri_address=NDTRI_ADDRESS,
        first_alert_steps=float(p.first_alert_steps),
        fit_decay=0.5 ** (s / p.forecast_halflife_s),
        fit_long_decay=0.5 ** (s / (LONG_FIT_FACTOR * p.forecast_halflife_s)),
        rarity_decays=np.array([
            0.5 ** (s / (p.rarity_halflife_s * p.rarity_growth**k)) for k in range(RARITY_LEVELS)
        ]),
        levels=p.z_open * np.sqrt(2.0) ** np.arange(RARITY_LEVELS),
    )


def warm_up() -> None:
    """Compile the step kernel now (or load it from numba's cache): a worker calls this at
    start, so that its first batch does not pay the compile."""
    detector = SeriesDetector()
    for minute in range(3):  # the second point closes the first step
        detector.learn_one(minute * 60_000, 0.0)


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
        # score_one's scratch record: the kernel learns in place, so a probe runs on a copy
        # of the state's bytes (one 2 KB memcpy, 0.4 µs; a new record costs 16 µs: numpy
        # copies a structured record field by field).
        self._probe = new_state_bank(1)

    def learn_one(self, ts_ms: int, value: float) -> list[StepScore]:
        result = self.detector.process(self.state, [0], [ts_ms], [value], self.direction)
        return _unpack(result)

    def score_one(self, ts_ms: int, value: float) -> float:
        state = self._probe
        np.copyto(state.records.view(np.uint8), self.state.records.view(np.uint8))
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

    The reason names the statistic that fired and its size in σ of its own normal spread;
    an update that tells a distinct anomaly says so first.
    """
    value, expected = result.steps.value[i], result.expected[i]
    if EVENT_KINDS[result.event[i]] == "resolve":
        return f"back to normal: {value:.4g} (expected {expected:.4g})"
    prefix = _CHANGE_PREFIX[EVENT_CHANGES[result.change[i]]]
    return prefix + _what_fired(result, i)


_CHANGE_PREFIX = {
    "": "",
    "direction": "a new anomaly in the open incident, the other way: ",
    "kind": "a new anomaly of another kind in the open incident: ",
    "larger": "a new, much larger anomaly in the open incident: ",
}


def _what_fired(result: StepResults, i: int) -> str:
    value, expected, z = result.steps.value[i], result.expected[i], result.z[i]
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
