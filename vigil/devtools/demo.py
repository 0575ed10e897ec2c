"""``vigil demo``: the real pipeline on one machine, on generated telemetry, end to end.

1. Start an embedded Kafka-protocol broker and Redis unless ``VIGIL_KAFKA_BOOTSTRAP`` /
   ``VIGIL_REDIS_URL`` point at real ones.
2. Generate a month of labelled 1-minute telemetry (hosts × 7 metrics).
3. Start a ``vigil worker`` and a ``vigil notifier`` process (alerting a local Telegram Bot
   API server), replay the month into the ``metrics`` topic as fast as the broker takes it,
   and wait until the worker has processed every point and the notifier has sent.
4. Print the capacity forecasts (db-01's filling disk: its warning's lead time), the
   incidents next to the labels: found, missed, false alarms; and the alerts, with their
   charts saved as PNG files.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
import redis
from tqdm import tqdm

from vigil.devtools.botapi import BotAPIServer
from vigil.devtools.embedded import (
    TopicCollector,
    WorkerProcess,
    configured_or_embedded,
    create_topics,
    free_port,
    start_notifier,
)
from vigil.devtools.replay import replay
from vigil.lab.evaluation import match_incidents
from vigil.lab.synthetic import GONE_BEFORE_END_MIN, generate_telemetry
from vigil.streams.settings import Settings

__all__ = ["run_demo"]

INPUT_TOPIC = "metrics"
DEMO_DIRECTIONS = "memory_used*=up,disk_used*=up"


def run_demo(hosts: int = 3, days: float = 30.0, seed: int = 7) -> int:
    """Run the demo; returns a process exit code (0 when the pipeline ran through)."""
    started = time.monotonic()
    run_id = f"demo-{int(time.time())}"
    # A SIGTERM (e.g. from `timeout`) must still stop the broker, Redis and worker below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        found = stack.enter_context(configured_or_embedded())
        bootstrap, redis_url = found.bootstrap, found.redis_url
        prefix = f"vigil-{run_id}:"
        settings = Settings(
            kafka_bootstrap=bootstrap, redis_url=redis_url, redis_prefix=prefix, app_id=run_id,
            input_topics=[INPUT_TOPIC],
        )
        create_topics(
            bootstrap,
            {
                INPUT_TOPIC: 4,
                settings.points_topic: settings.points_partitions,
                settings.anomalies_topic: 1,
                settings.deadletter_topic: 1,
            },
        )

        print(f"generating {days:g} days of 1-minute telemetry for {hosts} hosts × 7 metrics ...")
        telemetry = generate_telemetry(hosts=hosts, days=days, seed=seed, capacity_fill=True,
                                       gone_host=True)
        print(
            f"  {len(telemetry.series)} series, {telemetry.n_points:,} points, "
            f"{len(telemetry.labels)} labelled anomalies"
        )

        log_path = Path(tempfile.gettempdir()) / f"vigil-{run_id}-worker.log"
        env = {
            "VIGIL_KAFKA_BOOTSTRAP": bootstrap,
            "VIGIL_REDIS_URL": redis_url,
            "VIGIL_REDIS_PREFIX": prefix,
            "VIGIL_APP_ID": run_id,
            "VIGIL_INPUT_TOPICS": INPUT_TOPIC,
            "VIGIL_WEB_PORT": str(free_port()),
            "VIGIL_LOG_LEVEL": "warning",
            "VIGIL_NODATA_CHECK_S": "5",  # notice gone-01 soon after the replay
            # Memory and disk *used* matter when they rise; a drop (restart, cleanup) is news,
            # not an incident. Override with VIGIL_DIRECTIONS.
            "VIGIL_DIRECTIONS": os.environ.get("VIGIL_DIRECTIONS", DEMO_DIRECTIONS),
        }
        worker = WorkerProcess(env, log_path)
        stack.callback(worker.stop)
        collector = TopicCollector(bootstrap, [settings.anomalies_topic])
        stack.callback(collector.close)
        print(f"started the worker (log: {log_path})")
        botapi, notifier = _start_notifier(stack, env, run_id)

        with tqdm(total=telemetry.n_points, unit="pt", unit_scale=True, desc="replay ") as bar:
            sent = replay(telemetry, bootstrap, INPUT_TOPIC, batch=100, progress=bar.update)

        client = redis.Redis.from_url(redis_url)
        stats_key = f"{prefix}stats"
        with tqdm(total=sent, unit="pt", unit_scale=True, desc="detect ") as bar:
            done, last_progress = 0, time.monotonic()
            while done < sent:
                if not worker.alive():
                    print("the worker stopped unexpectedly:\n" + worker.log_tail())
                    return 1
                if time.monotonic() - last_progress > 90:
                    print("the worker made no progress for 90 s:\n" + worker.log_tail())
                    return 1
                time.sleep(0.25)
                now = int(client.hget(stats_key, "points_processed") or 0)
                if now > done:
                    bar.update(now - done)
                    done, last_progress = now, time.monotonic()
        time.sleep(1.5)  # let the last events arrive
        _wait_for_no_data(collector, settings.anomalies_topic, telemetry.params.get("gone"))
        events = [orjson.loads(v) for v in collector.values(settings.anomalies_topic)]
        alerts, alerted, opened = _wait_for_alerts(botapi, notifier, events, client, prefix)

    _print_report(telemetry, [e for e in events if e["anomaly_type"] != "no_data"],
                  time.monotonic() - started)
    _print_stopped(telemetry.params.get("gone"), events)
    _print_alerts(alerts, alerted, opened, run_id)
    return 0


def _start_notifier(stack: ExitStack, env: dict[str, str], run_id: str):
    """A ``vigil notifier`` sending to a local Bot API server (no Telegram account needed)."""
    botapi = BotAPIServer().start()
    stack.callback(botapi.stop)
    alerts = {
        "receivers": [{"name": "oncall", "telegram": {"chat_ids": [1]}}],
        "default_receivers": ["oncall"],
        "group_wait_s": 6.0,  # more than the no_data check interval (5 s): one message
        "rate_limit_per_minute": 600,
        "max_event_age_s": 40 * 86_400,  # the replayed month is history: alert on all of it
        "telegram": {"token": "1:DEMO", "api_url": botapi.url, "poll_updates": False},
    }
    folder = Path(tempfile.gettempdir())
    log_path = folder / f"vigil-{run_id}-notifier.log"
    notifier = start_notifier(
        {**env, "VIGIL_NOTIFIER_APP_ID": f"{run_id}-notifier"}, alerts,
        folder / f"vigil-{run_id}.yaml", log_path,
    )
    stack.callback(notifier.stop)
    print(f"started the notifier → local Telegram Bot API at {botapi.url} (log: {log_path})")
    return botapi, notifier


def _wait_for_alerts(botapi, notifier, events, client, prefix, timeout_s: float = 60.0):
    """The messages sent once every opened incident is recorded as alerted (or timeout)."""
    opened = {e["incident_id"] for e in events if e["kind"] == "open"}
    deadline = time.monotonic() + timeout_s
    alerted: set[str] = set()
    while time.monotonic() < deadline and notifier.alive():
        alerted = {k.decode().rsplit(":", 1)[1]
                   for k in client.scan_iter(f"{prefix}notify:incident:*", count=1000)}
        if opened <= alerted:
            break
        time.sleep(0.5)
    return botapi.sent(), len(alerted & opened), len(opened)


def _wait_for_no_data(collector, topic: str, gone: dict | None, timeout_s: float = 45.0):
    """Wait until the stopped host's series have their no_data events (or timeout)."""
    if not gone:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        told = {e["series"] for e in map(orjson.loads, collector.values(topic))
                if e["anomaly_type"] == "no_data"}
        if set(gone["series"]) <= told:
            return
        time.sleep(0.5)


