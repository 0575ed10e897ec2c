"""The online detector's step, compiled: small numba functions over one series' record.

:func:`run_steps` walks a batch's closed steps (ordered by series, then time) and calls
:func:`step` for each with that series' state record (:data:`~vigil.detectors.bank.STATE_DTYPE`)
and a scratch record ``w`` (:data:`WORK_DTYPE`) holding the step's intermediate values, so
the functions below pass two records instead of long tuples. The same loop serves every batch
shape (many series × few steps, few series × many steps). The maths is described in
:mod:`vigil.detectors.online`; each function here is one part of it:

* :func:`take_step` — the resampling hand-off (the step's time, value and gap flags);
* :func:`init_state` — a series' first step;
* :func:`seasonal_profiles`, :func:`seasonality_switch`, :func:`forecast` — the baseline;
* :func:`scale` — σ;
* :func:`window_stats`, :func:`best_statistic` — point, level, variance, oscillation, flatline;
* :func:`is_news` (rarity and recurrence), :func:`burst` — what is news;
* :func:`drift`, :func:`contextual` — drift opening, a point normal at another hour;
* :func:`taught`, :func:`withhold` — a pattern operators marked "not an anomaly" opens nothing;
* :func:`learn_level_and_scale`, :func:`learn_baseline`, :func:`learn_spreads` — learning;
* :func:`incident` — incidents with hysteresis;
* :func:`learn_trend` — the capacity forecast's trend (:mod:`vigil.detectors.forecast`); it
  only writes fields of its own and changes no detection.

Every operation is the one the former numpy version did, in the same order and precision
(float32 profile slots included), so both give the same results to the last bit
(``bench/compare_detector.py`` checks it). Compiled with ``cache=True``: a second process
loads the machine code from ``__pycache__`` instead of compiling (:func:`warm_up`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import get_cython_function_address, intrinsic

from vigil.detectors.bank import DAILY_SLOTS, RARITY_LEVELS, TAUGHT_SLOTS, WEEKLY_SLOTS

__all__ = [
    "GAMMAINC_ADDRESS", "NDTRI_ADDRESS", "STDTR_ADDRESS", "WORK_DTYPE", "KernelConstants",
    "run_steps",
]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
MONDAY_OFFSET_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; 1970-01-05 a Monday
MEAN_ABS_Z = float(np.sqrt(2.0 / np.pi))  # E|z| for z ~ N(0, 1)
LN2 = 0.6931471805599453
SQRT_HALF = 0.7071067811865476
FLATLINE = 4  # index of the flatline statistic (ANOMALY_TYPES index − 1)
DRIFT = 6  # ANOMALY_TYPES index of drift
# The family of each ANOMALY_TYPES index: 1 the value moved (point, level shift, drift: these
# have a direction), 2 its spread changed (variance, oscillation), 3 it stopped (flatline).
FAMILY = (0, 1, 1, 2, 2, 3, 1)
# A new excursion inside an open incident at least this many times the incident's peak is a
# new, larger anomaly: two rarity levels (√2 apart) up, as far as a score must climb for
# the rarity memory to call it news again.
LARGER = 2.0
# A taught pattern with a time of day covers openings this many minutes either side of it.
TAUGHT_MINUTES = 60
# What an update says besides a rise in severity (EVENT_CHANGES in online.py).
CHANGE_DIRECTION, CHANGE_KIND, CHANGE_LARGER = 1, 2, 3

# scipy.special's compiled functions, called from the kernel: P(X ≥ count), X ~ Poisson(mean)
# is the regularised lower incomplete gamma; Student's t distribution function and the
# inverse of the Gaussian one turn an early score into its Gaussian equivalent. Their
# addresses are passed in at run time (in KernelConstants) rather than baked into the
# machine code, which is then cacheable.
GAMMAINC_ADDRESS = get_cython_function_address("scipy.special.cython_special", "gammainc")
STDTR_ADDRESS = get_cython_function_address(
    "scipy.special.cython_special", "__pyx_fuse_0stdtr")  # the double version
NDTRI_ADDRESS = get_cython_function_address("scipy.special.cython_special", "ndtri")


@intrinsic
def call_double_double(typingctx, address, a, b):
    """Call scipy's ``double f(double, double, int skip_dispatch)`` at ``address``."""
    sig = types.float64(types.int64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        int_t = ir.IntType(32)
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType(), ir.DoubleType(), int_t])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(fn, [args[1], args[2], ir.Constant(int_t, 0)])

    return sig, codegen


@intrinsic
def call_double(typingctx, address, a):
    """Call scipy's ``double f(double, int skip_dispatch)`` at ``address``."""
    sig = types.float64(types.int64, types.float64)

    def codegen(context, builder, signature, args):
        int_t = ir.IntType(32)
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType(), int_t])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(fn, [args[1], ir.Constant(int_t, 0)])

    return sig, codegen


