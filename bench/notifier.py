"""Alert latency: an anomaly event produced on the topic → the request at the Telegram server.

A ``vigil notifier`` process reads a fresh anomalies topic and sends to the local Bot API
server (:mod:`vigil.devtools.botapi`, real HTTP, aiogram as in production). Each incident is on
its own host, so each is its own message with a chart (two hours of context, as the worker
attaches), and the group window is 0 — the issue's figure excludes grouping. Incidents are
produced at a steady rate; the latency of one is the time the server received its
``sendPhoto`` minus the time its event was handed to the producer (one clock, one machine).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.pipeline import Services, delete_keys
from bench.report import info
from vigil.devtools.botapi import BotAPIServer
from vigil.devtools.embedded import create_topics, start_notifier
from vigil.devtools.replay import make_producer
from vigil.events import AnomalyEvent, stable_id

__all__ = ["AlertLatency", "measure_alert_latency"]

STEP_MS = 60_000


@dataclass(frozen=True)
class AlertLatency:
    p50_ms: float
    p95_ms: float
    max_ms: float
    received: int
    rate: float


def _event(i: int, now_ms: int) -> AnomalyEvent:
    series = f'cpu_usage_percent{{host="bench-{i:05d}"}}'
    ts = now_ms // STEP_MS * STEP_MS
    n = 120
    rng = np.random.default_rng(i)
    values = (40 + 5 * np.sin(np.arange(n) / 15) + rng.normal(0, 1, n)).round(3).tolist()
    values[-1] = 97.0
    context = {
        "ts_ms": [ts - (n - 1 - k) * STEP_MS for k in range(n)],
        "value": values,
        "expected": [40.0] * n,
        "lower": [33.0] * n,
        "upper": [47.0] * n,
        "z": [0.5] * (n - 1) + [15.0],
    }
    incident = stable_id(series, ts)
    return AnomalyEvent(
        event_id=stable_id(incident, "open", ts), incident_id=incident, kind="open",
        series=series, name="cpu_usage_percent", labels={"host": f"bench-{i:05d}"},
        ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts / 1000)), ts_ms=ts,
        value=97.0, expected=40.0, lower=33.0, upper=47.0, score=1.0, severity="critical",
        anomaly_type="point", detectors=["seasonal"], reason="value 97 is above the band",
        context=context,
    )


def measure_alert_latency(svc: Services, incidents: int, rate: float) -> AlertLatency:
    """Produce ``incidents`` open events at ``rate`` per second; latency percentiles."""
    run_id = f"bench-alerts-{time.time_ns() // 1_000_000}"
    topic, feedback, dead = f"{run_id}-anomalies", f"{run_id}-feedback", f"{run_id}-dlq"
    create_topics(svc.bootstrap, {topic: 1, feedback: 1, dead: 1})
    with contextlib.ExitStack() as stack:
        server = BotAPIServer().start()
        stack.callback(server.stop)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vigil-bench-")))
        alerts = {
            "receivers": [{"name": "ops", "telegram": {"chat_ids": [1]}}],
            "default_receivers": ["ops"],
            "group_wait_s": 0.0,
            "rate_limit_per_minute": 1_000_000,
            "telegram": {"token": "1:BENCH", "api_url": server.url, "poll_updates": False},
        }
        env = {
            "VIGIL_KAFKA_BOOTSTRAP": svc.bootstrap,
            "VIGIL_REDIS_URL": svc.redis_url,
            "VIGIL_REDIS_PREFIX": f"{run_id}:",
            "VIGIL_NOTIFIER_APP_ID": run_id,
            "VIGIL_ANOMALIES_TOPIC": topic,
            "VIGIL_FEEDBACK_TOPIC": feedback,
            "VIGIL_ALERTS_DEADLETTER_TOPIC": dead,
            "VIGIL_SESSION_TIMEOUT_S": "6",
            "VIGIL_LOG_LEVEL": "warning",
            "F_DATADIR": str(workdir / "{conf.name}-data"),
        }
        log_path = Path(tempfile.gettempdir()) / f"vigil-{run_id}-notifier.log"
        notifier = start_notifier(env, alerts, workdir / "vigil.yaml", log_path)
        stack.callback(notifier.stop, kill=True)
        stack.callback(delete_keys, svc.redis_url, f"{run_id}:")
        info(f"notifier {run_id} started (log: {log_path})")
        producer = make_producer(svc.bootstrap)

        # Ready = one probe alert has gone through (group joined, Redis and bot connected).
        probe = _event(99_999, time.time_ns() // 1_000_000)
        producer.produce(topic, key=probe.series.encode(), value=probe.dumps())
        producer.flush(10)
        deadline = time.monotonic() + 60
        while not server.sent():
            if not notifier.alive() or time.monotonic() > deadline:
                raise RuntimeError("the notifier sent nothing:\n" + notifier.log_tail())
            time.sleep(0.05)

        events = [_event(i, time.time_ns() // 1_000_000) for i in range(incidents)]
        payloads = [(e.series.encode(), e.dumps()) for e in events]
        produced: dict[str, float] = {}
        started = time.time()
        for i, (key, value) in enumerate(payloads):
            pause = started + i / rate - time.time()
            if pause > 0:
                time.sleep(pause)
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
            produced[f"bench-{i:05d}"] = time.time()
        producer.flush(10)
        deadline = time.monotonic() + 120
        while len(server.sent()) < incidents + 1:
            if not notifier.alive() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        received = {}
        for message in server.sent()[1:]:
            host = message.text.split("bench-")[1][:5]
            received.setdefault(f"bench-{host}", message.received)
        latencies = np.array([received[h] - produced[h] for h in received if h in produced])
        if len(latencies) < incidents:
            info(f"only {len(latencies)} of {incidents} alerts arrived; see {log_path}")
        return AlertLatency(
            p50_ms=float(np.percentile(latencies, 50) * 1000),
            p95_ms=float(np.percentile(latencies, 95) * 1000),
            max_ms=float(latencies.max() * 1000),
            received=len(latencies),
            rate=incidents / (produced[f"bench-{incidents - 1:05d}"] - started + 1e-9),
        )