def _print_stopped(gone: dict | None, events: list[dict]) -> None:
    """How the host that stopped reporting was noticed (docs/stopped-series.md)."""
    if not gone:
        return
    opens = [e for e in events if e["anomaly_type"] == "no_data" and e["kind"] == "open"]
    noticed = [e for e in opens if e["series"] in set(gone["series"])]
    others = len(opens) - len(noticed)
    print()
    if not noticed:
        print(f"stopped host {gone['host']}: not noticed (0 of {len(gone['series'])} series)")
        return
    delay_min = (min(e["ts_ms"] for e in noticed) - gone["last_ms"]) / 60_000
    print(f"stopped host {gone['host']}: {len(noticed)} of {len(gone['series'])} series "
          f"noticed (no_data), {delay_min:.1f} min after its last point (it stopped "
          f"{GONE_BEFORE_END_MIN:.0f} min before the recording's end; silent after 5 min); "
          f"other no_data incidents: {others}")


def _print_alerts(alerts, alerted: int, opened: int, run_id: str) -> None:
    folder = Path(tempfile.gettempdir()) / f"vigil-{run_id}-alerts"
    folder.mkdir(exist_ok=True)
    for message in alerts:
        stem = folder / f"alert-{message.message_id:03d}"
        stem.with_suffix(".txt").write_text(message.text)
        if message.photo:
            stem.with_suffix(".png").write_bytes(message.photo)
    print(f"alerts: {len(alerts)} Telegram messages (grouped by host) told {alerted} of "
          f"{opened} incidents")
    if alerts:
        print(f"  first: {alerts[0].text.splitlines()[0]}")
    for message in alerts:
        if "stopped reporting" in message.text.splitlines()[0]:
            print(f"  stopped series: {message.text.splitlines()[0]}")
    print(f"  texts and charts: {folder}")