class KernelConstants(NamedTuple):
    """The parameters in the form the kernel uses (per-step weights, floors, step counts)."""

    step_ms: int
    warmup_steps: float
    a_level: float
    a_trend: float
    a_slow: float
    a_scale: float
    a_daily: float
    a_weekly: float
    a_season: float
    a_short: float
    a_var: float
    a_drift: float
    a_spread: float
    a_hour: float
    a_burst: float
    a_burst_long: float
    level_floor: float
    var_floor: float
    tv_floor: float
    drift_floor: float
    day_steps: float
    daily_min_steps: float
    quiet_steps: float  # until then only scores from z_critical open (quiet_until_daily)
    weekly_min_steps: float
    learn_all_steps: float
    drift_min_steps: float
    resolve_steps: int
    daily_on: float
    daily_off: float
    weekly_on: float
    weekly_off: float
    huber_z: float
    scale_floor: float
    flat_min_steps: float
    z_open: float
    z_close: float
    z_critical: float
    drift_z: float
    drift_level_z: float
    rarity_max: float
    recur_decay: float
    recur_margin: float
    recur_min_count: float
    burst_p: float
    gammainc_address: int
    stdtr_address: int
    ndtri_address: int
    first_alert_steps: float
    fit_decay: float  # the forecast fit's per-step weight decay, 0.5^(step / half-life)
    fit_long_decay: float  # and its long fit's (LONG_FIT_FACTOR × the half-life)
    rarity_decays: np.ndarray  # per rarity level
    levels: np.ndarray  # the rarity levels z_open·√2^k


#: A step's intermediate values, shared by the step's functions (one scratch record).
WORK_DTYPE = np.dtype([
    # the step (resampling hand-off)
    ("t", "i8"), ("y", "f8"), ("observed", "u1"), ("after_gap", "u1"), ("sign", "f8"),
    ("n", "f8"), ("warm", "f8"),
    # baseline
    ("s_d", "f8"), ("d0", "i8"), ("d1", "i8"), ("dw", "f8"),
    ("s_w", "f8"), ("w0", "i8"), ("w1", "i8"), ("ww", "f8"),
    ("new_d", "u1"), ("new_w", "u1"), ("season", "f8"), ("dev", "f8"),
    ("forecast", "f8"), ("expected", "f8"), ("r", "f8"),
    # scale
    ("mad_hour", "f8"), ("h0", "i8"), ("h1", "i8"), ("hw", "f8"), ("hours_known", "u1"),
    ("sigma", "f8"), ("z", "f8"), ("zc", "f8"), ("ignored", "u1"),
    # window statistics
    ("level_short", "f8"), ("var_short", "f8"), ("tv_short", "f8"), ("dy", "f8"),
    ("dy_c", "f8"), ("zero", "u1"), ("flat_run", "i8"), ("log_ratio", "f8"),
    ("drift_short", "f8"),
    ("stat_point", "f8"), ("stat_level", "f8"), ("stat_var", "f8"), ("stat_osc", "f8"),
    ("stat_flat", "f8"), ("best", "i8"), ("z_eff", "f8"), ("scoring", "u1"),
    ("extreme", "u1"), ("early", "u1"), ("learned_extreme", "u1"), ("direction", "i8"),
    ("new_excursion", "u1"), ("news", "u1"),
    # decisions
    ("anomalous", "u1"), ("kind", "i8"), ("contextual", "u1"), ("taught", "u1"),
    ("event", "i8"), ("severity", "i8"), ("incident_start_ms", "i8"), ("change", "i8"),
])


#: The step's parts are inlined into :func:`run_steps` (numba IR inlining): as separate
#: functions each call would pass the constants and records anew, halving the speed.
part = njit(cache=True, inline="always")


# ---------------------------------------------------------------- exact scalar helpers
# numpy's semantics (NaN propagates through maximum/minimum/clip), so that results match.


@part
def fmax(a, b):
    if a != a or b != b:
        return a + b
    return a if a >= b else b


@part
def fmin(a, b):
    if a != a or b != b:
        return a + b
    return a if a <= b else b


@part
def clip(x, lo, hi):
    return fmin(fmax(x, lo), hi)


@part
def exact_log(x):
    """Natural log from exactly rounded operations only (the former ``_log``): ``x = m·2^e``
    with m in [√½, √2) and ``ln m = 2·atanh(u)``, ``u = (m−1)/(m+1)``, summed to u⁹."""
    m, e = math.frexp(x)
    if m < SQRT_HALF:
        m = 2.0 * m
        e = e - 1
    u = (m - 1.0) / (m + 1.0)
    u2 = u * u
    series = u * (1.0 + u2 * (1.0 / 3.0 + u2 * (1.0 / 5.0 + u2 * (1.0 / 7.0 + u2 / 9.0))))
    return 2.0 * series + e * LN2


