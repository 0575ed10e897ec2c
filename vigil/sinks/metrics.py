"""The worker's own metrics, exposed in Prometheus format at ``/metrics``."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MESSAGES_IN = Counter("vigil_messages_in", "Input messages consumed from metric topics")
POINTS_IN = Counter("vigil_points_in", "Points parsed from metric topics")
DEAD_LETTERS = Counter(
    "vigil_dead_letters", "Records sent to the dead-letter topic, by stage and reason class",
    ["stage", "reason"],
)
INPUT_DEGRADED = Gauge(
    "vigil_input_dead_lettered_ratio",
    "Share of a topic's recent records dead-lettered, for topics over the alarm threshold",
    ["topic"],
)
REMOTE_WRITE_SAMPLES = Counter(
    "vigil_remote_write_samples", "Prometheus remote_write samples produced to the input topic"
)
REMOTE_WRITE_STALE = Counter(
    "vigil_remote_write_stale_markers", "Prometheus stale markers received and skipped"
)
REMOTE_WRITE_REQUESTS = Counter(
    "vigil_remote_write_requests", "Prometheus remote_write requests, by HTTP status", ["status"]
)
INPUT_POINTS_WAITING = Gauge(
    "vigil_input_points_waiting",
    "Parsed points waiting for lagging input partitions (event-time merge of the input)",
)
INPUT_POINTS_FORCED = Counter(
    "vigil_input_points_forced",
    "Points sent on before their input partitions caught up (too many were waiting)",
)
COUNTER_POINTS_HELD = Counter(
    "vigil_counter_points_held",
    "Counter points with no rate: a series' first sample, a reset, or not after the previous",
)
COUNTER_RESETS = Counter("vigil_counter_resets", "Counter resets seen (a value that decreased)")
POINTS_DETECTED = Counter(
    "vigil_points_detected", "Points applied to series states (not counting dropped ones)"
)
POINTS_DROPPED = Counter(
    "vigil_points_dropped",
    "Points not applied, by reason: late (older than the allowed lateness, or a replay), "
    "duplicate (a timestamp already held back), not_finite (NaN or infinite value)",
    ["reason"],
)
for _reason in ("late", "duplicate", "not_finite"):
    POINTS_DROPPED.labels(reason=_reason)  # exported at 0 from the start
STEPS_SCORED = Counter("vigil_steps_scored", "Resampled steps scored by the detector")
DETECTOR_CPU_SECONDS = Counter(
    "vigil_detector_cpu_seconds",
    "CPU seconds the detector took (resampling, the compiled step, capacity forecasts): against "
    "process_cpu_seconds_total, detection's share of the worker's CPU",
)
EVENTS_OUT = Counter("vigil_events_out", "Anomaly events published", ["kind", "severity"])
STATE_LATENCY = Histogram(
    "vigil_state_store_seconds",
    "Latency of one batched Redis state read or write",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SECONDS = Histogram(
    "vigil_detect_batch_seconds",
    "Wall time of one detection batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SERIES_RESTARTED = Counter(
    "vigil_series_restarted",
    "Series that started learning from scratch after Redis lost its data",
)
REDIS_DATA_LOST = Counter(
    "vigil_redis_data_lost", "Times Redis was found emptied (its instance marker gone)"
)
CACHED_SERIES = Gauge("vigil_cached_series", "Series states held in worker memory")
CONSUMER_LAG = Gauge(
    "vigil_consumer_lag",
    "Messages behind the partition's end (highwater − committed offset), per partition the "
    "worker owns",
    ["topic", "partition"],
)
POINTS_PER_SECOND = Gauge(
    "vigil_points_per_second", "Points parsed per second over the last 10 seconds"
)
DASHBOARD_CLIENTS = Gauge("vigil_dashboard_clients", "Browsers connected to the live feed")
DASHBOARD_CLIENTS_DROPPED = Counter(
    "vigil_dashboard_clients_dropped", "Live-feed clients dropped for reading too slowly"
)
RESUBSCRIBES = Counter(
    "vigil_resubscribes", "Restarts because the input pattern matched new topics"
)

# History storage (ClickHouse)
CLICKHOUSE_BUFFER_ROWS = Gauge(
    "vigil_clickhouse_buffer_rows", "Rows waiting in the worker's buffer for ClickHouse"
)
CLICKHOUSE_ROWS_WRITTEN = Counter(
    "vigil_clickhouse_rows_written", "Rows inserted into ClickHouse", ["table"]
)
CLICKHOUSE_ROWS_DROPPED = Counter(
    "vigil_clickhouse_rows_dropped", "Rows dropped because the ClickHouse buffer was full"
)
CLICKHOUSE_ERRORS = Counter("vigil_clickhouse_errors", "Failed ClickHouse inserts (retried)")

# The LSTM scorer (vigil.streams.lstm_scorer)
LSTM_MODEL_LOADED = Gauge(
    "vigil_lstm_model_loaded", "1 when an LSTM model is loaded, 0 = seasonal detector alone"
)
LSTM_WINDOWS = Counter("vigil_lstm_windows_scored", "Residual windows scored by the LSTM")
LSTM_BATCH_SECONDS = Histogram(
    "vigil_lstm_batch_seconds",
    "Wall time of the LSTM forward passes of one detection batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LSTM_MODEL_ERRORS = Counter(
    "vigil_lstm_model_errors", "LSTM model files that could not be loaded"
)

# The notifier (``vigil notifier``)
ALERTS_SENT = Counter(
    "vigil_alerts_sent", "Notifications delivered", ["receiver", "channel", "kind"]
)
ALERTS_REPOSTED = Counter(
    "vigil_alerts_reposted", "Open incidents' alerts re-posted to Alertmanager (every repeat_s)",
    ["receiver"],
)
ALERT_ATTEMPTS_FAILED = Counter(
    "vigil_alert_attempts_failed", "Failed delivery attempts (retried)", ["receiver", "channel"]
)
ALERTS_DEAD_LETTERED = Counter(
    "vigil_alerts_dead_lettered", "Notifications given up on and sent to the dead-letter topic",
    ["receiver", "channel"],
)
EVENTS_SUPPRESSED = Counter(
    "vigil_alert_events_suppressed", "Anomaly events that produced no message",
    ["reason"],  # unrouted | silenced | duplicate | malformed | acknowledged
)
ALERTS_DIGESTED = Counter(
    "vigil_alerts_digested", "Notifications merged into a digest by the rate limit", ["receiver"]
)
ALERT_QUEUE_DEPTH = Gauge(
    "vigil_alert_queue_depth",
    "Messages waiting in a receiver's queue (grows while it cannot deliver; bounded by "
    "alerts.queue_max_messages)", ["receiver"],
)
ALERT_RECEIVER_WAITING = Gauge(
    "vigil_alert_receiver_waiting",
    "1 while a receiver's channel is retrying through a transient failure (an outage), else 0",
    ["receiver", "channel"],
)
ALERTS_REDELIVERED = Counter(
    "vigil_alerts_redelivered", "Dead-lettered notifications sent again by vigil alerts "
    "redeliver", ["receiver", "channel"],
)
FEEDBACK = Counter("vigil_feedback", "Operator button presses", ["action"])
LESSONS = Counter(
    "vigil_feedback_lessons", "Operators' feedback applied to series' detector states",
    ["action"],  # not_anomaly | forget
)
OPENINGS_WITHHELD = Counter(
    "vigil_openings_withheld",
    "Incident openings withheld because operators taught the pattern is normal",
)
SILENT_SERIES = Gauge("vigil_silent_series", "Series of this worker with an open no_data incident")
TRACKED_SERIES = Gauge(
    "vigil_tracked_series", "Series whose last data time this worker watches (stopped series)"
)
SERIES_REFUSED = Counter(
    "vigil_series_refused", "New series refused by a series limit (worker or metric)", ["limit"]
)
POINTS_REFUSED = Counter(
    "vigil_points_refused", "Points dead-lettered because their series was refused", ["limit"]
)
ACTIVE_SILENCES = Gauge("vigil_active_silences", "Silences in force")


class SlidingRate:
    """Events per second over the last ``window_s`` seconds, in one-second buckets.

    >>> rate = SlidingRate(window_s=10, clock=lambda: 100.0)
    >>> rate.add(50); rate.add(30)
    >>> rate.per_second()
    8.0
    """

    def __init__(self, window_s: int = 10, clock=time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._buckets: deque[list] = deque()  # [second, count], oldest first
        self._lock = threading.Lock()  # scrapes may come from another thread

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()

    def add(self, n: int) -> None:
        now = int(self.clock())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([now, n])
            self._trim(now)

    def per_second(self) -> float:
        with self._lock:
            self._trim(int(self.clock()))
            return sum(c for _, c in self._buckets) / self.window_s


POINTS_RATE = SlidingRate()
POINTS_PER_SECOND.set_function(POINTS_RATE.per_second)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
