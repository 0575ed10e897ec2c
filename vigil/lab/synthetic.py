"""Realistic synthetic IT telemetry with labelled anomalies, for testing and benchmarking detectors.

:func:`generate_telemetry` builds a fleet of hosts (``web-01``, ``web-02``, ...) each reporting
the metrics of :data:`ALL_METRICS` once per step, with the shapes real node and HTTP metrics
have: a business-hours daily cycle (UTC) damped at weekends for the traffic-driven metrics,
a leaking-and-restarted memory sawtooth, a slowly filling disk with occasional cleanups,
heteroscedastic and right-skewed noise, Poisson error counts. Disk usage and the memory of
every other host have no daily cycle, so a detector has to find seasonality, not assume it.

On top come labelled anomalies (none in the first :data:`LEARNING_DAYS` days, which are for
learning a weekly profile; never two overlapping in a series):

========== =============== ======================================================
kind       type            what it looks like
========== =============== ======================================================
point      spike           1–3 steps far above anything seen that day
point      dip             1–3 steps dropping to a fraction of the busy-hour level
collective oscillation     20–90 min of fast swings around the normal level
collective level_shift     1–6 h shifted up or down, then back
collective flatline        30–120 min stuck at one value (a hung exporter)
collective variance_change 1–3 h with noise ×4–×8 around the normal level
contextual night_peak      30–120 min of busy-hour values in the middle of the night
========== =============== ======================================================

Missing points (single drops and a few host outages of 5–30 min) are absent from the output;
labelled points are never dropped. Everything is drawn from ``seed``: the same arguments
(with an explicit ``start_ms``) give the same telemetry.

>>> t = generate_telemetry(hosts=1, metrics=["cpu_usage_percent"], days=1, step_s=300,
...                        start_ms=1_704_067_200_000, missing_rate=0)
>>> s = t.series['cpu_usage_percent{host="web-01"}']
>>> len(s), int(s.ts_ms[0]), bool(0 <= s.values.min() and s.values.max() <= 100)
(288, 1704067200000, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.random import Generator

from vigil.lab.datasets import AnomalyLabel, SeriesData
from vigil.series import series_id

__all__ = [
    "ALL_METRICS",
    "GONE_BEFORE_END_MIN",
    "GONE_HOST",
    "LABEL_KINDS",
    "LABEL_TYPES",
    "LEARNING_DAYS",
    "METRIC_UNITS",
    "Telemetry",
    "generate_telemetry",
]

MINUTE_MS = 60_000
#: ``gone-01`` stops this many minutes before the end of the recording (``gone_host``).
GONE_BEFORE_END_MIN = 15.0
GONE_HOST = "gone-01"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
LEARNING_DAYS = 7  # no anomaly before this: a detector needs a full week to learn weekly shape
NIGHT_HOURS = (0.5, 5.0)  # UTC hours in which night_peak anomalies are placed (traffic trough)
GAP_BETWEEN_ANOMALIES_MS = 3 * HOUR_MS  # so a detector has settled before the next one

LABEL_KINDS = ("point", "collective", "contextual")
LABEL_TYPES = {
    "spike": "point",
    "dip": "point",
    "oscillation": "collective",
    "level_shift": "collective",
    "flatline": "collective",
    "variance_change": "collective",
    "night_peak": "contextual",
}
# Anomaly durations in minutes (inclusive range); point anomalies count steps instead.
_DURATION_MIN = {
    "oscillation": (20, 90),
    "level_shift": (60, 360),
    "flatline": (30, 120),
    "variance_change": (60, 180),
    "night_peak": (30, 120),
}


@dataclass(frozen=True)
class _Metric:
    unit: str
    upper: float  # values are clipped to [0, upper]
    decimals: int  # the precision an exporter would report
    multiplicative: bool  # a level shift scales the value (rates) instead of adding to it
    anomaly_types: tuple[str, ...]  # the anomalies that are plausible and visible for it


_ALL = tuple(LABEL_TYPES)
_METRICS: dict[str, _Metric] = {
    "cpu_usage_percent": _Metric("percent", 100.0, 2, False, _ALL),
    "load1": _Metric("load average", math.inf, 2, False, _ALL),
    "memory_used_percent": _Metric(
        "percent", 100.0, 2, False, ("spike", "oscillation", "level_shift", "variance_change")
    ),
    # Disk noise is tiny: a flatline or a noise change would be invisible on a chart.
    "disk_used_percent": _Metric(
        "percent", 100.0, 3, False, ("spike", "oscillation", "level_shift")
    ),
    "network_rx_bytes": _Metric("bytes/s", math.inf, 0, True, _ALL),
    "http_latency_ms": _Metric(
        "ms (p95)",
        math.inf,
        1,
        True,
        ("spike", "oscillation", "level_shift", "flatline", "variance_change", "night_peak"),
    ),
    # Near zero, Poisson: a dip is invisible, swings or more noise would be clipped at 0.
    "http_error_rate": _Metric("errors/s", math.inf, 4, True, ("spike", "level_shift", "flatline")),
}
ALL_METRICS: tuple[str, ...] = tuple(_METRICS)
METRIC_UNITS: dict[str, str] = {name: m.unit for name, m in _METRICS.items()}


@dataclass
class Telemetry:
    """Generated series (keyed by series id), their anomaly labels, and the generator params.

    ``params["series"][id]`` tells each series' metric, host, unit and whether it has a daily
    cycle (``seasonal``); ``params["outages"]`` lists the host outages.
    """

    series: dict[str, SeriesData]
    labels: list[AnomalyLabel]
    params: dict[str, Any]

    @property
    def n_points(self) -> int:
        return sum(len(s) for s in self.series.values())


def generate_telemetry(
    hosts: int = 4,
    metrics: Sequence[str] = ALL_METRICS,
    days: float = 30,
    step_s: int = 60,
    start_ms: int | None = None,
    seed: int = 7,
    anomalies_per_series: float = 3.0,
    missing_rate: float = 0.002,
    capacity_fill: bool = False,
    gone_host: bool = False,
    gone_before_end_min: float = GONE_BEFORE_END_MIN,
) -> Telemetry:
    """A fleet of ``hosts`` × ``metrics`` series over ``days``, one point per ``step_s``.

    ``start_ms`` defaults to the month ending at the current minute (UTC, floored to the step),
    so a replay looks recent; pass it explicitly for reproducible output. Each series gets
    ``anomalies_per_series`` anomalies on average (exactly that many when it is whole), as
    room allows after the first :data:`LEARNING_DAYS` days. ``capacity_fill`` adds a host
    ``db-01`` whose ``disk_used_percent`` fills towards 100 % (:func:`_capacity_fill`; its
    times in ``params["capacity_fill"]``): a capacity forecast's case, no anomaly label.

    ``gone_host`` adds a host ``gone-01`` (the same metrics, no labelled anomalies) that
    stops reporting for good ``gone_before_end_min`` minutes before the end: a stopped host
    for the ``no_data`` check (docs/stopped-series.md). ``params["gone"]`` tells its series
    and last point; the other hosts are the same with or without it.
    """
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {ALL_METRICS}")
    if hosts < 1 or step_s < 1 or days <= 0:
        raise ValueError("hosts, step_s and days must be positive")
    step_ms = step_s * 1000
    n = int(days * DAY_MS // step_ms)
    if n < 1:
        raise ValueError("days must cover at least one step")
    if start_ms is None:
        now_ms = int(time.time() * 1000) // step_ms * step_ms
        start_ms = now_ms - (n - 1) * step_ms
    clock = _Clock(start_ms + np.arange(n, dtype=np.int64) * step_ms, step_ms)

    host_names = [f"web-{i + 1:02d}" for i in range(hosts)]
    states: list[_SeriesState] = []
    for h, host in enumerate(host_names):
        traffic = _host_traffic(clock, np.random.default_rng([seed, h, 1_000]))
        for metric in metrics:
            rng = np.random.default_rng([seed, h, ALL_METRICS.index(metric)])
            state = _METRIC_SHAPES[metric](clock, traffic, h, rng)
            state.sid, state.metric = series_id(metric, {"host": host}), metric
            state.host, state.host_index = host, h
            states.append(state)

    outages = _outages(clock, host_names, days, np.random.default_rng([seed, 4_000]))
    offline = {host: np.zeros(n, bool) for host in host_names}
    for outage in outages:
        offline[outage["host"]] |= (clock.ts >= outage["start_ms"]) & (clock.ts <= outage["end_ms"])

    plan = _plan_anomaly_types(states, anomalies_per_series, np.random.default_rng([seed, 2_000]))
    labels: list[AnomalyLabel] = []
    for state, types in zip(states, plan, strict=True):
        rng = np.random.default_rng([seed, 3_000, *state.key])
        labels.extend(_inject_anomalies(state, clock, types, offline[state.host], rng))
    series = {}
    for state in states:
        spec = _METRICS[state.metric]
        keep = np.random.default_rng([seed, 5_000, *state.key]).random(n) >= missing_rate
        keep = (keep | state.labelled) & ~offline[state.host]  # labels are fully visible
        values = np.round(np.clip(state.values, 0.0, spec.upper), spec.decimals)
        series[state.sid] = SeriesData(
            state.metric, {"host": state.host}, clock.ts[keep], values[keep]
        )
    labels.sort(key=lambda lab: (lab.start_ms, lab.series))
    fill = _capacity_fill(clock, np.random.default_rng([seed, 6_000])) if capacity_fill else None
    if fill is not None:
        values, fill_params = fill
        sid = series_id("disk_used_percent", {"host": "db-01"})
        series[sid] = SeriesData("disk_used_percent", {"host": "db-01"}, clock.ts, values)
    gone = _gone_host(clock, metrics, hosts, seed, gone_before_end_min) if gone_host else None
    if gone is not None:
        gone_series, gone = gone
        series = {**series, **gone_series}
    params = {
        "generator": "vigil.lab.synthetic",
        "hosts": hosts,
        "metrics": list(metrics),
        "days": days,
        "step_s": step_s,
        "start_ms": start_ms,
        "seed": seed,
        "anomalies_per_series": anomalies_per_series,
        "missing_rate": missing_rate,
        "learning_days": LEARNING_DAYS,
        "series": {
            s.sid: {
                "metric": s.metric,
                "host": s.host,
                "unit": _METRICS[s.metric].unit,
                "seasonal": s.seasonal,
            }
            for s in sorted(states, key=lambda s: s.sid)
        },
        "outages": outages,
        "gone": gone,
    }
    if fill is not None:
        params["capacity_fill"] = fill_params
        params["series"][sid] = {"metric": "disk_used_percent", "host": "db-01",
                                 "unit": "percent", "seasonal": False}
    return Telemetry(series=dict(sorted(series.items())), labels=labels, params=params)


# --------------------------------------------------------------------------- normal shapes


@dataclass
class _Clock:
    """The time grid and the calendar features every shape is built from."""

    ts: np.ndarray  # int64 epoch ms
    step_ms: int

    def __post_init__(self) -> None:
        self.hour = (self.ts % DAY_MS) / HOUR_MS  # UTC hour of day, fractional
        self.day = self.ts // DAY_MS  # days since the epoch
        self.weekend = (self.day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        self.days_elapsed = (self.ts - self.ts[0]) / DAY_MS

    def steps(self, minutes: float) -> int:
        return max(1, round(minutes * MINUTE_MS / self.step_ms))


@dataclass
class _SeriesState:
    """One series while it is generated: the expected value, the noise, and the result."""

    clean: np.ndarray  # the value without noise (the seasonal / trend shape)
    noise: np.ndarray  # added noise, zero-centred (right-skewed for latency)
    sd: np.ndarray  # local standard deviation of the noise
    seasonal: bool
    sid: str = ""
    metric: str = ""
    host: str = ""
    host_index: int = 0
    breaks: np.ndarray | None = None  # indices of normal sudden changes (restarts, cleanups)

    def __post_init__(self) -> None:
        self.normal = self.clean + self.noise
        self.values = self.normal.copy()
        self.labelled = np.zeros(len(self.clean), bool)
        low, high = np.percentile(self.normal, [1, 99])
        self.span = float(high - low)  # the series' normal range, for visible magnitudes
        self.busy_level = float(np.percentile(self.clean, 70))

    @property
    def key(self) -> tuple[int, int]:
        """Seed material identifying the series (stable across fleet sizes and metric lists)."""
        return (self.host_index, ALL_METRICS.index(self.metric))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _host_traffic(clock: _Clock, rng: Generator) -> np.ndarray:
    """Business-hours activity in [0, 1]: a plateau of 10–12 h around 14:00 with ~1 h ramps.

    Periodic in the hour of day, so there is no step at midnight. Each host has its own
    centre and width; weekends keep only 30–60 % of the weekday activity (the switch at
    midnight moves the value by ~1 % of the daily amplitude, well under the noise).
    """
    centre, width = rng.uniform(13.5, 14.5), rng.uniform(10, 12)
    angle = 2 * np.pi * (clock.hour - centre) / 24
    # cos(angle) crosses cos(pi * width / 24) at centre ± width / 2: the half-way points.
    profile = _sigmoid(4.0 * (np.cos(angle) - np.cos(np.pi * width / 24)))
    return profile * np.where(clock.weekend, rng.uniform(0.3, 0.6), 1.0)


def _smooth_noise(rng: Generator, n: int, corr_steps: float) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over about ``corr_steps`` points."""
    width = max(1, int(4 * corr_steps))
    kernel = np.exp(-np.arange(width) / max(corr_steps, 1e-9))
    kernel /= np.sqrt(np.sum(kernel**2))
    return np.convolve(rng.standard_normal(n + width - 1), kernel, mode="valid")