@part
def int_power(base, n):
    """``base ** n`` for a non-negative integer ``n`` by squaring (exactly rounded products)."""
    out = 1.0
    b = base
    while n:
        if n & 1:
            out = out * b
        b = b * b
        n >>= 1
    return out


@part
def interp(profile, pos):
    """Linear interpolation in a cyclic float32 slot profile at ``0 ≤ pos < slots``: value,
    slots and weight (the slot after the last is the first)."""
    i0 = np.int64(pos)
    w = pos - np.floor(pos)
    i1 = i0 + 1 if i0 + 1 < profile.shape[0] else 0
    return (1.0 - w) * profile[i0] + w * profile[i1], i0, i1, w


# ---------------------------------------------------------------- the step's parts


@part
def take_step(s, w, t, y, filled, after_gap, sign):
    """The resampling hand-off: one closed step (filled = a gap's copy of the last value)."""
    w.t = t
    w.y = y
    w.observed = not filled
    w.after_gap = after_gap
    w.sign = sign
    w.n = float(s.n_steps)
    w.warm = 1.0 / (w.n + 1.0)  # bias-corrected weights: early on, every step weighs equally


@part
def weight(w, alpha):
    return fmax(alpha, w.warm)


@part
def init_state(s, w, c):
    """A series' first step: the baselines start at its value, the spreads at their floors."""
    y = w.y
    s.level = y
    s.slow_level = y
    s.prev_value = y
    s.tv_short = 0.0
    s.level_spread = c.level_floor
    s.var_short = MEAN_ABS_Z
    s.var_center = MEAN_ABS_Z
    s.var_spread = c.var_floor
    s.tv_spread = c.tv_floor
    s.drift_spread = c.drift_floor
    s.drift_armed = 1


@part
def seasonal_profiles(s, w):
    """The daily (15-minute slots) and weekly (hourly slots, less their hour's mean over the
    week: the weekly profile holds only what differs between days) components at ``t``."""
    t = w.t
    w.s_d, w.d0, w.d1, w.dw = interp(s.daily, (t % DAY_MS) / (DAY_MS / DAILY_SLOTS))
    weekly_pos = ((t - MONDAY_OFFSET_MS) % WEEK_MS) / (WEEK_MS / WEEKLY_SLOTS)
    value, w0, w1, ww = interp(s.weekly, weekly_pos)
    sums = s.weekly_hour_sum
    hour_mean = ((1.0 - ww) * sums[w0 % 24] + ww * sums[w1 % 24]) / 7.0
    w.s_w, w.w0, w.w1, w.ww = value - hour_mean, w0, w1, ww


@part
def seasonality_switch(s, w, c):
    """Switch the profiles on/off by the variance they explain out of sample (hysteresis),
    re-basing the fast level so the forecast stays continuous."""
    w.dev = w.y - s.slow_level
    n = w.n
    daily_gain = 1.0 - s.var_daily / fmax(s.var_none, 1e-300)
    weekly_gain = 1.0 - s.var_weekly / fmax(s.var_daily, 1e-300)
    old_d, old_w = s.daily_on != 0, s.weekly_on != 0
    new_d = (daily_gain > c.daily_off) if old_d else (daily_gain > c.daily_on)
    new_d = new_d and n >= c.daily_min_steps
    new_w = (weekly_gain > c.weekly_off) if old_w else (weekly_gain > c.weekly_on)
    new_w = new_w and new_d and n >= c.weekly_min_steps
    s.level = s.level + ((-w.s_d if new_d and not old_d else 0.0)
                         + (w.s_d if old_d and not new_d else 0.0))
    s.level = s.level + ((-w.s_w if new_w and not old_w else 0.0)
                         + (w.s_w if old_w and not new_w else 0.0))
    s.daily_on, s.weekly_on = new_d, new_w
    w.new_d, w.new_w = new_d, new_w
    w.season = (w.s_d if new_d else 0.0) + (w.s_w if new_w else 0.0)


@part
def forecast(s, w):
    """Holt-style forecast on the deseasonalised value, and the residual."""
    w.forecast = s.level + s.trend
    w.expected = w.forecast + w.season
    w.r = w.y - w.expected