def _print_forecasts(telemetry, events: list[dict]) -> list[dict]:
    """Report the capacity forecasts (docs/forecasts.md): db-01's filling disk's warning and
    its lead time; the events left for the anomaly report (not the forecasts, nor the
    filling disk's: it is no labelled anomaly)."""
    fill = telemetry.params.get("capacity_fill")
    forecasts = [e for e in events if e["anomaly_type"] == "forecast"]
    warned = [e for e in forecasts if e["kind"] == "open"]
    print(f"capacity forecasts: {len(warned)} warnings ({len(forecasts)} events)")
    for e in warned:
        f = e["forecast"]
        line = f"  {e['series']}: {e['severity']} at {e['ts']}, {e['reason']}"
        if fill and e["series"] == fill["series"]:
            line += f"; lead time {(fill['full_ms'] - e['ts_ms']) / 3_600_000:.1f} h"
            line += f" (horizon {f['horizon_h']:g} h)"
        print(line)
    skip = fill["series"] if fill else None
    return [e for e in events if e["anomaly_type"] != "forecast" and e["series"] != skip]


def _print_report(telemetry, events: list[dict], seconds: float) -> None:
    print()
    events = _print_forecasts(telemetry, events)
    opens = [(e["series"], e["ts_ms"]) for e in events if e["kind"] == "open"]
    resolves = sum(1 for e in events if e["kind"] == "resolve")
    report = match_incidents(opens, telemetry.labels, tolerance_ms=15 * 60_000)
    print()
    print(f"incidents opened: {len(opens)}, resolved: {resolves}, events: {len(events)}")
    print(f"{'kind':<12}{'labelled':>10}{'found':>8}{'missed':>8}")
    for kind, (found, total) in report.by_kind().items():
        print(f"{kind:<12}{total:>10}{found:>8}{total - found:>8}")
    types = report.count_by("type")
    print("by type: " + ", ".join(f"{t} {found}/{total}" for t, (found, total) in types.items()))
    print()
    print(f"found:        {len(report.found)} of {len(report.found) + len(report.missed)} "
          f"labelled anomalies (recall {report.recall:.0%})")
    print(f"missed:       {len(report.missed)}")
    print(f"false alarms: {len(report.false_alarms)} "
          f"(precision {report.precision:.0%}; over {len(telemetry.series)} series × "
          f"{telemetry.params.get('days', 30)} days)")
    print(f"mean detection delay: {report.mean_delay_ms / 60_000:.1f} min")
    print(f"alert directions: {os.environ.get('VIGIL_DIRECTIONS', DEMO_DIRECTIONS)}")
    print(f"demo finished in {seconds:.0f} s")
