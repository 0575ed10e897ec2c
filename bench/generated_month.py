"""The demo's month without the broker: found, false alarms and first-day false alarms.

The demo generates a month of 1-minute telemetry (3 hosts × 7 metrics, seed 7, 63 labelled
anomalies) ending at the current minute, so its counts depend on when it runs. This runs the
same month through the detector (``OnlineDetector.process``, the demo's directions
``VIGIL_DIRECTIONS``) at fixed start times, and matches incident openings to the labels as
the demo does (15 minutes' tolerance). Run::

    PYTHONPATH=. python -m bench.generated_month [--start-ms MS ...] [--first-alert-steps N]
        [--spread N] [--loud-start]

It prints, per start, ``name: value unit`` lines: labelled anomalies found, false alarms,
false alarms in the series' first day, openings in their first hour (early alerts), and the
updates that tell a distinct anomaly inside an open incident. ``--first-alert-steps 60``
switches early alerts off, for comparison. ``--spread N`` runs N starts spread over a week
instead (Monday 00:37 UTC + k · 7 days / N, on the minute: the demo starts at any hour and
weekday) and prints only their totals and how many meet the demo's rule (at least 60
found, at most 2 false alarms). ``--loud-start`` lets a series' first days open from
``z_open`` (``quiet_until_daily`` off), for comparison.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from vigil.detectors.bank import new_state_bank
from vigil.detectors.online import DetectorParams, OnlineDetector
from vigil.devtools.demo import DEMO_DIRECTIONS
from vigil.lab.evaluation import match_incidents
from vigil.lab.synthetic import generate_telemetry
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings

__all__ = ["month_counts"]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: A Monday 00:00 UTC, a Monday 07:13 and a Sunday 12:00 (steps on the minute).
STARTS_MS = (1_700_438_400_000, 1_700_464_380_000, 1_701_000_000_000 - 1_701_000_000_000 % 60_000)


def month_counts(start_ms: int, params: DetectorParams | None = None) -> dict[str, int]:
    """The demo month starting at ``start_ms`` through the detector: what it found."""
    t = generate_telemetry(hosts=3, days=30, seed=7, start_ms=start_ms)
    ids = list(t.series)
    index = np.concatenate([np.full(len(t.series[s].ts_ms), k) for k, s in enumerate(ids)])
    ts = np.concatenate([t.series[s].ts_ms for s in ids])
    values = np.concatenate([t.series[s].values for s in ids])
    directions = DetectionPipeline(None, directions=Settings(directions=DEMO_DIRECTIONS).directions)
    sign = np.array([directions.direction(s) for s in ids], np.float64)
    r = OnlineDetector(params).process(new_state_bank(len(ids)), index, ts, values, sign)
    opens = [(ids[r.steps.index[i]], int(r.steps.ts_ms[i])) for i in np.flatnonzero(r.event == 1)]
    report = match_incidents(opens, t.labels, tolerance_ms=15 * 60_000)
    first = min(int(s.ts_ms[0]) for s in t.series.values())
    return {
        "labelled": len(report.found) + len(report.missed),
        "found": len(report.found),
        "false_alarms": len(report.false_alarms),
        "false_alarms_first_day": sum(ts < first + DAY_MS for _, ts in report.false_alarms),
        "openings_first_hour": sum(ts < first + HOUR_MS for _, ts in opens),
        "distinct_anomaly_updates": int(np.count_nonzero(r.change)),
    }


def spread_starts(n: int) -> list[int]:
    """``n`` start times spread over a week from a Monday 00:37 UTC, on the minute."""
    first = STARTS_MS[0] + 37 * 60_000
    return [first + k * (7 * DAY_MS // n) // 60_000 * 60_000 for k in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start-ms", type=int, action="append")
    parser.add_argument("--first-alert-steps", type=int)
    parser.add_argument("--spread", type=int, help="N starts spread over a week: totals only")
    parser.add_argument("--loud-start", action="store_true",
                        help="a series' first days open from z_open (quiet_until_daily off)")
    args = parser.parse_args(argv)
    params = DetectorParams(quiet_until_daily=not args.loud_start)
    if args.first_alert_steps is not None:
        params = replace(params, first_alert_steps=args.first_alert_steps)
    if args.spread:
        counts = [month_counts(start, params) for start in spread_starts(args.spread)]
        passing = sum(c["found"] >= 60 and c["false_alarms"] <= 2 for c in counts)
        found = [c["found"] for c in counts]
        print(f"months: {len(counts)} starts")
        print(f"months_found_min: {min(found)} anomalies")
        print(f"months_found_max: {max(found)} anomalies")
        for name in ("false_alarms", "false_alarms_first_day"):
            print(f"months_{name}_total: {sum(c[name] for c in counts)} incidents")
        print(f"months_false_alarms_max: {max(c['false_alarms'] for c in counts)} incidents")
        print(f"months_meeting_the_demo_rule: {passing} starts")
        return
    for start in args.start_ms or STARTS_MS:
        for name, value in month_counts(start, params).items():
            unit = "updates" if name.endswith("updates") else "anomalies"
            if name.startswith(("false", "openings")):
                unit = "incidents"
            print(f"month_{start}_{name}: {value} {unit}")


if __name__ == "__main__":
    main()