@part
def scale(s, w, c):
    """σ: the EW mean |r| (the hour's own once a day is known, at least a third of the overall
    one), floored by the value's magnitude and by ``scale_floor`` × the typical step |Δy|."""
    w.mad_hour, w.h0, w.h1, w.hw = interp(s.mad_hourly, (w.t % DAY_MS) / 3_600_000.0)
    w.hours_known = w.n >= c.day_steps
    mad = fmax(w.mad_hour, s.mad / 3.0) if w.hours_known else s.mad
    sigma = 1.2533 * mad
    sigma = fmax(sigma, 1e-9 + 1e-6 * abs(s.slow_level))
    w.sigma = fmax(sigma, c.scale_floor * s.dy_all)
    w.z = w.r / w.sigma
    # One-sided series: deviations the other way count as none at all.
    w.ignored = w.sign != 0 and w.z * w.sign < 0
    w.zc = 0.0 if w.ignored else clip(w.z, -4.0, 4.0)


@part
def window_stats(s, w, c):
    """The short windows (level, variance, total variation, unchanged run) and each one's
    statistic against its own long-run spread; a long gap resets the short windows."""
    zc, y = w.zc, w.y
    level_short = (1 - c.a_short) * s.level_short + c.a_short * zc
    var_short = (1 - c.a_var) * s.var_short + c.a_var * abs(zc - s.level_short)
    dy = abs(y - s.prev_value)
    tv_long = s.tv_long
    dy_c = fmin(dy, 10.0 * tv_long) if tv_long > 0 else dy
    tv_short = (1 - c.a_var) * s.tv_short + c.a_var * dy_c
    w.zero = dy <= 1e-12 * fmax(1.0, abs(y))
    flat_run = s.flat_run + 1 if w.zero else 0
    if w.after_gap:
        level_short, var_short, tv_short, flat_run = 0.0, s.var_center, tv_long, 0
    w.level_short, w.var_short, w.tv_short, w.dy, w.dy_c = (
        level_short, var_short, tv_short, dy, dy_c)
    w.flat_run = flat_run
    w.stat_point = 0.0 if w.ignored else abs(w.z)
    w.stat_level = abs(level_short) / fmax(1.25 * s.level_spread, c.level_floor)
    w.stat_var = (var_short - s.var_center) / fmax(1.25 * s.var_spread, c.var_floor)
    # Total variation on a log scale: the ratio of two EW means is right-skewed.
    ratio = fmax(tv_short, 1e-300) / fmax(tv_long, 1e-300)
    log_ratio = exact_log(fmin(ratio, 1e300))
    w.log_ratio = clip(log_ratio, -20.0, 20.0) if tv_long > 0 else 0.0
    w.stat_osc = w.log_ratio / fmax(1.25 * s.tv_spread, c.tv_floor)
    rare = -exact_log(clip(s.zero_rate, 1e-3, 0.999))
    w.stat_flat = math.sqrt(2.0 * flat_run * rare) if flat_run >= c.flat_min_steps else 0.0


@part
def best_statistic(s, w, c):
    """The largest statistic (the first on ties) is the step's score, 0 while warming up.

    Before ``warmup_steps`` (from ``first_alert_steps`` on) only the point statistic scores,
    read as what it is while σ rests on few residuals: a Student t statistic with n − 1
    degrees of freedom, turned into the Gaussian z of the same tail probability — so only a
    gross anomaly is extreme at first, and the allowance shrinks as the series is learned.
    """
    stats = (w.stat_point, w.stat_level, w.stat_var, w.stat_osc, w.stat_flat)
    best, z_eff = 0, stats[0]
    for k in range(1, 5):
        if stats[k] > z_eff or (stats[k] != stats[k] and z_eff == z_eff):
            best, z_eff = k, stats[k]
    warm = w.n >= c.warmup_steps
    w.scoring = w.observed and (warm or w.n >= c.first_alert_steps)
    if w.scoring and not warm:
        best, z_eff = 0, t_equivalent(w.stat_point, w.n - 1.0, c)
    w.best = best
    w.z_eff = fmax(z_eff, 0.0) if w.scoring else 0.0
    w.extreme = w.z_eff >= c.z_open
    # Early scores may open an incident but teach nothing (rarity, recurrence, bursts, what
    # is calm): those memories are in units of statistics that are not learned yet.
    w.early = w.scoring and not warm
    w.learned_extreme = w.extreme and not w.early
    # The step's direction (the value moved up or down), for the statistics that have one.
    if best == 0:
        w.direction = 1 if w.z > 0 else -1
    elif best == 1:
        w.direction = 1 if w.level_short > 0 else -1
    else:
        w.direction = 0
    # The score's previous excursion had ended (the peak is reset under z_close).
    w.new_excursion = np.float64(s.z_peak) < c.z_close


@part
def t_equivalent(t, df, c):
    """The Gaussian z with the same upper tail probability as Student's t = ``t`` (≥ 0)."""
    p = call_double_double(c.stdtr_address, df, -t)
    if p <= 0.0:
        return t
    return fmin(-call_double(c.ndtri_address, p), t)


