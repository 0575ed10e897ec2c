"""Capacity forecasts (issue 20): the forecast maths on generated series, the limits'
configuration, and a fill through a real worker that yields a ``forecast`` event."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.detectors.forecast import ForecastLimits, LimitRule, follow
from vigil.detectors.online import DetectorParams

T0 = 1_700_438_400_000  # Monday 2023-11-20 00:00 UTC
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_STEPS = 1440


def _fill(days_to_full: float, noise: float, base: float, seed: int) -> tuple[np.ndarray, ...]:
    """A disk filling linearly from ``base`` % to 100 % in ``days_to_full`` days (then full),
    with Gaussian noise; one point a minute."""
    n = int((days_to_full + 0.25) * DAY_STEPS)
    i = np.arange(n)
    rate = (100.0 - base) / (days_to_full * DAY_STEPS)
    noisy = base + rate * i + noise * np.random.default_rng(seed).standard_normal(n)
    return T0 + MINUTE_MS * i, np.minimum(noisy, 100.0), T0 + days_to_full * 86_400_000


FILLS = [(days, noise, base) for days in (4.0, 5.0, 7.0) for noise in (0.1, 0.5, 1.0, 2.0)
         for base in (20.0, 50.0)]


def test_linear_fills_warn_inside_the_horizon_with_the_true_time_in_the_band():
    inside = 0
    for seed, (days, noise, base) in enumerate(FILLS):
        ts, values, full_ms = _fill(days, noise, base, seed)
        transitions = follow(ts, values, np.nan, 100.0)
        assert transitions, f"no warning for a fill over {days} days, noise {noise}"
        first = transitions[0]
        true_h = (full_ms - first.ts_ms) / HOUR_MS
        assert first.event == 1 and first.severity == 1
        # It warns inside the horizon (24 h), and long before the disk is full.
        assert 19.2 <= true_h <= 24.0 + 2.0, (days, noise, base, true_h)
        inside += first.hours_low <= true_h <= first.hours_high
        # ... and it is critical before the limit, within the critical horizon (4 h).
        critical = [t for t in transitions if t.severity == 2]
        assert critical and 0 < (full_ms - critical[0].ts_ms) / HOUR_MS <= 4.0 + 1.0
    assert inside >= 0.9 * len(FILLS), f"the true time in the band {inside}/{len(FILLS)}"


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_a_daily_sawtooth_peaking_at_90_never_warns(noise: float):
    # Up from 40 % to 90 % every day, then back (a nightly rotation): no climb to 100 %.
    i = np.arange(10 * DAY_STEPS)
    values = 40.0 + 50.0 * (i % DAY_STEPS) / DAY_STEPS
    values += noise * np.random.default_rng(3).standard_normal(len(i))
    assert follow(T0 + MINUTE_MS * i, values, 0.0, 100.0) == []


def test_a_cleanup_resolves_the_warning():
    ts, values, full_ms = _fill(5.0, 0.5, 20.0, 11)
    cleanup = int(4.25 * DAY_STEPS)  # 18 h before the disk would be full
    values = values.copy()
    values[cleanup:] = 30.0 + 0.5 * np.random.default_rng(12).standard_normal(
        len(values) - cleanup)
    transitions = follow(ts, values, np.nan, 100.0)
    assert [t.event for t in transitions] == [1, 3]  # opened, then resolved: nothing more
    resolved_after_h = (transitions[1].ts_ms - ts[cleanup]) / HOUR_MS
    assert 0 <= resolved_after_h <= 2.0


def test_a_young_series_is_not_forecast():
    # Filling fast from the start: nothing until the series is forecast_min_days old.
    ts, values, _ = _fill(3.0, 0.5, 60.0, 5)
    first = follow(ts, values, np.nan, 100.0)[0]
    age_days = (first.ts_ms - ts[0]) / 86_400_000
    assert age_days >= DetectorParams().forecast_min_days


def test_the_generator_adds_a_filling_disk_on_db_01():
    from vigil.lab.synthetic import generate_telemetry

    t = generate_telemetry(hosts=1, metrics=["cpu_usage_percent"], days=10, start_ms=T0,
                           capacity_fill=True)
    fill = t.params["capacity_fill"]
    disk = t.series[fill["series"]]
    assert fill["series"] == 'disk_used_percent{host="db-01"}' and len(t.series) == 2
    assert (fill["full_ms"] - fill["start_ms"]) / 86_400_000 == pytest.approx(3.0)
    before = disk.values[disk.ts_ms < fill["start_ms"]]
    assert before.max() < 50 and disk.values[disk.ts_ms >= fill["full_ms"]].min() >= 99.5
    assert generate_telemetry(hosts=1, metrics=["cpu_usage_percent"], days=10,
                              start_ms=T0).params.get("capacity_fill") is None


def test_limits_come_from_the_first_matching_rule():
    limits = ForecastLimits({"disk_used_percent*": "100", "memory_used_bytes": "label mem_total",
                             "*_percent": "0/100", "disk_free_bytes": "0"})
    assert limits.limits("disk_used_percent", {}, 40.0)[1] == 100.0
    assert limits.limits("memory_used_bytes", {"mem_total": "8e9"}, 1e9)[1] == 8e9
    assert np.isnan(limits.limits("memory_used_bytes", {}, 1e9)).all()  # no label: no limit
    assert limits.limits("cpu_idle_percent", {}, 40.0) == (0.0, 100.0)
    low, high = limits.limits("disk_free_bytes", {}, 5e9)  # above a single limit: a lower one
    assert low == 0.0 and np.isnan(high)
    assert np.isnan(limits.limits("cpu_seconds", {}, 1.0)).all()
    for bad in ("lots", "100/0", "label ", "1/2/3"):
        with pytest.raises(ValueError):
            LimitRule.parse(bad)


@pytest.mark.integration
def test_a_filling_disk_yields_a_forecast_event_through_a_worker(stack):
    import time
    from copy import copy

    import orjson

    from tests.conftest import wait_until
    from vigil.devtools.embedded import TopicCollector
    from vigil.devtools.replay import replay
    from vigil.lab.synthetic import generate_telemetry

    start = time.time_ns() // 1_000_000 - 8 * 86_400_000
    start -= start % MINUTE_MS
    # web-01's disk grows slowly; db-01's fills over 3 days to 100 % half a day before the end.
    telemetry = generate_telemetry(hosts=1, metrics=["disk_used_percent"], days=8, seed=3,
                                   start_ms=start, capacity_fill=True)
    fill = telemetry.params["capacity_fill"]
    # The history at full speed, the last 36 h before the disk is full at an hour of data a
    # second: the worker then forecasts every few minutes of data (once per batch), as live.
    cut = fill["full_ms"] - 36 * HOUR_MS
    parts = []
    for keep in (lambda ts: ts < cut, lambda ts: ts >= cut):
        part = copy(telemetry)
        part.series = {sid: type(s)(s.name, s.labels, s.ts_ms[keep(s.ts_ms)],
                                    s.values[keep(s.ts_ms)])
                       for sid, s in telemetry.series.items()}
        parts.append(part)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    worker = stack.start_worker()
    try:
        sent = replay(parts[0], stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        sent += replay(parts[1], stack.broker, stack.input_topic, batch=2, speed=3600.0)
        stack.wait_processed(sent, worker)

        def forecasts() -> list[dict]:
            events = [orjson.loads(v) for v in collector.values(stack.anomalies_topic)]
            return [e for e in events if e["anomaly_type"] == "forecast"]

        wait_until(lambda: len(forecasts()) >= 2, 60, "the forecast's open and escalation")
        time.sleep(1)
        events = forecasts()
    finally:
        collector.close()
    assert {e["series"] for e in events} == {fill["series"]}  # web-01's disk: no warning
    opened, escalated = events[0], events[1]
    assert [e["kind"] for e in events] == ["open", "update"]  # full: it stays open
    assert (opened["severity"], escalated["severity"]) == ("warning", "critical")
    assert opened["incident_id"] == escalated["incident_id"]
    f = opened["forecast"]
    true_h = (fill["full_ms"] - opened["ts_ms"]) / HOUR_MS
    assert f["limit"] == 100.0 and f["side"] == "upper" and f["hours_low"] < 24.0
    assert 19.2 <= true_h <= 26.0 and abs(f["hours"] - true_h) <= 0.1 * true_h
    assert 0 < (fill["full_ms"] - escalated["ts_ms"]) / HOUR_MS <= 5.0
    assert f["rate_per_h"] > 0 and opened["detectors"] == ["forecast"]
    assert "db-01 will reach 100 % in about" in opened["reason"]
    assert opened["context"]["ts_ms"][-1] == opened["ts_ms"]  # the chart's recent steps


def test_the_worker_side_reads_a_label_limit_and_keeps_the_warning_in_the_state():
    from vigil.detectors.bank import StateBank
    from vigil.detectors.online import OnlineDetector
    from vigil.streams.forecasts import ForecastWatch

    watch = ForecastWatch({"memory_used_bytes": "label mem_total", "*_percent": "100"})
    touched = ['memory_used_bytes{host="a",mem_total="8000"}', 'cpu_seconds{host="a"}']
    detector, bank = OnlineDetector(), StateBank.empty(2)
    n = 5 * DAY_STEPS
    memory = 2000.0 + 6000.0 * np.arange(n) / n + np.random.default_rng(1).normal(0, 5, n)
    events = []
    for lo in range(0, n, 15):
        ts = T0 + MINUTE_MS * np.arange(lo, min(lo + 15, n))
        results = detector.process(bank, np.repeat([0, 1], len(ts)), np.r_[ts, ts],
                                   np.r_[memory[lo:lo + 15], np.full(len(ts), 3.0)])
        events += watch.events(bank, touched, results)
    assert [(e.kind, e.severity) for e in events] == [("open", "warning"), ("update", "critical")]
    opened = events[0]
    assert opened.series == touched[0] and opened.forecast["limit"] == 8000.0
    assert "memory_used_bytes on a will reach 8000 in about" in opened.reason
    assert bank["forecast_severity"].tolist() == [2, 0]
    assert bank["forecast_start_ms"][0] == opened.ts_ms and bank["forecast_start_ms"][1] == -1


def test_an_alert_says_when_the_limit_is_reached():
    from vigil.events import AnomalyEvent
    from vigil.sinks.alerts import IncidentAlert, Notification

    forecast = {"limit": 100.0, "side": "upper", "rate_per_h": 2.1, "hours": 5.2,
                "hours_low": 4.1, "hours_high": 7.4, "horizon_h": 24.0}
    event = AnomalyEvent(
        event_id="e", incident_id="i", kind="open", series='disk_used_percent{host="db-01"}',
        name="disk_used_percent", labels={"host": "db-01"}, ts="2026-12-05T08:00:00Z",
        ts_ms=0, value=89.0, expected=89.1, lower=89.1, upper=89.1, score=0.9,
        severity="warning", anomaly_type="forecast", detectors=["forecast"],
        reason="disk_used_percent on db-01 will reach 100 % in about 5 h (between 4 h and 7 h)"
               " at +2.1 %/h", forecast=forecast)
    message = Notification("oncall", "firing", ("db-01",), [IncidentAlert(event)])
    assert message.subject() == "[vigil] WARNING db-01: disk_used_percent (forecast)"
    text = message.text()
    assert "will reach 100 % in about 5 h (between 4 h and 7 h) at +2.1 %/h" in text
    assert "expected" not in text  # a forecast has no expected band to tell


def test_a_forecast_chart_runs_on_to_the_limit():
    from datetime import datetime, timezone

    from matplotlib.dates import date2num

    from vigil.sinks.charts import chart_figure, render_chart

    ts = [MINUTE_MS * k for k in range(120)]
    context = {"ts_ms": ts, "value": [80.0 + k / 120 for k in range(120)],
               "expected": [80.0] * 120, "lower": [79.0] * 120, "upper": [82.0] * 120,
               "z": [0.0] * 120}
    end = ts[-1]
    forecast = {"limit": 100.0, "level": 81.0, "origin_ms": end, "eta_ms": end + 20 * HOUR_MS,
                "eta_low_ms": end + 10 * HOUR_MS, "eta_high_ms": end + 40 * HOUR_MS}
    plain = chart_figure(context, "disk").axes[0]
    ax = chart_figure(context, "disk", forecast=forecast).axes[0]

    def x(ms):
        return date2num(datetime.fromtimestamp(ms / 1000, timezone.utc))

    # Without a forecast the chart ends at the last step; with one it reaches the band's end,
    # the forecast line ends at the limit, and the limit is drawn across.
    assert plain.get_xlim()[1] < x(end + HOUR_MS) and ax.get_xlim()[1] >= x(end + 40 * HOUR_MS)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["forecast"].get_ydata()) == [81.0, 100.0]
    assert list(lines["limit"].get_ydata()) == [100.0, 100.0]
    assert "forecast" not in {line.get_label() for line in plain.get_lines()}
    png = render_chart(context, "disk", forecast=forecast)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != render_chart(context, "disk")