def _gauge_noise(rng: Generator, clock: _Clock, sd: np.ndarray) -> np.ndarray:
    """Half white, half minutes-correlated noise with local deviation ``sd``."""
    corr = 5 * MINUTE_MS / clock.step_ms
    n = len(clock.ts)
    return sd * (0.6 * rng.standard_normal(n) + 0.8 * _smooth_noise(rng, n, corr))


def _cpu(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    clean = rng.uniform(8, 18) + rng.uniform(30, 50) * traffic
    sd = 0.8 + 0.04 * clean  # busier → noisier
    return _SeriesState(clean, _gauge_noise(rng, clock, sd), sd, seasonal=True)


def _load1(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    cores = [2, 4, 8][host % 3]
    clean = cores * (rng.uniform(0.05, 0.15) + rng.uniform(0.4, 0.7) * traffic)
    sd = 0.05 + 0.06 * clean
    return _SeriesState(clean, _gauge_noise(rng, clock, sd), sd, seasonal=True)


def _memory(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    """A slow leak reset by deploys every 2–5 days; odd hosts also cache with traffic."""
    seasonal = host % 2 == 1
    elapsed = clock.days_elapsed
    intervals = rng.uniform(2, 5, size=int(elapsed[-1] / 2) + 1)
    resets = np.concatenate(([0.0], np.cumsum(intervals))) - rng.uniform(0, 5)
    since_reset = elapsed - resets[np.searchsorted(resets, elapsed, side="right") - 1]
    clean = rng.uniform(35, 50) + rng.uniform(1.5, 3.5) * since_reset
    if seasonal:
        clean = clean + rng.uniform(8, 12) * traffic
    sd = np.full(len(clean), rng.uniform(0.3, 0.5))
    state = _SeriesState(clean, _gauge_noise(rng, clock, sd), sd, seasonal=seasonal)
    state.breaks = np.searchsorted(elapsed, resets[resets > 0])
    return state


def _disk(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    """Logs and data fill the disk linearly; a cleanup every ~2 weeks frees 3–8 %."""
    elapsed = clock.days_elapsed
    clean = rng.uniform(30, 55) + rng.uniform(0.2, 0.6) * elapsed
    cleanups = rng.uniform(0, elapsed[-1], size=rng.poisson(elapsed[-1] / 14))
    for when in cleanups:
        clean = clean - rng.uniform(3, 8) * (elapsed >= when)
    sd = np.full(len(clean), rng.uniform(0.01, 0.03))
    state = _SeriesState(clean, sd * rng.standard_normal(len(clean)), sd, seasonal=False)
    state.breaks = np.searchsorted(elapsed, cleanups)
    return state


def _capacity_fill(clock: _Clock, rng: Generator) -> tuple[np.ndarray, dict]:
    """A database's disk that fills: its usual slow growth, then, from 3.5 days before the end,
    a fill that would reach 100 % half a day before the end (it stays full then)."""
    elapsed = clock.days_elapsed
    start_day = max(elapsed[-1] - 3.5, 0.0)
    base = rng.uniform(35, 45) + 0.3 * elapsed
    level_at_start = float(np.interp(start_day, elapsed, base))
    rate_per_day = (100.0 - level_at_start) / 3.0
    clean = base + np.where(elapsed >= start_day, rate_per_day * (elapsed - start_day) - 0.3
                            * (elapsed - start_day), 0.0)
    values = np.round(np.clip(clean + 0.05 * rng.standard_normal(len(clean)), 0, 100), 3)
    start_ms = int(clock.ts[0] + start_day * DAY_MS)
    full_ms = int(clock.ts[0] + (start_day + 3.0) * DAY_MS)
    return values, {"series": series_id("disk_used_percent", {"host": "db-01"}),
                    "start_ms": start_ms, "full_ms": full_ms, "limit": 100.0}


def _network(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    clean = rng.uniform(2e5, 1e6) + rng.uniform(5e6, 2e7) * traffic
    sigma = rng.uniform(0.05, 0.08)
    bursts = _smooth_noise(rng, len(clean), 3 * MINUTE_MS / clock.step_ms)
    noise = clean * (np.exp(sigma * bursts - sigma**2 / 2) - 1)  # right-skewed, mean 0
    return _SeriesState(clean, noise, sigma * clean, seasonal=True)


def _latency(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    """p95 latency: rises with load, log-normal (right-skewed) noise around the median."""
    clean = rng.uniform(40, 120) * (1 + rng.uniform(0.4, 0.8) * traffic)
    sigma = rng.uniform(0.06, 0.1)
    noise = clean * (np.exp(sigma * rng.standard_normal(len(clean))) - 1)
    return _SeriesState(clean, noise, sigma * clean, seasonal=True)


def _errors(clock: _Clock, traffic: np.ndarray, host: int, rng: Generator) -> _SeriesState:
    """5xx per second from Poisson counts per step; at least ~1 error a minute at night."""
    step_s = clock.step_ms / 1000
    rate = rng.uniform(0.03, 0.06) * (1 + rng.uniform(1.0, 2.0) * traffic)
    noise = rng.poisson(rate * step_s) / step_s - rate
    return _SeriesState(rate, noise, np.sqrt(rate / step_s), seasonal=True)


_Shape = Callable[[_Clock, np.ndarray, int, Generator], _SeriesState]
_METRIC_SHAPES: dict[str, _Shape] = {
    "cpu_usage_percent": _cpu,
    "load1": _load1,
    "memory_used_percent": _memory,
    "disk_used_percent": _disk,
    "network_rx_bytes": _network,
    "http_latency_ms": _latency,
    "http_error_rate": _errors,
}


# --------------------------------------------------------------------------- anomalies


def _allowed_types(state: _SeriesState) -> list[str]:
    types = _METRICS[state.metric].anomaly_types
    return [t for t in types if t != "night_peak" or state.seasonal]


def _plan_anomaly_types(
    states: list[_SeriesState], per_series: float, rng: Generator
) -> list[list[str]]:
    """Which anomaly types each series gets; every type appears once if there are slots."""
    counts = [int(per_series) + int(rng.random() < per_series % 1) for _ in states]
    slots = [i for i, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(slots)
    plan: list[list[str]] = [[] for _ in states]
    free = list(slots)
    for anomaly_type in rng.permutation(list(LABEL_TYPES)).tolist():
        fits = [k for k, i in enumerate(free) if anomaly_type in _allowed_types(states[i])]
        if fits:
            plan[free.pop(fits[0])].append(anomaly_type)
    for i in free:
        plan[i].append(str(rng.choice(_allowed_types(states[i]))))
    return plan


def _inject_anomalies(
    state: _SeriesState, clock: _Clock, types: list[str], offline: np.ndarray, rng: Generator
) -> list[AnomalyLabel]:
    """Place each anomaly at a random free time after the learning week, and apply it.

    Free means: clear of other anomalies, of the host's outages (``offline``) and of normal
    sudden changes (restarts, cleanups), so each label shows exactly one thing.
    """
    n = len(clock.ts)
    first = int(np.searchsorted(clock.ts, clock.ts[0] + LEARNING_DAYS * DAY_MS))
    last = n - clock.steps(120)  # leave room to see the series come back
    gap = clock.steps(GAP_BETWEEN_ANOMALIES_MS / MINUTE_MS)
    taken = np.zeros(n, bool)  # labelled points plus the gap around them
    breaks = np.flatnonzero(np.diff(offline.astype(np.int8)))
    if state.breaks is not None:
        breaks = np.concatenate([breaks, state.breaks])
    for b in breaks:
        taken[max(0, b - clock.steps(60)) : b + clock.steps(60)] = True
    labels = []
    for anomaly_type in types:
        for _ in range(200):  # random tries; an anomaly that finds no room is left out
            length = _anomaly_length(anomaly_type, clock, rng)
            start = _propose_start(anomaly_type, state, clock, first, last - length, length, rng)
            if start is None or taken[max(0, start - gap) : start + length + gap].any():
                continue
            window = slice(start, start + length)
            values = _ANOMALY_SHAPES[anomaly_type](state, clock, window, rng)
            if values is None:
                continue
            state.values[window] = values
            state.labelled[window] = True
            taken[max(0, start - gap) : start + length + gap] = True
            end_ms = int(clock.ts[start + length - 1])
            kind = LABEL_TYPES[anomaly_type]
            labels.append(AnomalyLabel(state.sid, int(clock.ts[start]), end_ms, kind, anomaly_type))
            break
    return labels


def _anomaly_length(anomaly_type: str, clock: _Clock, rng: Generator) -> int:
    if anomaly_type in ("spike", "dip"):
        return int(rng.integers(1, 4))
    low, high = _DURATION_MIN[anomaly_type]
    return clock.steps(rng.uniform(low, high))


def _propose_start(
    anomaly_type: str,
    state: _SeriesState,
    clock: _Clock,
    first: int,
    last: int,
    length: int,
    rng: Generator,
) -> int | None:
    """A random start index where this type of anomaly makes sense, or None."""
    if last <= first:
        return None
    if anomaly_type != "night_peak":
        start = int(rng.integers(first, last))
        # A dip is only visible when there is something to drop from: busy hours.
        if anomaly_type == "dip" and state.clean[start] < state.busy_level:
            return None
        return start
    day = rng.integers(clock.day[first], clock.day[last - 1] + 1)
    latest_hour = NIGHT_HOURS[1] - length * clock.step_ms / HOUR_MS
    hour = rng.uniform(NIGHT_HOURS[0], max(NIGHT_HOURS[0], latest_hour))
    start = int(np.searchsorted(clock.ts, day * DAY_MS + int(hour * HOUR_MS)))
    return start if first <= start < last else None


def _spike(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """Well above both the local noise and the highest normal value within ±12 h."""
    day = slice(max(0, w.start - clock.steps(720)), w.stop + clock.steps(720))
    sd = state.sd[w]
    # Clear of the day's noisiest hour too, not just of the (maybe quiet) moment of the spike.
    margin = max(rng.uniform(4, 6) * state.sd[day].max(), rng.uniform(0.1, 0.2) * state.span)
    target = np.maximum(state.normal[w] + rng.uniform(6, 10) * sd, state.normal[day].max() + margin)
    values = target + np.abs(state.noise[w])  # steps of a spike differ, none falls short
    upper = _METRICS[state.metric].upper
    if values.max() > upper:  # a percent metric cannot spike above 100: only if it still shows
        values = np.minimum(values, upper - rng.uniform(0, 1, len(values)))
        if values.min() < state.normal[day].max() + 3 * sd.max():
            return None
    return values


def _dip(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """Drop to 10–40 % of the busy-hour level, or to 0 (a process restarting, a lost upstream)."""
    level = state.normal[w]
    drop = np.maximum(rng.uniform(6, 10) * state.sd[w], rng.uniform(0.6, 0.9) * level)
    return np.maximum(level - drop, 0.0)


def _oscillation(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """Fast swings (4–12 min period) around the normal level: flapping, retry storms."""
    sd, clean = state.sd[w].mean(), state.clean[w]
    amplitude = max(rng.uniform(5, 8) * sd, rng.uniform(0.1, 0.15) * state.span)
    # Keep the swing inside [0, upper] so the mean stays at the normal level.
    room = min(clean.min(), _METRICS[state.metric].upper - clean.max())
    amplitude = min(amplitude, 0.8 * room)
    if amplitude < 4 * sd:
        return None
    period = clock.steps(rng.uniform(4, 12))
    phase = np.arange(w.stop - w.start) * 2 * np.pi / max(period, 3)
    return state.normal[w] + amplitude * np.sin(phase + rng.uniform(0, 2 * np.pi))


def _level_shift(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """The level moves for hours (a bad deploy, a failover), then comes back."""
    spec, normal = _METRICS[state.metric], state.normal[w]
    if spec.multiplicative:
        # Latency and errors only get worse; traffic can also halve (a lost upstream).
        if state.metric == "http_error_rate":  # fresh Poisson counts at 5–8× the rate
            step_s = clock.step_ms / 1000
            return rng.poisson(state.clean[w] * rng.uniform(5, 8) * step_s) / step_s
        if state.metric == "http_latency_ms" or rng.random() < 0.5:
            factor = rng.uniform(1.8, 2.5)
        else:
            factor = rng.uniform(0.35, 0.55)
        return normal * factor
    delta = max(rng.uniform(5, 8) * state.sd[w].mean(), rng.uniform(0.25, 0.4) * state.span)
    up_fits = normal.max() + delta + 3 * state.sd[w].max() < spec.upper
    down_fits = normal.min() - delta > 3 * state.sd[w].max()
    # Filling disks and leaking memory go up; cpu and load either way.
    if up_fits and (state.metric.endswith("used_percent") or rng.random() < 0.5 or not down_fits):
        return normal + delta
    return normal - delta if down_fits else None


def _flatline(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """The last value repeated: a hung exporter or a stuck counter."""
    return np.full(w.stop - w.start, state.normal[w.start - 1])


def _variance_change(
    state: _SeriesState, clock: _Clock, w: slice, rng: Generator
) -> np.ndarray | None:
    """Same level, noise ×4–×8: contention, a flapping dependency.

    Rates get it in log space (their noise is multiplicative), so they stay positive.
    """
    factor = rng.uniform(4, 8)
    if _METRICS[state.metric].multiplicative:
        return state.clean[w] * (1 + state.noise[w] / state.clean[w]) ** factor
    values = state.clean[w] + state.noise[w] * factor
    return values if (values >= 0).mean() > 0.95 else None  # heavy clipping would move the mean


def _night_peak(state: _SeriesState, clock: _Clock, w: slice, rng: Generator) -> np.ndarray | None:
    """Busy-hour values at night: the shape of the last weekday's 13:30, with its noise level.

    Normal at 14:00, anomalous at 03:00 — only a detector that knows the time of day sees it.
    """
    day = clock.day[w.start] - 1
    while (day + 3) % 7 >= 5:  # the last weekday before this night
        day -= 1
    ref = int(np.searchsorted(clock.ts, day * DAY_MS + int(13.5 * HOUR_MS)))
    length = w.stop - w.start
    if clock.ts[ref] >= clock.ts[w.start] - 6 * HOUR_MS:  # no weekday afternoon in the data
        return None
    peak = slice(ref, ref + length)
    return state.clean[peak] + state.noise[w] * (state.sd[peak] / state.sd[w])


_ANOMALY_SHAPES: dict[str, Callable[..., np.ndarray | None]] = {
    "spike": _spike,
    "dip": _dip,
    "oscillation": _oscillation,
    "level_shift": _level_shift,
    "flatline": _flatline,
    "variance_change": _variance_change,
    "night_peak": _night_peak,
}


# --------------------------------------------------------------------------- gaps



def _gone_host(
    clock: _Clock, metrics: Sequence[str], index: int, seed: int, before_end_min: float
) -> tuple[dict[str, SeriesData], dict[str, Any]] | None:
    """The series of a host that stops reporting for good ``before_end_min`` before the end."""
    stop = len(clock.ts) - clock.steps(before_end_min)  # last point: that long before the end
    if stop < 1:
        return None
    traffic = _host_traffic(clock, np.random.default_rng([seed, index, 1_000]))
    out = {}
    for metric in metrics:
        rng = np.random.default_rng([seed, index, ALL_METRICS.index(metric)])
        state = _METRIC_SHAPES[metric](clock, traffic, index, rng)
        spec = _METRICS[metric]
        values = np.round(np.clip(state.values[:stop], 0.0, spec.upper), spec.decimals)
        sid = series_id(metric, {"host": GONE_HOST})
        out[sid] = SeriesData(metric, {"host": GONE_HOST}, clock.ts[:stop], values)
    last_ms = int(clock.ts[stop - 1])
    return out, {"host": GONE_HOST, "last_ms": last_ms, "series": sorted(out)}


def _outages(
    clock: _Clock, host_names: list[str], days: float, rng: Generator
) -> list[dict[str, Any]]:
    """About two 5–30 min host outages a month; each silences all of a host's series."""
    outages = []
    for _ in range(round(2 * days / 30)):
        host = host_names[int(rng.integers(len(host_names)))]
        length = clock.steps(rng.uniform(5, 30))
        start = int(rng.integers(0, max(1, len(clock.ts) - length)))
        end = min(start + length, len(clock.ts)) - 1
        outages.append(
            {"host": host, "start_ms": int(clock.ts[start]), "end_ms": int(clock.ts[end])}
        )
    return sorted(outages, key=lambda o: o["start_ms"])