@part
def is_news(s, w, c):
    """Rarity and recurrence of an extreme score ``z`` (and learn them).

    Rare: fewer than ``rarity_max`` recent excursions (decayed count per level z_open·√2^k,
    each level forgetting at its own pace) reached the level just under ``z``. Recurring: on
    about two previous days, a score as high at this hour (a nightly job). The counts decay
    lazily, by ``decay^steps`` since the last extreme step.
    """
    z = w.z_eff
    steps = 0 if s.rare_ts_ms < 0 else max((w.t - s.rare_ts_ms) // c.step_ms, 0)
    f_recur = int_power(c.recur_decay, steps)
    level_k = int(clip(np.floor(2.0 * exact_log(z / c.z_open) / LN2), 0, RARITY_LEVELS - 1))
    rare = s.exceed[level_k] * int_power(c.rarity_decays[level_k], steps) < c.rarity_max
    h0, h1 = w.h0, w.h1
    count = fmax(s.z_hour_count[h0] * f_recur, s.z_hour_count[h1] * f_recur)
    top = fmax(s.z_hour_max[h0] * f_recur, s.z_hour_max[h1] * f_recur)
    recurring = w.hours_known and count >= c.recur_min_count and z <= c.recur_margin * top
    # Learn: the levels this excursion passes for the first time (a recurring excursion is
    # explained already and does not count), and this hour's events.
    peak = np.float64(s.z_peak)
    for k in range(RARITY_LEVELS):
        decayed = s.exceed[k] * int_power(c.rarity_decays[k], steps)
        crossed = z >= c.levels[k] and peak < c.levels[k]
        s.exceed[k] = decayed + (1.0 if crossed and not recurring else 0.0)
    known = 1.0 if w.hours_known else 0.0
    h_near = h0 if w.hw < 0.5 else h1
    for h in range(24):
        top_h = s.z_hour_max[h] * f_recur
        if h == h0 or h == h1:
            top_h = fmax(top_h, z * known)
        s.z_hour_max[h] = top_h
        count_h = s.z_hour_count[h] * f_recur
        if h == h_near:
            count_h = count_h + known * (1.0 if peak < c.z_open else 0.0)
        s.z_hour_count[h] = count_h
    s.rare_ts_ms = w.t
    return rare and not recurring


@part
def burst(s, w, c):
    """Many extreme steps lately where they are rare: the recent EW count against the Poisson
    tail of the long-run rate (and learn both).

    No minimum count is needed: one extreme step is improbable (P ≤ ``burst_p``) only where
    the long-run rate is about nil, and there the rarity memory already calls it news — a
    series whose memories hold an excursion recently (not rare) or at this hour (recurring)
    has a long-run rate that needs several steps to reach the tail."""
    hit = 1.0 if w.learned_extreme else 0.0
    b_short = np.float32(1 - c.a_burst) * s.burst_short + c.a_burst * hit
    b_mean = np.float64(s.burst_mean)
    is_burst = False
    if w.scoring and w.learned_extreme:
        count = b_short / c.a_burst
        mean = fmax(b_mean / c.a_burst, 1e-6)
        is_burst = call_double_double(c.gammainc_address, count, mean) <= c.burst_p
    if w.observed:
        s.burst_mean = b_mean + weight(w, c.a_burst_long) * (hit - b_mean)
        s.burst_short = b_short
    return is_burst


@part
def drift(s, w, c, is_open):
    """The drift window's mean of the clipped deviation from the slow baseline, against its
    spread: opens (once per excursion, outside incidents) what the fast level has followed."""
    zs = clip((w.dev - w.season) / w.sigma, -4.0, 4.0)
    if w.sign != 0 and zs * w.sign < 0:
        zs = 0.0
    drift_short = (1 - c.a_drift) * s.drift_short + c.a_drift * zs
    w.drift_short = 0.0 if w.after_gap else drift_short
    stat_drift = abs(w.drift_short) / fmax(1.25 * s.drift_spread, c.drift_floor)
    armed = s.drift_armed != 0
    opens = (w.scoring and not w.anomalous and not is_open and armed
             and w.n >= c.drift_min_steps and stat_drift >= c.drift_z
             and w.stat_level >= c.drift_level_z)
    # Disarmed by any incident (a shift already told must not come back as drift).
    if w.observed:
        s.drift_armed = False if (w.anomalous or is_open) else (armed or stat_drift < c.z_close)
    if opens:
        w.anomalous = True
        w.kind = DRIFT
        w.z_eff = fmax(w.z_eff, stat_drift)
        w.direction = 1 if w.drift_short > 0 else -1


@part
def taught(s, w):
    """The size (peak score) of the pattern operators marked "not an anomaly" for this
    series that an opening matches, 0 if none (:mod:`vigil.detectors.teaching`): the same
    family and direction, a score at most ``LARGER`` times the marked peak (a clearly larger
    one is news again), within ``TAUGHT_MINUTES`` of its time of day when it was a
    daily-recurring one, before the teaching's expiry (in data time)."""
    family = FAMILY[w.kind]
    minute = (w.t % DAY_MS) // 60_000
    for k in range(TAUGHT_SLOTS):
        if s.taught_until_ms[k] <= w.t or s.taught_family[k] != family:
            continue
        if s.taught_direction[k] != 0 and s.taught_direction[k] != w.direction:
            continue
        if w.z_eff > LARGER * np.float64(s.taught_z[k]):
            continue
        if s.taught_minute[k] >= 0:
            apart = abs(minute - s.taught_minute[k])
            if min(apart, 1440 - apart) > TAUGHT_MINUTES:
                continue
        return np.float64(s.taught_z[k])
    return 0.0


@part
def withhold(s, w, c, is_open):
    """Withhold an opening that operators taught is normal, and what follows it while the
    excursion lasts (a quiet incident: its end or its aftermath, of any kind, up to
    ``LARGER`` times the pattern's size), until ``resolve_steps`` calm steps end it."""
    w.taught = False
    if w.anomalous and not is_open:
        z_taught = taught(s, w)
        if z_taught == 0.0 and s.quiet_calm > 0 and w.z_eff <= LARGER * np.float64(s.quiet_z):
            z_taught = np.float64(s.quiet_z)
        if z_taught > 0.0:
            w.taught = True
            w.anomalous = False
            w.news = False
            s.quiet_calm = c.resolve_steps
            s.quiet_z = z_taught
            return
    if s.quiet_calm > 0 and w.observed:
        s.quiet_calm = c.resolve_steps if w.extreme else s.quiet_calm - 1


@part
def contextual(s, w, c):
    """A point anomaly whose value is ordinary for the series at another time of day."""
    if not (w.anomalous and w.stat_point >= c.z_open and w.new_d):
        return False
    base = s.slow_level + (w.s_w if w.new_w else 0.0)
    low, high = s.daily[0], s.daily[0]
    for v in s.daily[1:]:
        low, high = min(low, v), max(high, v)
    floor = base + low - 3 * w.sigma
    ceiling = base + high + 3 * w.sigma
    return w.y >= floor and w.y <= ceiling


@part
def learn_level_and_scale(s, w, c):
    """Typical step, excursion peak, level and trend (Huber-clipped residual), scale."""
    n, sigma, r = w.n, w.sigma, w.r
    if w.observed and n >= 1:
        a_dy = fmax(c.a_spread, 1.0 / fmax(n, 1.0))
        s.dy_all = (1 - a_dy) * s.dy_all + a_dy * w.dy
    # The peak of the score's current excursion (0 once back under z_close).
    if w.observed and not w.early:
        s.z_peak = fmax(np.float64(s.z_peak), w.z_eff) if w.z_eff >= c.z_close else 0.0
    r_clip = r if n < 3 else clip(r, -c.huber_z * sigma, c.huber_z * sigma)
    level = w.forecast + weight(w, c.a_level) * r_clip if w.observed else w.forecast
    if w.observed and n >= 3:
        s.trend = (1 - c.a_trend) * s.trend + c.a_trend * (level - s.level)
    abs_r = abs(r)
    if n >= 3:
        abs_r = fmin(abs_r, 4.0 * fmax(sigma, 1e-300))
    if w.observed:
        a_mad = weight(w, c.a_scale)
        s.mad = (1 - a_mad) * s.mad + a_mad * abs_r
    # The hour-of-day scale: the two interpolating slots move towards |r|; during the
    # series' first day every slot follows the overall scale.
    step = c.a_hour * (abs_r - w.mad_hour) if w.observed and w.hours_known else 0.0
    s.mad_hourly[w.h0] += np.float32((1.0 - w.hw) * step)
    s.mad_hourly[w.h1] += np.float32(w.hw * step)
    if not w.hours_known:
        s.mad_hourly[:] = s.mad
    s.level = level


@part
def learn_baseline(s, w, c, calm):
    """Seasonality variances and slow baseline (calm steps), profiles (calm steps, every
    observed one during the first days)."""
    e_none, e_d = w.dev, w.dev - w.s_d
    e_w = w.dev - w.s_d - w.s_w
    if calm:
        a = weight(w, c.a_season)
        s.var_none = (1 - a) * s.var_none + a * (e_none * e_none)
        s.var_daily = (1 - a) * s.var_daily + a * (e_d * e_d)
        s.var_weekly = (1 - a) * s.var_weekly + a * (e_w * e_w)
        s.slow_level = s.slow_level + weight(w, c.a_slow) * e_w
    on = 1.0 if calm or (w.observed and w.n < c.learn_all_steps) else 0.0
    # Early on a slot's value is the mean of its visits so far (bias-corrected weight).
    a_d = fmax(c.a_daily, 1.0 / (w.n / DAILY_SLOTS + 1.0))
    learn_daily(s.daily, w.d0, w.d1, w.dw, on * a_d * e_w)
    learn_weekly(s, w.w0, w.w1, w.ww, on * c.a_weekly * e_w)


@part
def learn_daily(profile, i0, i1, w, delta):
    """Move the two interpolating slots towards the target, keeping the profile's mean 0."""
    profile[i0] += np.float32((1.0 - w) * delta)
    profile[i1] += np.float32(w * delta)
    profile -= np.float32(delta / profile.shape[0])


@part
def learn_weekly(s, i0, i1, w, delta):
    """Move the two weekly slots (and their hours' running sums over the week)."""
    d = np.float32((1.0 - w) * delta)
    s.weekly[i0] += d
    s.weekly_hour_sum[i0 % 24] += d
    d = np.float32(w * delta)
    s.weekly[i1] += d
    s.weekly_hour_sum[i1 % 24] += d


@part
def learn_spreads(s, w, c, calm):
    """Window statistics: their long-run spreads (calm steps) and short windows."""
    if calm:
        a = weight(w, c.a_spread)
        s.level_spread = (1 - a) * s.level_spread + a * abs(w.level_short)
        s.var_spread = (1 - a) * s.var_spread + a * abs(w.var_short - s.var_center)
        s.var_center = (1 - a) * s.var_center + a * w.var_short
        if s.tv_long > 0:
            s.tv_spread = (1 - a) * s.tv_spread + a * abs(w.log_ratio)
        s.tv_long = (1 - a) * s.tv_long + a * w.dy_c
        s.zero_rate = (1 - a) * s.zero_rate + a * (1.0 if w.zero else 0.0)
        s.drift_spread = (1 - a) * s.drift_spread + a * abs(w.drift_short)
    if w.observed:
        s.level_short = w.level_short
        s.drift_short = w.drift_short
        s.var_short = w.var_short
        s.tv_short = w.tv_short
        s.flat_run = w.flat_run
        s.prev_value = w.y
        s.n_steps += 1


@part
def incident(s, w, c, is_open):
    """Open on an anomalous step, escalate to critical, resolve after calm steps (filled
    steps neither count as calm nor break the calm run); within an open incident, tell a
    distinct anomaly (:func:`change`) with an update."""
    z_eff = w.z_eff
    severity = 2 if z_eff >= c.z_critical else (1 if w.anomalous else 0)
    opening = not is_open and w.anomalous
    hot = is_open and z_eff >= c.z_close
    calm_count = s.incident_calm + (1 if w.observed else 0) if is_open and not hot else 0
    resolving = is_open and calm_count >= c.resolve_steps
    escalating = is_open and severity > s.incident_severity
    w.change = change(s, w, c) if is_open and w.anomalous else 0
    previous = s.incident_severity
    w.event = 3 if resolving else (2 if escalating or w.change else (1 if opening else 0))
    if opening:
        s.incident_start_ms = w.t
    w.incident_start_ms = s.incident_start_ms if is_open or opening else -1
    if opening or escalating:
        s.incident_severity = severity
    elif resolving:
        s.incident_severity = 0
    if opening or w.change:
        s.incident_family = FAMILY[w.kind]
        s.incident_direction = w.direction
    if opening:
        s.incident_peak = z_eff
    else:
        s.incident_peak = fmax(np.float64(s.incident_peak), z_eff) if is_open else 0.0
    s.incident_calm = 0 if resolving else calm_count
    s.incident_open = (is_open or opening) and not resolving
    # A resolve reports the severity the incident had; other steps their own.
    w.severity = previous if resolving else severity


@part
def change(s, w, c):
    """Whether an anomalous step inside an open incident is a distinct anomaly, and how.

    It must be news as an opening must (rare and not recurring, or a burst); then it is
    told if

    * ``CHANGE_DIRECTION`` — the value moved the other way, beyond its usual range (the slow
      baseline plus the profiles ± z_open·σ), not merely back: a dip after a spike;
    * ``CHANGE_KIND`` — it starts a new excursion of the score, of another family (the
      value moved / its spread changed / it stopped; an incident kept from a state format
      without the family has none, 0, and no kind change);
    * ``CHANGE_LARGER`` — it starts a new excursion, at least ``LARGER`` times the
      incident's peak.
    """
    if not w.news:
        return 0
    # Only the family "the value moved" has a direction (±1; 0 otherwise).
    if s.incident_direction * w.direction < 0:
        beyond = (w.dev - w.season) / w.sigma * w.direction  # from the slow baseline
        if beyond >= c.z_open:
            return CHANGE_DIRECTION
    if not w.new_excursion:
        return 0
    if s.incident_family != 0 and FAMILY[w.kind] != s.incident_family:
        return CHANGE_KIND
    if w.z_eff >= LARGER * np.float64(s.incident_peak):
        return CHANGE_LARGER
    return 0


@part
def ew_line(decay, weight, weight2, t_mean, y_mean, tt, ty, yy, t, y):
    """One point more in an EW least-squares line's sums (incremental, Welford form)."""
    w_old = decay * weight
    if w_old == 0.0:
        return 1.0, 1.0, t, y, 0.0, 0.0, 0.0
    r = 1.0 / (w_old + 1.0)
    keep = w_old * r
    dt, dy = t - t_mean, y - y_mean
    return (w_old + 1.0, decay * decay * weight2 + 1.0, t_mean + r * dt, y_mean + r * dy,
            decay * tt + keep * dt * dt, decay * ty + keep * dt * dy, decay * yy + keep * dy * dy)


@part
def learn_trend(s, w, c):
    """The capacity forecast's trend: exponentially weighted least-squares lines through the
    observed steps' deseasonalised values (the value less the seasonal profiles the detector
    applies, so a daily peak is no climb) against time in hours, over two half-lives. A
    switch of the applied seasonality starts them afresh (the values change meaning)."""
    if not w.observed:
        return
    season = w.new_d + 2 * w.new_w
    decay, decay_long = c.fit_decay, c.fit_long_decay
    if season != s.fit_season:
        s.fit_season = season
        decay, decay_long = 0.0, 0.0
    t, y = w.t / 3_600_000.0, w.y - w.season
    (s.fit_weight, s.fit_weight2, s.fit_t_mean, s.fit_y_mean, s.fit_tt, s.fit_ty,
     s.fit_yy) = ew_line(decay, s.fit_weight, s.fit_weight2, s.fit_t_mean, s.fit_y_mean,
                         s.fit_tt, s.fit_ty, s.fit_yy, t, y)
    (s.fit_long_weight, s.fit_long_weight2, s.fit_long_t_mean, s.fit_long_y_mean,
     s.fit_long_tt, s.fit_long_ty, s.fit_long_yy) = ew_line(
        decay_long, s.fit_long_weight, s.fit_long_weight2, s.fit_long_t_mean,
        s.fit_long_y_mean, s.fit_long_tt, s.fit_long_ty, s.fit_long_yy, t, y)


@part
def step(s, w, c):
    """Score one closed step of one series, then learn from it."""
    if s.n_steps == 0:
        init_state(s, w, c)
    seasonal_profiles(s, w)
    seasonality_switch(s, w, c)
    forecast(s, w)
    scale(s, w, c)
    window_stats(s, w, c)
    best_statistic(s, w, c)
    # Rarity and recurrence decide whether an incident opens; a flatline is scored by how
    # rare an unchanged step is already; within an open incident every extreme step counts.
    news = is_news(s, w, c) if w.learned_extreme else True
    news = news or w.best == FLATLINE
    is_burst = burst(s, w, c)
    is_open = s.incident_open != 0
    # Before the daily profile may apply, a daily ramp looks like an anomaly: critical only
    # (the score in σ, before the early discount of a point statistic).
    z_raw = w.stat_point if w.early else w.z_eff
    w.news = (w.extreme and (news or is_burst)
              and (w.n >= c.quiet_steps or z_raw >= c.z_critical))
    w.anomalous = w.news or (w.extreme and is_open)
    w.kind = w.best + 1
    drift(s, w, c, is_open)
    withhold(s, w, c, is_open)
    w.contextual = contextual(s, w, c)
    calm = w.observed and not w.learned_extreme
    learn_level_and_scale(s, w, c)
    learn_baseline(s, w, c, calm)
    learn_spreads(s, w, c, calm)
    incident(s, w, c, is_open)
    learn_trend(s, w, c)


@njit(cache=True)
def run_steps(states, index, ts_ms, values, filled, after_gap, direction, c,
              expected, band, z, anomaly_type, is_contextual, event, severity,
              incident_start_ms, seasonality, changes, taught_out):
    """Score and learn every step (ordered by series, then time) into the output arrays."""
    work = np.zeros(1, WORK_DTYPE)
    w = work[0]
    for i in range(len(index)):
        row = index[i]
        s = states[row]
        take_step(s, w, ts_ms[i], values[i], filled[i], after_gap[i], direction[row])
        step(s, w, c)
        expected[i] = w.expected
        band[i] = c.z_open * w.sigma
        z[i] = w.z_eff
        anomaly_type[i] = w.kind if w.anomalous else 0
        is_contextual[i] = w.contextual
        event[i] = w.event
        severity[i] = w.severity
        incident_start_ms[i] = w.incident_start_ms
        seasonality[i] = w.new_d + w.new_w
        changes[i] = w.change
        taught_out[i] = w.taught
