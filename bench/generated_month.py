"""The demo's month without the broker: found, false alarms and first-day false alarms.

The demo generates a month of 1-minute telemetry (3 hosts × 7 metrics, seed 7, 63 labelled
anomalies) ending at the current minute, so its counts depend on when it runs. This runs the
same month through the detector (``OnlineDetector.process``, the demo's directions
``VIGIL_DIRECTIONS``) at fixed start times, and matches incident openings to the labels as
the demo does (15 minutes' tolerance). Run::

    PYTHONPATH=. python -m bench.generated_month [--start-ms MS ...] [--first-alert-steps N]

It prints, per start, ``name: value unit`` lines: labelled anomalies found, false alarms,
false alarms in the series' first day, openings in their first hour (early alerts), and the
updates that tell a distinct anomaly inside an open incident. ``--first-alert-steps 60``
switches early alerts off, for comparison.
"""

from __future__ import annotations

import argparse

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start-ms", type=int, action="append")
    parser.add_argument("--first-alert-steps", type=int)
    args = parser.parse_args(argv)
    params = DetectorParams()
    if args.first_alert_steps is not None:
        params = DetectorParams(first_alert_steps=args.first_alert_steps)
    for start in args.start_ms or STARTS_MS:
        for name, value in month_counts(start, params).items():
            unit = "updates" if name.endswith("updates") else "anomalies"
            if name.startswith(("false", "openings")):
                unit = "incidents"
            print(f"month_{start}_{name}: {value} {unit}")


if __name__ == "__main__":
    main()
