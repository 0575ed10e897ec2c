"""The worker's capacity forecasts: ``forecast`` events from the series' trends.

After each batch, :class:`ForecastWatch` reads the trend fit of every series that had a step
and has a limit (``VIGIL_FORECAST_LIMITS``, see :class:`~vigil.detectors.forecast.ForecastLimits`),
forecasts the time to the limit (:func:`~vigil.detectors.forecast.forecast`) and turns the
warnings' transitions (:func:`~vigil.detectors.forecast.decide`) into
:class:`~vigil.events.AnomalyEvent` records of ``anomaly_type`` ``forecast``, with the
forecast itself in the event's ``forecast`` field. The open warning is kept in the series'
state record, so it is saved (and survives a restart) with the rest of the state.
docs/forecasts.md describes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from vigil.detectors.bank import StateBank
from vigil.detectors.forecast import Forecast, ForecastLimits, decide, forecast
from vigil.detectors.online import DetectorParams, OnlineDetector, StepResults
from vigil.detectors.resample import Steps, resample_batch
from vigil.events import AnomalyEvent, stable_id
from vigil.series import parse_series
from vigil.sinks.alerts import forecast_sentence
from vigil.times import iso

__all__ = ["ForecastWatch", "forecast_record"]

_KINDS = ("", "open", "update", "resolve")
#: A batch that brings more than this much data time (a replay, a backfill, a worker catching
#: up) is detected window by window, forecasting after each, as live batches would.
WINDOW_MS = 15 * 60_000
_SEVERITIES = ("none", "warning", "critical")


def _hours(x: float) -> float | None:
    return round(float(x), 3) if math.isfinite(x) else None


def _eta(origin_ms: int, hours: float) -> int | None:
    return int(origin_ms + hours * 3_600_000) if math.isfinite(hours) else None


def forecast_record(f: Forecast, k: int, horizon_h: float) -> dict:
    """The ``forecast`` field of an event for series ``k`` of ``f`` (JSON-ready: an unbounded
    time is null)."""
    origin = int(f.now_ms[k])
    return {
        "limit": None if not math.isfinite(f.limit[k]) else float(f.limit[k]),
        "side": {1: "upper", -1: "lower"}.get(int(f.side[k]), ""),
        "rate_per_h": round(float(f.rate_per_h[k]), 6),
        "level": round(float(f.level[k]), 6),
        "origin_ms": origin,
        "hours": _hours(f.hours[k]),
        "hours_low": _hours(f.hours_low[k]),
        "hours_high": _hours(f.hours_high[k]),
        "eta_ms": _eta(origin, f.hours[k]),
        "eta_low_ms": _eta(origin, f.hours_low[k]),
        "eta_high_ms": _eta(origin, f.hours_high[k]),
        "horizon_h": float(horizon_h),
    }


class ForecastWatch:
    """Forecast warnings for the series with a limit (the worker's part of the forecasts).

    Parameters
    ----------
    limits
        ``{glob on the metric name: limit}`` (``VIGIL_FORECAST_LIMITS``).
    warning_h, critical_h
        Horizons in hours: a warning opens when the lower bound of the time to the limit is
        under ``warning_h``, critical under ``critical_h``.
    params
        The detector's parameters (``forecast_min_days``, ``forecast_halflife_s``).
    """

    def __init__(self, limits: Mapping[str, str], warning_h: float = 24.0,
                 critical_h: float = 4.0, params: DetectorParams | None = None,
                 max_cached_series: int = 500_000) -> None:
        self.limits = ForecastLimits(limits)
        self.warning_h = float(warning_h)
        self.critical_h = float(critical_h)
        p = params or DetectorParams()
        self.min_steps = p.forecast_min_days * 86_400 / p.step_s
        # One half-life of steps: the fit's weight after a restart must reach half of its
        # steady state 1 / (1 − decay) before it is trusted.
        self.min_fit_weight = 0.5 / (1.0 - 0.5 ** (p.step_s / p.forecast_halflife_s))
        self.max_cached_series = max_cached_series
        self._parsed: dict[str, tuple[str, dict, float, float, bool] | None] = {}

    def _series(self, series: str) -> tuple[str, dict, float, float, bool] | None:
        """The name, labels and limits (low, high: NaN none; whether a single one) of
        ``series`` if a rule covers it, else None; cached, so a rule is matched once."""
        if series not in self._parsed:
            if len(self._parsed) >= self.max_cached_series:
                self._parsed.clear()
            name, labels = parse_series(series)
            rule = self.limits.rule(name)
            found = None
            if rule is not None:
                low, high = rule.limits(labels)
                if low is not None or high is not None:
                    found = (name, labels, math.nan if low is None else low,
                             math.nan if high is None else high, rule.single)
            self._parsed[series] = found
        return self._parsed[series]

    def process(self, detector: OnlineDetector, bank: StateBank, touched: list[str], index,
                ts_ms, values, direction=None, context=None
                ) -> tuple[StepResults, list[AnomalyEvent]]:
        """:meth:`OnlineDetector.process` on a batch, with the forecast events: the batch's
        steps are scored window by window (:data:`WINDOW_MS` of data time; one window
        live), forecasting after each. The detector's results do not depend on how its
        steps are batched: they are the same as one call's."""
        p = detector.params
        steps = resample_batch(bank, np.asarray(index), np.asarray(ts_ms), np.asarray(values),
                               p.step_ms, p.max_fill_steps)
        window = steps.ts_ms // WINDOW_MS
        if not len(steps) or window.min() == window.max():
            results = detector.process_steps(bank, steps, direction)
            return results, self.events(bank, touched, results, context)
        events: list[AnomalyEvent] = []
        parts = []
        for w in np.unique(window):
            at = np.flatnonzero(window == w)  # still ordered by series, then time
            part = Steps(steps.index[at], steps.ts_ms[at], steps.value[at], steps.filled[at],
                         steps.after_gap[at])
            results = detector.process_steps(bank, part, direction)
            events += self.events(bank, touched, results, context)
            parts.append((at, results))
        return _merge(steps, parts), events

    def events(self, bank: StateBank, touched: list[str], results: StepResults,
               context=None) -> list[AnomalyEvent]:
        """The forecast events of a batch whose steps ``results`` updated ``bank`` (rows as
        ``touched``); updates the warnings kept in ``bank``. ``context(series, results, i)``
        gives an event's chart data (optional)."""
        index = results.steps.index
        if not len(index) or not self.limits.rules:
            return []
        # Each stepped series' last step of the batch (steps are ordered by series, then time).
        last = np.flatnonzero(np.r_[index[1:] != index[:-1], True])
        rows, steps, names = [], [], []
        for i in last:
            parsed = self._series(touched[index[i]])
            if parsed is not None:
                rows.append(int(index[i]))
                steps.append(int(i))
                names.append(parsed)
        if not rows:
            return []
        values = results.steps.value[steps]
        low = np.array([p[2] for p in names])
        high = np.array([p[3] for p in names])
        # A single limit is an upper one below it and a lower one above it.
        above = np.array([p[4] for p in names]) & (values > high)
        low, high = np.where(above, high, low), np.where(above, np.nan, high)
        records = bank.records[rows]
        f = forecast(records, low, high, self.min_steps, self.min_fit_weight,
                     now_ms=results.steps.ts_ms[steps])
        severity, event = decide(records["forecast_severity"], f, self.warning_h,
                                 self.critical_h)
        out = []
        for k in np.flatnonzero(event):
            row = rows[k]
            record = bank.records[row]
            kind = _KINDS[event[k]]
            ts = int(f.now_ms[k])
            if kind == "open":
                record["forecast_start_ms"] = ts
            start = int(record["forecast_start_ms"])
            # A resolve reports the severity the warning had.
            level = _SEVERITIES[int(records["forecast_severity"][k] if kind == "resolve"
                                    else severity[k])]
            horizon = self.critical_h if severity[k] == 2 else self.warning_h
            # A resolve whose trend no longer heads anywhere names the limit it was warned of.
            fallback = high[k] if np.isfinite(high[k]) else low[k]
            out.append(self._event(touched[row], names[k], kind, level, start, ts,
                                   float(values[k]), f, k, horizon, fallback,
                                   None if context is None or kind == "resolve"
                                   else context(touched[row], results, steps[k])))
        bank.records["forecast_severity"][rows] = severity
        closed = [rows[k] for k in np.flatnonzero(severity == 0)]
        bank.records["forecast_start_ms"][closed] = -1
        return out

    def _event(self, series: str, parsed: tuple, kind: str, severity: str,
               start: int, ts: int, value: float, f: Forecast, k: int, horizon: float,
               fallback_limit: float, context: dict | None) -> AnomalyEvent:
        name, labels = parsed[0], parsed[1]
        record = forecast_record(f, k, horizon)
        if record["limit"] is None and np.isfinite(fallback_limit):
            record["limit"] = float(fallback_limit)
        level = float(f.level[k])
        low = self.warning_h
        return AnomalyEvent(
            event_id=stable_id(series, "forecast", start, kind, ts),
            incident_id=stable_id(series, "forecast", start),
            kind=kind,
            series=series,
            name=name,
            labels=labels,
            ts=iso(ts),
            ts_ms=ts,
            value=value,
            expected=level,
            lower=level,
            upper=level,
            score=round(float(np.clip(1.0 - f.hours_low[k] / (2.0 * low), 0.0, 1.0)), 6),
            severity=severity,
            anomaly_type="forecast",
            detectors=["forecast"],
            reason=forecast_sentence(name, labels, record, resolved=kind == "resolve"),
            context=context,
            forecast=record,
        )


def _merge(steps: Steps, parts: list[tuple[np.ndarray, StepResults]]) -> StepResults:
    """One batch's results from its windows' (``at``: the windows' positions in ``steps``)."""
    merged = {}
    for field in dataclasses.fields(StepResults):
        if field.name == "steps":
            continue
        first = getattr(parts[0][1], field.name)
        column = np.empty(len(steps), first.dtype)
        for at, results in parts:
            column[at] = getattr(results, field.name)
        merged[field.name] = column
    return StepResults(steps=steps, **merged)
