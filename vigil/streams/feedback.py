"""``vigil feedback``: operators' verdicts given from the command line, and what is taught.

* ``not-anomaly INCIDENT`` and ``acknowledge INCIDENT`` publish a
  :class:`~vigil.events.Feedback` record on the feedback topic, as a Telegram button does:
  the worker turns a ``not_anomaly`` into a lesson for the series' detector state, the
  notifier stops an acknowledged incident's escalations. The incident is looked up on the
  anomalies topic (its series, type, direction, peak score and opening), or in the history
  store when the topic no longer has it.
* ``forget SERIES…`` publishes ``forget`` records: the worker undoes what the series was
  taught.
* ``list`` reads the series' states from Redis and prints the patterns in force.

See docs/feedback.md.
"""

from __future__ import annotations

import fnmatch
import time
import uuid

import numpy as np
import orjson
import redis

from vigil.detectors.teaching import Pattern, taught_patterns
from vigil.events import EVENT_FIELDS, AnomalyEvent, Feedback, stable_id
from vigil.series import parse_series
from vigil.streams.settings import Settings
from vigil.streams.state import StateFormatError, connect_sync, unpack
from vigil.streams.topic_reader import read_to_end
from vigil.times import iso

__all__ = ["find_incident", "forget_feedback", "publish_feedback", "series_of_metric",
           "stored_incident", "taught", "verdicts"]


def find_incident(settings: Settings, incident_id: str, timeout_s: float = 60.0
                  ) -> list[AnomalyEvent]:
    """The events of ``incident_id`` on the anomalies topic, oldest first ([] if none); when
    the topic no longer has them (its retention) and a history store is configured, the
    stored ones (ClickHouse or PostgreSQL)."""
    found = _incident_on_topic(settings, incident_id, timeout_s)
    if not found and settings.store_url:
        found = stored_incident(settings, incident_id)
    return sorted(found, key=lambda e: e.ts_ms)


def stored_incident(settings: Settings, incident_id: str) -> list[AnomalyEvent]:
    """The incident's events as the history store keeps them (no chart context)."""
    from vigil.sinks.store import open_store

    store = open_store(settings)
    try:
        incident = store.incident(incident_id)
    finally:
        store.close()
    fields = set(EVENT_FIELDS)
    return [AnomalyEvent(**{k: v for k, v in e.items() if k in fields})
            for e in (incident or {}).get("events", [])]


def _incident_on_topic(settings: Settings, incident_id: str, timeout_s: float
                       ) -> list[AnomalyEvent]:
    found = []
    needle = incident_id.encode()
    for _, _, value in read_to_end(settings, settings.anomalies_topic, timeout_s):
        if needle not in value:  # most records: skip without decoding
            continue
        try:
            data = orjson.loads(value)
            data.pop("__faust", None)
            event = AnomalyEvent(**data)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            continue
        if event.incident_id == incident_id:
            found.append(event)
    return found


def forget_feedback(series: str, user: str) -> Feedback:
    """A ``forget`` record: undo what ``series`` was taught."""
    now_ms = int(time.time() * 1000)
    return Feedback(
        feedback_id=stable_id("cli", "forget", series, uuid.uuid4().hex), action="forget",
        incident_id="", series=series, notification_id="", receiver="", user_id=0,
        user_name=user, chat_id=0, ts_ms=now_ms, ts=iso(now_ms), source="cli",
    )


def publish_feedback(settings: Settings, records: list[Feedback], timeout_s: float = 30.0
                     ) -> None:
    """Write ``records`` to the feedback topic (key: incident id, else series) and wait."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer(settings.kafka_client_config())
    errors: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    for record in records:
        producer.produce(settings.feedback_topic, key=(record.incident_id or record.series),
                         value=orjson.dumps(record.asdict()), on_delivery=delivered)
    left = producer.flush(timeout_s)
    if left or errors:
        raise KafkaException(f"feedback not written to {settings.feedback_topic}: "
                             f"{errors[0] if errors else f'{left} record(s) still queued'}")


def _state_keys(client: redis.Redis, settings: Settings, match: str) -> list[str]:
    """The series ids whose state keys match ``match`` (a Redis glob on the series id)."""
    keys = settings.state_keys()
    return [keys.series_of(k)
            for k in client.scan_iter(match=keys.state_pattern(match), count=1000)]


def series_of_metric(settings: Settings, series: str) -> list[str]:
    """Every series with a state in Redis whose metric name is ``series``'s."""
    name = parse_series(series)[0]
    client = connect_sync(settings.redis_url, settings.redis_cluster)
    try:
        found = _state_keys(client, settings, _redis_glob(name) + "*")
    finally:
        client.close()
    return sorted(s for s in found if parse_series(s)[0] == name)


def _redis_glob(text: str) -> str:
    """``text`` as a literal in a Redis glob."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def taught(settings: Settings, selector: str = "*", now_ms: int | None = None
           ) -> list[tuple[str, list[Pattern]]]:
    """The series matching ``selector`` (a glob on the series id) with the patterns taught
    to them and still in force, read from Redis (``SCAN`` over the state keys)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    client = connect_sync(settings.redis_url, settings.redis_cluster)
    keys = settings.state_keys()
    mget = client.mget_nonatomic if settings.redis_cluster else client.mget
    out = []
    try:
        series = [s for s in _state_keys(client, settings, "*")
                  if fnmatch.fnmatchcase(s, selector)]
        for lo in range(0, len(series), 1000):
            chunk = series[lo : lo + 1000]
            for s, value in zip(chunk, mget([keys.state(c) for c in chunk]), strict=True):
                if value is None:
                    continue
                try:
                    bank, _ = unpack([value])
                except StateFormatError:
                    continue
                patterns = taught_patterns(bank.records[0], now_ms)
                if patterns:
                    out.append((s, patterns))
    finally:
        client.close()
    return sorted(out)


def verdicts(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The operators' verdicts the notifier collected (``notify:verdicts``): feature rows and
    0/1 labels (1: acknowledged, a real anomaly; 0: not an anomaly)."""
    client = connect_sync(settings.redis_url, settings.redis_cluster)
    try:
        records = [orjson.loads(v) for v in
                   client.hgetall(f"{settings.redis_prefix}notify:verdicts").values()]
    finally:
        client.close()
    records.sort(key=lambda r: r["ts_ms"])
    X = np.array([r["features"] for r in records], np.float64).reshape(len(records), -1)
    return X, np.array([r["label"] for r in records], np.float64)
