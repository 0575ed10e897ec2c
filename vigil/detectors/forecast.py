"""Capacity forecasts: when will a series reach its limit (a full disk, exhausted memory)?

A smooth climb towards a limit is no anomaly to a detector that learns the trend, so the
forecast is a separate reading of each series' state. The step kernel keeps, per series, an
exponentially weighted least-squares line through the *deseasonalised* values (the value less
the seasonal profiles the detector applies, so a daily peak is no climb) against time
(:func:`vigil.detectors.kernel.learn_trend`, half-life ``forecast_halflife_s``). From it::

    rate b = Σw(t−t̄)(y−ȳ) / Σw(t−t̄)²        level now ŷ = ȳ + b·(now − t̄)
    time to the limit T = (L − ŷ) / b         (an upper limit L; mirrored for a lower one)

and, from the residual variance σ² (with the fit's effective sample size ``(Σw)²/Σw²``), the
standard errors of ``b`` and ``ŷ``: the band of T runs from the fastest plausible approach
(``ŷ + k·se(ŷ)`` at ``b + k·se(b)``, ``k`` = :data:`BAND_Z`) to the slowest (infinite where
``b − k·se(b)`` no longer approaches). Where the daily profile is applied, the limit is
reached when the trend *plus the daily peak* reaches it, so ``L`` is lowered by the profile's
highest slot (raised by its lowest, for a lower limit). A second line over
``LONG_FIT_FACTOR`` × the half-life (a day) must agree: its rate at least
:data:`LONG_AGREEMENT` of the first one's — a daily cycle's ramp averages out over a day, a
lasting fill does not.

A warning opens when the *lower* bound of T falls under the warning horizon while the rate
points at the limit (T is 0 once the level is at the limit: a full disk stays told); it is
critical under the critical horizon, and resolves once the lower bound is past
:data:`RESOLVE_FACTOR` × the warning horizon (hysteresis) or the trend turns away (a
cleanup). The open warning lives in the state record (``forecast_severity``,
``forecast_start_ms``), so it survives restarts.

>>> from vigil.detectors.bank import StateBank
>>> from vigil.detectors.online import OnlineDetector
>>> det, bank = OnlineDetector(), StateBank.empty(1)
>>> t = 1_700_006_400_000 + 60_000 * np.arange(2 * 1440)  # two days, one point a minute
>>> noise = np.random.default_rng(0).normal(0.0, 0.5, len(t))
>>> y = 40 + 20 * np.arange(len(t)) / 1440 + noise        # filling by 20 % a day
>>> _ = det.process(bank, np.zeros(len(t), int), t, y)
>>> f = forecast(bank.records, np.array([0.0]), np.array([100.0]), min_steps=1440)
>>> round(float(f.rate_per_h[0]), 2), round(float(f.hours[0]))  # 0.83 %/h, 20 % to go
(0.83, 24)
>>> bool(f.hours_low[0] < 24.0 < f.hours_high[0])
True
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vigil.detectors.online import LONG_FIT_FACTOR

__all__ = [
    "BAND_Z",
    "LONG_AGREEMENT",
    "LONG_WEIGHT",
    "RESOLVE_FACTOR",
    "Forecast",
    "ForecastLimits",
    "LimitRule",
    "Transition",
    "decide",
    "follow",
    "forecast",
]

#: Half-width of the band in standard errors (about a 95 % interval for each of rate and level).
BAND_Z = 2.0
#: The long fit's rate must be at least this share of the short fit's (the same sign).
LONG_AGREEMENT = 0.25
#: The long line must hold this many times half of its steady-state weight: 1.5 is three
#: quarters, two of its half-lives (two days) of data — a daily cycle's drop, not its ramp
#: alone, also after the applied seasonality switched and restarted it.
LONG_WEIGHT = 1.5
#: A warning resolves once the lower bound of the time to the limit is past this many warning
#: horizons (hysteresis: a forecast hovering at the horizon does not flap).
RESOLVE_FACTOR = 1.25
HOUR_MS = 3_600_000


@dataclass(slots=True)
class Forecast:
    """Per-series forecasts (arrays aligned with the records given to :func:`forecast`).

    ``side`` is +1 where the series heads for its upper limit, −1 for its lower one, 0 where
    nothing is forecast (too young, no limit, no trend towards either); ``hours`` (point
    estimate), ``hours_low`` and ``hours_high`` are then ``inf``.
    """

    side: np.ndarray
    limit: np.ndarray  # the limit headed for (NaN where side is 0)
    rate_per_h: np.ndarray  # the trend, value units per hour
    level: np.ndarray  # the deseasonalised level now, from the fit
    hours: np.ndarray
    hours_low: np.ndarray
    hours_high: np.ndarray
    now_ms: np.ndarray  # the series' last step (the forecast's origin)


def forecast(
    records: np.ndarray, low: np.ndarray, high: np.ndarray, min_steps: float,
    min_fit_weight: float = 4.0, band_z: float = BAND_Z, now_ms: np.ndarray | None = None,
) -> Forecast:
    """The forecasts of state ``records`` towards their limits ``low`` / ``high`` (NaN = none).

    Only where the long fit (``LONG_FIT_FACTOR`` × the half-life) confirms the trend: its
    rate at least :data:`LONG_AGREEMENT` of the short fit's. Over a day or more the ramp of
    a daily cycle averages out against its drop, while a fill that lasts does not.

    Series younger than ``min_steps`` observed steps, or whose fit holds less than
    ``min_fit_weight`` (the fit restarts when the applied seasonality switches; half of the
    steady-state weight ``1 / (1 − decay)`` is one half-life of steps), get none. ``now_ms``
    is each series' last learned step (default: the records' ``last_step_ms``).
    """
    n = len(records)
    now_ms = np.asarray(records["last_step_ms"] if now_ms is None else now_ms, np.int64)
    w, w2, rate, var_rate, var_res, t_mean, y_mean = _line(records, "fit_")
    w_long, _, rate_long, _, _, _, _ = _line(records, "fit_long_")
    with np.errstate(divide="ignore", invalid="ignore"):
        ahead = now_ms / HOUR_MS - t_mean
        level = y_mean + rate * ahead
        var_level = var_res * w2 / np.maximum(w * w, 1e-300) + ahead * ahead * var_rate
    se_rate, se_level = np.sqrt(var_rate), np.sqrt(var_level)
    # The limit is reached when the trend plus the applied daily profile's extreme gets there.
    daily = records["daily"].astype(np.float64)
    on = records["daily_on"] != 0
    peak = np.where(on, daily.max(axis=1), 0.0)
    trough = np.where(on, daily.min(axis=1), 0.0)
    ready = ((records["n_steps"] >= min_steps) & (w >= max(min_fit_weight, 4.0))
             & (w_long >= max(LONG_WEIGHT * LONG_FIT_FACTOR * min_fit_weight, 4.0))
             & np.isfinite(var_rate))
    # The trend holds over the long fit's day too (a daily cycle's ramp does not).
    held = rate_long * rate >= LONG_AGREEMENT * rate * rate
    up = ready & held & np.isfinite(high) & (rate > 0) & (level + peak < high)
    down = ready & held & np.isfinite(low) & (rate < 0) & (level + trough > low) & ~up
    # At the limit already (a full disk): the forecast has come true, time 0.
    at_high = ready & np.isfinite(high) & (level + peak >= high)
    at_low = ready & np.isfinite(low) & (level + trough <= low) & ~at_high
    up, down = up | at_high, down | at_low
    side = np.where(up, 1, np.where(down, -1, 0)).astype(np.int8)
    limit = np.where(up, high, np.where(down, low, np.nan))
    target = np.where(up, high - peak, np.where(down, low - trough, np.nan))
    inf = np.full(n, np.inf)
    hours, hours_low, hours_high = inf.copy(), inf.copy(), inf.copy()
    s = side != 0
    if s.any():
        sign = side[s].astype(np.float64)
        distance = (target[s] - level[s]) * sign  # > 0
        approach = rate[s] * sign  # > 0
        fast = approach + band_z * se_rate[s]
        slow = approach - band_z * se_rate[s]
        near = np.maximum(distance - band_z * se_level[s], 0.0)
        far = distance + band_z * se_level[s]
        hours[s] = distance / approach
        hours_low[s] = near / fast
        hours_high[s] = np.where(slow > 0, far / np.where(slow > 0, slow, 1.0), np.inf)
        reached = (at_high | at_low)[s]
        hours[s] = np.where(reached, 0.0, hours[s])
        hours_low[s] = np.where(reached, 0.0, hours_low[s])
        hours_high[s] = np.where(reached, 0.0, hours_high[s])
    return Forecast(side, limit, rate, level, hours, hours_low, hours_high, now_ms)


def _line(records: np.ndarray, prefix: str) -> tuple[np.ndarray, ...]:
    """A stored EW line's weight Σw, Σw², rate, the rate's variance, the residual variance
    and the means of t and y (``prefix`` ``fit_`` or ``fit_long_``)."""
    w = records[prefix + "weight"].astype(np.float64)
    w2 = np.maximum(records[prefix + "weight2"].astype(np.float64), 1e-300)
    tt = records[prefix + "tt"].astype(np.float64)
    ty = records[prefix + "ty"].astype(np.float64)
    yy = records[prefix + "yy"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = w * w / w2
        rate = np.where(tt > 0, ty / tt, 0.0)
        sse = np.maximum(yy - rate * ty, 0.0)
        var_res = sse / np.maximum(w, 1e-300) * n_eff / np.maximum(n_eff - 2.0, 1.0)
        var_rate = np.where(tt > 0, var_res * (w2 / np.maximum(w, 1e-300)) / tt, np.inf)
    return (w, w2, rate, var_rate, var_res, records[prefix + "t_mean"],
            records[prefix + "y_mean"])


def decide(
    previous: np.ndarray, f: Forecast, warning_h: float, critical_h: float
) -> tuple[np.ndarray, np.ndarray]:
    """The forecast warnings' transitions: ``(severity, event)`` per series, severity 0 none,
    1 warning, 2 critical; event 0 none, 1 open, 2 update (escalated), 3 resolve.

    >>> f = Forecast(*(np.array(v) for v in ([1, 1, 0, 1], [100.0] * 4, [1.0] * 4,
    ...     [50.0] * 4, [30.0, 3.0, np.inf, 40.0], [20.0, 2.0, np.inf, 35.0],
    ...     [40.0, 5.0, np.inf, 50.0], [0] * 4)))
    >>> decide(np.array([0, 1, 1, 1]), f, 24.0, 4.0)
    (array([1, 2, 0, 0]), array([1, 2, 3, 3]))
    """
    previous = np.asarray(previous, np.int64)
    low = f.hours_low
    heading = f.side != 0
    wanted = np.where(heading & (low < critical_h), 2,
                      np.where(heading & (low < warning_h), 1, 0))
    is_open = previous > 0
    keep = is_open & heading & (low < RESOLVE_FACTOR * warning_h)
    severity = np.where(is_open, np.where(keep, np.maximum(previous, wanted), 0), wanted)
    event = np.where(~is_open & (severity > 0), 1,
                     np.where(is_open & (severity == 0), 3,
                              np.where(is_open & (severity > previous), 2, 0)))
    return severity.astype(np.int64), event.astype(np.int64)


@dataclass(frozen=True)
class LimitRule:
    """A series' limits from a rule's text: ``"100"`` (one fixed limit, approached from
    whichever side the series is on), ``"0/100"`` (a lower and an upper one), ``"label
    mem_total"`` (the value of the series' label ``mem_total``).

    >>> LimitRule.parse("0/100").limits({}), LimitRule.parse("label total").limits({"total": "8"})
    ((0.0, 100.0), (None, 8.0))
    """

    low: float | None = None
    high: float | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> LimitRule:
        text = str(text).strip()
        if text.startswith("label "):
            name = text.removeprefix("label ").strip()
            if not name:
                raise ValueError("'label' needs a label name, e.g. 'label mem_total'")
            return cls(label=name)
        parts = [p.strip() for p in text.split("/")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"a limit is a number, 'LOW/HIGH' or 'label NAME', not {text!r}") from None
        if len(values) == 1 and math.isfinite(values[0]):
            return cls(high=values[0])  # one value: its side is decided by the series' value
        if len(values) == 2 and all(map(math.isfinite, values)) and values[0] < values[1]:
            return cls(low=values[0], high=values[1])
        raise ValueError(f"a limit is a number, 'LOW/HIGH' (LOW < HIGH) or 'label NAME', "
                         f"not {text!r}")

    def limits(self, labels: Mapping[str, str]) -> tuple[float | None, float | None]:
        """``(low, high)``; one fixed value comes as ``high`` (see :class:`ForecastLimits`)."""
        if self.label is None:
            return self.low, self.high
        try:
            value = float(labels[self.label])
        except (KeyError, TypeError, ValueError):
            return None, None
        return (None, value) if math.isfinite(value) else (None, None)

    @property
    def single(self) -> bool:
        return self.low is None


class ForecastLimits:
    """The limits of each metric, from rules ``{glob on the metric name: limit text}`` (the
    first match wins; see :class:`LimitRule`).

    A single limit (a fixed value or a label's) is an upper limit for a series below it and a
    lower one for a series above it (a free-space metric falling towards 0).

    >>> rules = ForecastLimits({"disk_used_percent*": "100", "mem_used": "label total"})
    >>> rules.limits("disk_used_percent", {}, 40.0), rules.limits("mem_used", {"total": "8"}, 9)
    ((nan, 100.0), (8.0, nan))
    >>> rules.limits("cpu", {}, 1.0)
    (nan, nan)
    """

    def __init__(self, rules: Mapping[str, str]) -> None:
        self.rules = [(glob, LimitRule.parse(text)) for glob, text in rules.items()]

    def rule(self, name: str) -> LimitRule | None:
        for glob, rule in self.rules:
            if fnmatch.fnmatchcase(name, glob):
                return rule
        return None

    def limits(self, name: str, labels: Mapping[str, str], value: float) -> tuple[float, float]:
        """``(low, high)`` for a series now at ``value`` (NaN = no such limit)."""
        rule = self.rule(name)
        if rule is None:
            return math.nan, math.nan
        low, high = rule.limits(labels)
        if rule.single and high is not None and value > high:
            low, high = high, None
        return (math.nan if low is None else low), (math.nan if high is None else high)



@dataclass(slots=True)
class Transition:
    """A forecast warning's transition in :func:`follow` (``event`` 1 open, 2 update,
    3 resolve) with the forecast at that time."""

    ts_ms: int
    event: int
    severity: int
    hours: float
    hours_low: float
    hours_high: float


def follow(ts_ms, values, low: float, high: float, params=None, warning_h: float = 24.0,
           critical_h: float = 4.0, batch_steps: int = 15) -> list[Transition]:
    """Run one series through the detector in batches of ``batch_steps`` points, as a worker
    does, and return its forecast warnings' transitions (for tests and benchmarks)."""
    from vigil.detectors.bank import StateBank
    from vigil.detectors.online import DetectorParams, OnlineDetector  # noqa: PLC0415

    p = params or DetectorParams()
    detector, bank = OnlineDetector(p), StateBank.empty(1)
    min_steps = p.forecast_min_days * 86_400 / p.step_s
    min_fit_weight = 0.5 / (1.0 - 0.5 ** (p.step_s / p.forecast_halflife_s))
    ts_ms, values = np.asarray(ts_ms, np.int64), np.asarray(values, np.float64)
    severity = np.zeros(1, np.int64)
    out = []
    for lo in range(0, len(ts_ms), batch_steps):
        hi = min(lo + batch_steps, len(ts_ms))
        detector.process(bank, np.zeros(hi - lo, np.int64), ts_ms[lo:hi], values[lo:hi])
        f = forecast(bank.records, np.array([low]), np.array([high]), min_steps,
                     min_fit_weight)
        severity, event = decide(severity, f, warning_h, critical_h)
        if event[0]:
            out.append(Transition(int(f.now_ms[0]), int(event[0]), int(severity[0]),
                                  float(f.hours[0]), float(f.hours_low[0]),
                                  float(f.hours_high[0])))
    return out
