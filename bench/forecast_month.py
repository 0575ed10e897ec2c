"""Capacity forecasts (issue 20): how early the warnings come, and how many are false.

1. Generated fills — disks filling linearly from their start to 100 % over 4–8 days at
   several noise levels: the warning's lead time (the true time left to the limit when the
   warning opened) as a fraction of the 24 h horizon (target ≥ 0.8), mean and worst.
2. The demo's month (``vigil demo``: 3 hosts, seed 7, with db-01's filling disk): every
   series the default limits cover (``*_percent``: 0/100) run through the detector in
   15-minute batches, as the worker does; warnings on any series but db-01's disk are false
   (target 0); db-01's lead time.

    python -m bench.forecast_month
"""

from __future__ import annotations

import time

import numpy as np

from vigil.detectors.forecast import ForecastLimits, follow
from vigil.lab.synthetic import generate_telemetry
from vigil.streams.settings import Settings

T0 = 1_700_438_400_000  # Monday 2023-11-20 00:00 UTC
HORIZON_H = 24.0


def fills() -> list[float]:
    """Lead times (fractions of the horizon) of the generated fills."""
    leads = []
    for seed, (days, noise) in enumerate((d, n) for d in (4.0, 5.0, 6.0, 8.0)
                                         for n in (0.1, 0.5, 1.0, 2.0)):
        n = int((days + 0.25) * 1440)
        i = np.arange(n)
        rng = np.random.default_rng(seed)
        values = np.minimum(30.0 + 70.0 * i / (days * 1440) + noise * rng.standard_normal(n),
                            100.0)
        transitions = follow(T0 + 60_000 * i, values, np.nan, 100.0)
        full_ms = T0 + days * 86_400_000
        lead_h = (full_ms - transitions[0].ts_ms) / 3_600_000 if transitions else 0.0
        leads.append(lead_h / HORIZON_H)
    return leads


def demo_month() -> tuple[int, int, float]:
    """(series forecast, false warnings, db-01's lead in hours) on the demo's month."""
    t = generate_telemetry(hosts=3, days=30, seed=7, start_ms=T0, capacity_fill=True)
    limits = ForecastLimits(Settings().forecast_limits)
    fill = t.params["capacity_fill"]
    covered = false = 0
    lead_h = 0.0
    for sid, s in t.series.items():
        low, high = limits.limits(s.name, s.labels, float(s.values[0]))
        if np.isnan(low) and np.isnan(high):
            continue
        covered += 1
        transitions = follow(s.ts_ms, s.values, low, high)
        opens = [x for x in transitions if x.event == 1]
        if sid == fill["series"]:
            before = [x for x in opens if x.ts_ms < fill["start_ms"]]
            after = [x for x in opens if x.ts_ms >= fill["start_ms"]]
            false += len(before)
            lead_h = (fill["full_ms"] - after[0].ts_ms) / 3_600_000 if after else 0.0
        else:
            false += len(opens)
    return covered, false, lead_h


def main() -> None:
    started = time.perf_counter()
    leads = fills()
    print(f"forecast_fill_lead_mean: {np.mean(leads):.3f} horizon")
    print(f"forecast_fill_lead_min: {np.min(leads):.3f} horizon")
    print(f"forecast_fill_cases: {len(leads)} fills")
    covered, false, lead_h = demo_month()
    print(f"forecast_demo_series: {covered} series")
    print(f"forecast_demo_false_warnings: {false} warnings")
    print(f"forecast_demo_fill_lead: {lead_h:.1f} h")
    print(f"forecast_demo_fill_lead_fraction: {min(lead_h / HORIZON_H, 1.0):.3f} horizon")
    print(f"forecast_bench_seconds: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
