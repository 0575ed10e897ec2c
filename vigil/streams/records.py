"""Event schemas and the canonical series id — one place for every record vigil reads or writes.

A *series* is a metric name plus its sorted labels, Prometheus style::

    node_load1{host="db-1",role="primary"}

That canonical string is the series id everywhere: in Redis keys, in routing, in
:class:`AnomalyEvent` records.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import faust

__all__ = [
    "AlertDeadLetter",
    "AnomalyEvent",
    "DeadLetter",
    "Feedback",
    "ParseResult",
    "Reject",
    "canonical_series",
    "parse_series",
    "stable_id",
]

_NAME_OK = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:.\-]*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def canonical_series(name: str, labels: Mapping[str, str] | None = None) -> str:
    """The canonical id of a series: ``name{k1="v1",k2="v2"}`` with labels sorted by key.

    >>> canonical_series("node_load1", {"role": "db", "host": "db-1"})
    'node_load1{host="db-1",role="db"}'
    >>> canonical_series("up")
    'up'
    """
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


_LABEL = re.compile(r'([^=,{}"]+)="((?:[^"\\]|\\.)*)"')


@lru_cache(maxsize=200_000)
def parse_series(series: str) -> tuple[str, dict[str, str]]:
    """Split a canonical series id back into its name and labels (cached).

    >>> parse_series('node_load1{host="db-1",role="db"}')
    ('node_load1', {'host': 'db-1', 'role': 'db'})
    """
    brace = series.find("{")
    if brace < 0:
        return series, {}
    name = series[:brace]
    labels = {
        k: v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        for k, v in _LABEL.findall(series[brace + 1 : -1])
    }
    return name, labels


def stable_id(*parts: object) -> str:
    """A deterministic 16-hex-digit id of its parts (same parts → same id, across processes).

    >>> stable_id("cpu", 1700000000000, "open")
    'a19d13567bf8c6fb'
    """
    joined = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.blake2b(joined, digest_size=8).hexdigest()


@dataclass(slots=True)
class Reject:
    """One input record (or one point of a batch record) that could not be used."""

    reason: str
    raw: bytes


@dataclass(slots=True)
class ParseResult:
    """What a parser makes of one Kafka message: good points (columnar) and rejects.

    ``series``, ``ts_ms`` and ``values`` have equal length; timestamps are UTC epoch milliseconds.
    """

    series: list[str] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def add(self, series: str, ts_ms: int, value: float) -> None:
        self.series.append(series)
        self.ts_ms.append(ts_ms)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.series)


class AnomalyEvent(faust.Record, serializer="json", include_metadata=False):
    """One message on the anomalies topic (key = series id). Documented in the README.

    ``kind`` is ``open`` when an incident starts, ``update`` when its severity rises, and
    ``resolve`` when the series has been normal again for a while. ``event_id`` is derived from
    the series, the incident and the point, so a replay produces the same ids.
    """

    event_id: str
    incident_id: str
    kind: str
    series: str
    name: str
    labels: dict
    ts: str
    ts_ms: int
    value: float
    expected: float
    lower: float
    upper: float
    score: float
    severity: str
    anomaly_type: str
    detectors: list
    reason: str
    schema_version: int = 1
    # The series' recent steps up to this one, for the alert chart: lists ``ts_ms``,
    # ``value``, ``expected``, ``lower``, ``upper``, ``z`` (open and update events only).
    context: dict | None = None


class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A record vigil could not use, with why; ``raw`` is the original bytes, base64-encoded."""

    reason: str
    topic: str
    partition: int
    offset: int
    raw_b64: str
    ts_ms: int
    stage: str = "parse"


class Feedback(faust.Record, serializer="json", include_metadata=False):
    """An operator's verdict on an incident (a Telegram button), on the feedback topic.

    ``action`` is ``acknowledge``, ``mute`` or ``not_anomaly``; these are the labels a
    supervised model can later learn from. Key = incident id.
    """

    feedback_id: str
    action: str
    incident_id: str
    series: str
    notification_id: str
    receiver: str
    user_id: int
    user_name: str
    chat_id: int
    ts_ms: int
    ts: str
    source: str = "telegram"


class AlertDeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A notification that could not be delivered after every retry (or was refused)."""

    notification_id: str
    receiver: str
    channel: str
    kind: str
    error: str
    attempts: int
    subject: str
    text: str
    incident_ids: list
    event_ids: list
    ts_ms: int
