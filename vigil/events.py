"""The records vigil publishes, shared by every room: one definition of each.

- :class:`AnomalyEvent` — the anomalies topic (key = series id); documented in the README.
- :class:`Feedback` — an operator's verdict on an incident (feedback topic).
- :class:`AlertDeadLetter` — a notification that could not be delivered.

The worker builds events, the notifier routes and sends them, the stores and the dashboard
read them: all of them use these classes (and :data:`EVENT_FIELDS`), never a copy.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import faust

from vigil.times import iso

__all__ = [
    "EVENT_FIELDS",
    "SEVERITIES",
    "AlertDeadLetter",
    "AnomalyEvent",
    "Feedback",
    "incident_pattern",
    "severity_rank",
    "verdict",
    "stable_id",
]

#: Severities from least to most severe; an unknown severity ranks as ``warning``.
SEVERITIES = ("none", "warning", "critical")


def severity_rank(severity: str) -> int:
    """0 none, 1 warning, 2 critical (unknown severities rank as warning).

    >>> severity_rank("critical"), severity_rank("bogus")
    (2, 1)
    """
    return SEVERITIES.index(severity) if severity in SEVERITIES else 1


def stable_id(*parts: object) -> str:
    """A deterministic 16-hex-digit id of its parts (same parts → same id, across processes).

    >>> stable_id("cpu", 1700000000000, "open")
    'a19d13567bf8c6fb'
    """
    joined = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.blake2b(joined, digest_size=8).hexdigest()


class AnomalyEvent(faust.Record, serializer="json", include_metadata=False):
    """One message on the anomalies topic (key = series id). Documented in the README.

    ``kind`` is ``open`` when an incident starts, ``update`` when its severity rises or a
    distinct anomaly happens inside it (``change`` says which: ``direction``, ``kind`` or
    ``larger``), and ``resolve`` when the series has been normal again for a while.
    ``event_id`` is derived from the series, the incident and the point, so a replay
    produces the same ids.
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
    # On an update: "" (its severity rose) or the distinct anomaly it tells — "direction"
    # (the value moved the other way), "kind" (another kind of anomaly), "larger".
    change: str = ""
    # The step's score as an equivalent Gaussian z (σ; ``score`` is its likelihood, which
    # reads 1.0 for every z past about 5); 0 in events written before it existed.
    z: float = 0.0
    # A capacity forecast (anomaly_type "forecast", docs/forecasts.md): the limit, the
    # trend's rate per hour, the time to the limit with its band (hours, hours_low,
    # hours_high; eta_ms, eta_low_ms, eta_high_ms; null = not at this rate); None otherwise.
    forecast: dict | None = None


class Feedback(faust.Record, serializer="json", include_metadata=False):
    """An operator's verdict on an incident (a Telegram button), on the feedback topic.

    ``action`` is ``acknowledge``, ``mute``, ``not_anomaly`` (the labels a supervised
    model can learn from) or ``forget`` (undo what the series was taught). ``source`` says
    where it was given: ``telegram``, ``cli``. Key = incident id.

    ``pattern`` describes the incident a ``not_anomaly`` teaches the worker about
    (docs/feedback.md): ``anomaly_type``, ``direction`` (+1 above the expectation, −1
    below), ``peak_score`` (the incident's largest ``z``) and ``opened_ms``; None when
    unknown.
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
    pattern: dict | None = None


class AlertDeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A notification that could not be delivered: refused (a permanent error), or still
    failing after ``outage_max_s`` of retries. ``notification`` keeps the message (its
    incidents' events, without the chart) for ``vigil alerts redeliver``; None in records
    written before it existed."""

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
    notification: dict | None = None


def incident_pattern(events: list[AnomalyEvent], earlier: dict | None = None,
                     opened_ms: int | None = None) -> dict:
    """What "not an anomaly" on an incident teaches (:class:`Feedback`'s ``pattern``), from
    its events (oldest first): the first one's anomaly type and direction, the largest score,
    (``z``), when it opened (``opened_ms``, default the first event's time). ``earlier`` is the
    pattern of the incident's earlier events, kept where it was first told.

    >>> e = dict(event_id="", incident_id="i", kind="open", series="s", name="s", labels={},
    ...          ts="", ts_ms=60_000, value=9.0, expected=1.0, lower=0.0, upper=2.0,
    ...          score=1.0, severity="warning", anomaly_type="point", detectors=[], reason="",
    ...          z=7.5)
    >>> incident_pattern([AnomalyEvent(**e), AnomalyEvent(**{**e, "z": 9.0})])
    {'anomaly_type': 'point', 'direction': 1, 'peak_score': 9.0, 'opened_ms': 60000}
    """
    first = events[0]
    pattern = dict(earlier) if earlier else {
        "anomaly_type": first.anomaly_type,
        "direction": 1 if first.value > first.expected else -1,
        "peak_score": 0.0,
        "opened_ms": opened_ms or first.ts_ms,
    }
    pattern["peak_score"] = max([float(pattern["peak_score"]),
                                 *(float(e.z) for e in events if e.kind != "resolve")])
    return pattern


def verdict(action: str, events: list[AnomalyEvent], user: str, source: str = "cli"
            ) -> Feedback:
    """An operator's ``action`` (``not_anomaly`` or ``acknowledge``) on the incident whose
    ``events`` (oldest first) are given, as a feedback record: given by ``user`` from
    ``source`` (``cli``, ``dashboard``) now; a ``not_anomaly`` carries the incident's
    pattern (:func:`incident_pattern`)."""
    now_ms = int(time.time() * 1000)
    first = events[0]
    return Feedback(
        feedback_id=stable_id(source, action, first.incident_id, uuid.uuid4().hex),
        action=action,
        incident_id=first.incident_id,
        series=first.series,
        notification_id="",
        receiver="",
        user_id=0,
        user_name=user,
        chat_id=0,
        ts_ms=now_ms,
        ts=iso(now_ms),
        source=source,
        pattern=incident_pattern(events) if action == "not_anomaly" else None,
    )


#: The fields of :class:`AnomalyEvent`, in order.
EVENT_FIELDS: tuple[str, ...] = tuple(AnomalyEvent._options.fields)
