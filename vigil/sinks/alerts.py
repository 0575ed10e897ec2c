"""Alert configuration and the noise-control stages of the notifier, with no I/O.

The notifier follows Prometheus Alertmanager's notify pipeline: each stage has one job and a
channel (email, Telegram) only knows how to deliver a message::

    anomaly event ──route──► receivers ──silence──► dedupe ──group──► rate-limit/digest ──send
                  (matchers)            (mutes)    (per incident)  (host, window)   (retry, DLQ)

This module holds the pure parts — the configuration models, :class:`Matcher`,
:class:`Router`, :class:`Silence`, :class:`Grouper`, :class:`RateLimiter` and the rendering of
a :class:`Notification` into text — so they can be tested without servers. The Faust agent
that drives them, the Redis records that make them survive restarts, and the retries live in
:mod:`vigil.sinks.delivery`; the channels in :mod:`vigil.sinks.email` and
:mod:`vigil.sinks.telegram`.

Events are the one :class:`~vigil.events.AnomalyEvent` schema shared by every room.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from vigil.events import AnomalyEvent, severity_rank
from vigil.times import iso_to_ms

__all__ = [
    "AlertingConfig",
    "AlertmanagerReceiver",
    "EmailReceiver",
    "Grouper",
    "Matcher",
    "Notification",
    "PendingGroup",
    "RateLimiter",
    "Receiver",
    "Route",
    "Router",
    "Silence",
    "SmtpSettings",
    "TelegramReceiver",
    "TelegramSettings",
    "WebhookReceiver",
    "alert_labels",
    "severity_rank",
]

def alert_labels(event: AnomalyEvent) -> dict[str, str]:
    """The labels routes and silences match on: the series' own labels plus
    ``__name__`` (metric), ``__series__`` (the series id), ``severity`` and ``anomaly_type``.

    >>> class E: name, series, labels, severity, anomaly_type = "cpu", 'cpu{host="a"}', \
{"host": "a"}, "warning", "point"
    >>> sorted(alert_labels(E()).items())[:3]
    [('__name__', 'cpu'), ('__series__', 'cpu{host="a"}'), ('anomaly_type', 'point')]
    """
    labels = {str(k): str(v) for k, v in (event.labels or {}).items()}
    labels["__name__"] = event.name
    labels["__series__"] = event.series
    labels["severity"] = event.severity
    labels["anomaly_type"] = event.anomaly_type
    return labels


# ---------------------------------------------------------------------------------------------
# Matchers, routes and silences

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$')


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager-style label matcher: ``host="db-1"``, ``__name__=~"disk_.*"``.

    ``=`` and ``!=`` compare strings; ``=~`` and ``!~`` match a regex against the whole value.
    A missing label is the empty string, as in Alertmanager.

    >>> m = Matcher.parse('__name__=~"disk_.*"')
    >>> m.matches({"__name__": "disk_used_percent"}), m.matches({"__name__": "cpu"})
    (True, False)
    >>> Matcher.parse('host!=db-1').matches({})
    True
    """

    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        found = _MATCHER.match(text)
        if not found:
            raise ValueError(f"not a matcher: {text!r} (expected label=\"value\", =~, != or !~)")
        label, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        matcher = cls(label, op, value)  # type: ignore[arg-type]
        if op in ("=~", "!~"):
            try:
                matcher._regex()
            except re.error as exc:
                raise ValueError(f"bad regex in matcher {text!r}: {exc}") from None
        return matcher

    def _regex(self) -> re.Pattern:
        return _compiled(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self._regex().fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


_REGEX_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    regex = _REGEX_CACHE.get(pattern)
    if regex is None:
        regex = _REGEX_CACHE[pattern] = re.compile(pattern)
    return regex


def _parse_matchers(value: Any) -> list[Matcher]:
    if value is None:
        return []
    if isinstance(value, Mapping):  # {host: db-1} is shorthand for equality matchers
        return [Matcher(str(k), "=", str(v)) for k, v in value.items()]
    if isinstance(value, str):
        value = [value]
    return [m if isinstance(m, Matcher) else Matcher.parse(str(m)) for m in value]


def all_match(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)


class _Matched(_Model):
    """A model with ``matchers``: a list of matcher strings, or a mapping for equality."""

    matchers: list[Matcher] = Field(default_factory=list)

    @field_validator("matchers", mode="before")
    @classmethod
    def _matchers(cls, value: Any) -> list[Matcher]:
        return _parse_matchers(value)

    @field_serializer("matchers")
    def _matchers_text(self, matchers: list[Matcher]) -> list[str]:
        return [str(m) for m in matchers]


class Route(_Matched):
    """Events whose labels match all ``matchers`` go to ``receivers``.

    Routes are tried in order; the first match wins unless it says ``continue: true``.
    """

    receivers: list[str]
    continue_: bool = Field(False, alias="continue")


class Silence(_Matched):
    """A time-boxed mute: events matching all ``matchers`` between ``starts`` and ``ends``
    are not sent. Set in the settings file, with ``vigil silence add`` or Telegram's Mute."""

    id: str = ""
    starts_ms: int = 0
    ends_ms: int
    created_by: str = "config"
    comment: str = ""

    @model_validator(mode="after")
    def _not_everything(self) -> Silence:
        if not self.matchers:
            raise ValueError("a silence needs at least one matcher")
        return self

    @field_validator("ends_ms", "starts_ms", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        # Accept ISO-8601 in the settings file ("2026-12-01T08:00:00Z") as well as epoch ms.
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            return iso_to_ms(value)
        return value

    def active(self, now_ms: int) -> bool:
        return self.starts_ms <= now_ms < self.ends_ms

    def mutes(self, labels: Mapping[str, str], now_ms: int) -> bool:
        return self.active(now_ms) and all_match(self.matchers, labels)

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.ends_ms / 1000, timezone.utc)
        matchers = ", ".join(str(m) for m in self.matchers)
        return f"{matchers} until {until:%Y-%m-%d %H:%M} UTC ({self.created_by}: {self.comment})"


class EmailReceiver(_Model):
    to: list[str] = Field(min_length=1)


class TelegramReceiver(_Model):
    chat_ids: list[int] = Field(min_length=1)


def _secret_from(value: Any) -> Any:
    """A receiver's secret as written in the settings file: the text itself, or
    ``{env: NAME}`` (read from that environment variable) or ``{file: /path}`` (its contents,
    stripped) — receivers are a list, so ``VIGIL_*`` variables cannot reach into them.

    >>> import os; os.environ["DOCTEST_SECRET"] = "x1"
    >>> _secret_from({"env": "DOCTEST_SECRET"}), _secret_from("plain")
    ('x1', 'plain')
    """
    if not isinstance(value, Mapping):
        return value
    if set(value) == {"env"}:
        found = os.environ.get(str(value["env"]))
        if found is None:
            raise ValueError(f"environment variable {value['env']} (a receiver's secret) is "
                             "not set")
        return found
    if set(value) == {"file"}:
        try:
            return Path(str(value["file"])).read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read a receiver's secret from {value['file']}: {exc}"
            ) from None
    raise ValueError("a secret is text, {env: NAME} or {file: /path}")


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


class AlertmanagerReceiver(_Model):
    """Hand incidents to Prometheus Alertmanager (API v2): one alert per incident, re-posted
    while it is open, ended when it resolves. Alertmanager then groups, dedupes, silences
    and routes them itself (docs/alertmanager.md)."""

    urls: list[str] = Field(
        min_length=1,
        description="Alertmanager base URLs (http://alertmanager:9093); each gets every alert, "
        "as Prometheus does with an Alertmanager cluster.",
    )
    alertname: str = Field("VigilAnomaly", description="The alerts' `alertname` label.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on every alert (e.g. team: dba)."
    )
    repeat_s: float = Field(
        60.0, gt=0,
        description="Re-post open incidents this often; each post holds the alert active for "
        "4× this (as Prometheus does), so a stopped notifier's alerts expire on their own.",
    )
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one post in seconds.")
    username: str | None = Field(None, description="Basic auth user (with `password`).")
    password: SecretStr | None = Field(
        None, description="Basic auth password: text, `{env: NAME}` or `{file: /path}`."
    )
    bearer_token: SecretStr | None = Field(
        None, description="Sent as `Authorization: Bearer …` (instead of basic auth); text, "
        "`{env: NAME}` or `{file: /path}`."
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"alertmanager: not label names: {', '.join(bad)}")
        return value

    @field_validator("password", "bearer_token", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return _secret_from(value)

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, value: list[str]) -> list[str]:
        return [_http_url(u) for u in value]

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerReceiver:
        if self.bearer_token is not None and self.username is not None:
            raise ValueError("alertmanager: set either username/password or bearer_token")
        if (self.username is None) != (self.password is None):
            raise ValueError("alertmanager: basic auth needs both username and password")
        return self


class WebhookReceiver(_Model):
    """POST every notification as JSON (body: docs/alerts.md#webhook), signed with HMAC-SHA256
    when a ``secret`` is set."""

    url: str = Field(description="Where the JSON body is POSTed.")
    secret: SecretStr | None = Field(
        None, description="Signs the body: header `X-Vigil-Signature: sha256=<hex HMAC>`. "
        "Text, `{env: NAME}` or `{file: /path}`."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers (e.g. an API key)."
    )
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one POST in seconds.")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("secret", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return _secret_from(value)


class Receiver(_Model):
    """A named set of destinations; a route names receivers, never addresses."""

    name: str
    email: EmailReceiver | None = None
    telegram: TelegramReceiver | None = None
    alertmanager: AlertmanagerReceiver | None = None
    webhook: WebhookReceiver | None = None

    @model_validator(mode="after")
    def _has_destination(self) -> Receiver:
        if not (self.email or self.telegram or self.alertmanager or self.webhook):
            raise ValueError(f"receiver {self.name!r} has no destination "
                             "(email, telegram, alertmanager or webhook)")
        return self


class SmtpSettings(_Model):
    host: str = "127.0.0.1"
    port: int = 25
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = Field(None, description="Set with VIGIL_ALERTS__SMTP__PASSWORD.")
    sender: str = "vigil@localhost"
    timeout_s: float = 10.0
    validate_certs: bool = True


class TelegramSettings(_Model):
    token: SecretStr | None = Field(None, description="Set with VIGIL_ALERTS__TELEGRAM__TOKEN.")
    api_url: str | None = Field(
        None, description="Bot API server (default Telegram's); a local one for tests."
    )
    allowed_chat_ids: list[int] = Field(
        default_factory=list,
        description="Chats whose button presses are accepted (default: every receiver's chats).",
    )
    allowed_user_ids: list[int] = Field(
        default_factory=list,
        description="Telegram user ids whose button presses are accepted, in an allowed chat "
        "(empty: no press is accepted — any member of a group could otherwise mute alerts).",
    )
    poll_updates: bool = Field(True, description="Read button presses with getUpdates.")
    poll_timeout_s: int = 20


class AlertingConfig(_Model):
    """The ``alerts:`` section of the settings file (a full example: docs/alerts.md)."""

    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    default_receivers: list[str] = Field(
        default_factory=list, description="Receivers of events that match no route."
    )
    group_by: list[str] = Field(["host"], description="Labels whose values form one message.")
    group_wait_s: float = Field(10.0, ge=0, description="Wait for more events of a group.")
    rate_limit_per_minute: float = Field(
        20.0, gt=0, description="Messages per receiver per minute; the excess is one digest."
    )
    retry_attempts: int = Field(
        6, ge=1, description="Delivery attempts before dead-lettering a message that failed "
        "with an error of no known kind (a transient one waits, up to outage_max_s; a "
        "permanent one is dead-lettered at once)."
    )
    retry_initial_s: float = Field(1.0, gt=0, description="First wait between attempts.")
    retry_max_s: float = Field(
        30.0, gt=0, description="Longest wait between attempts (exponential, with jitter)."
    )
    outage_max_s: float = Field(
        86_400.0, gt=0, description="How long a receiver keeps retrying one message through "
        "transient errors (server unreachable, timeouts, 4xx mail answers, HTTP 5xx) before "
        "dead-lettering it; `vigil alerts redeliver` sends dead letters again."
    )
    queue_max_messages: int = Field(
        100, ge=2, description="Messages a receiver holds while it cannot deliver; when "
        "full, the queued ones become one digest per kind (firing, resolved)."
    )
    second_opinion_model: str | None = Field(
        None, description="A model file from `vigil train --feedback`: each opening's message "
        "says how likely operators would call it real (docs/feedback.md).")
    second_opinion_hold_below: float = Field(
        0.0, ge=0, lt=1, description="Hold back openings the second opinion gives a "
        "probability under this (and the rest of their incident); 0 = never.")
    send_resolved: bool = True
    max_event_age_s: float = Field(
        6 * 3600, gt=0, description="Older events (a backfill, a long outage) are not sent."
    )
    silences: list[Silence] = Field(default_factory=list)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    dashboard_url: str | None = Field(None, description="Linked from every message if set.")

    @model_validator(mode="after")
    def _known_receivers(self) -> AlertingConfig:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receiver names must be unique")
        wanted = set(self.default_receivers)
        for route in self.routes:
            wanted.update(route.receivers)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"routes name unknown receivers: {', '.join(sorted(unknown))}")
        for i, silence in enumerate(self.silences):
            if not silence.id:
                silence.id = f"config-{i}"
        return self

    def receiver(self, name: str) -> Receiver:
        for receiver in self.receivers:
            if receiver.name == name:
                return receiver
        raise KeyError(name)

    def telegram_chats(self) -> set[int]:
        """Chats allowed to press buttons: the configured allow-list, else every receiver's."""
        if self.telegram.allowed_chat_ids:
            return set(self.telegram.allowed_chat_ids)
        return {c for r in self.receivers if r.telegram for c in r.telegram.chat_ids}


class Router:
    """Stage 1: which receivers an event goes to.

    >>> config = AlertingConfig(
    ...     receivers=[{"name": "db", "email": {"to": ["db@x"]}},
    ...                {"name": "ops", "telegram": {"chat_ids": [1]}}],
    ...     routes=[{"matchers": ['host=~"db-.*"'], "receivers": ["db"], "continue": True},
    ...             {"matchers": ['severity="critical"'], "receivers": ["ops"]}],
    ...     default_receivers=["ops"])
    >>> router = Router(config)
    >>> router.receivers({"host": "db-1", "severity": "critical"})
    ['db', 'ops']
    >>> router.receivers({"host": "db-1", "severity": "warning"})
    ['db']
    >>> router.receivers({"host": "web-1", "severity": "warning"})  # no route: the default
    ['ops']
    """

    def __init__(self, config: AlertingConfig) -> None:
        self.config = config

    def receivers(self, labels: Mapping[str, str]) -> list[str]:
        chosen: list[str] = []
        matched = False
        for route in self.config.routes:
            if all_match(route.matchers, labels):
                matched = True
                chosen.extend(r for r in route.receivers if r not in chosen)
                if not route.continue_:
                    return chosen
        if not matched:
            return list(self.config.default_receivers)
        return chosen


# ---------------------------------------------------------------------------------------------
# Grouping and notifications


@dataclass
class IncidentAlert:
    """What one message says about one incident: its most severe event so far."""

    event: AnomalyEvent
    events: int = 1
    escalation: bool = False  # an earlier message already reported this incident
    resolved_ms: int | None = None  # resolved before its first message went out
    opened_ms: int | None = None  # when the incident started (resolve messages)
    # The second opinion (docs/feedback.md): P(a real anomaly) and the verdicts it learned from.
    opinion: tuple[float, int] | None = None

    @property
    def severity(self) -> str:
        return self.event.severity


@dataclass
class Notification:
    """One message to one receiver: a group of incidents (firing) or of resolutions."""

    receiver: str
    kind: Literal["firing", "resolved"]
    group: tuple[str, ...]
    incidents: list[IncidentAlert]
    id: str = ""
    acks: list[Any] = field(default_factory=list)  # opaque: acked once delivered or dead-lettered

    @property
    def severity(self) -> str:
        return max((a.severity for a in self.incidents), key=severity_rank, default="warning")

    def lead(self) -> IncidentAlert:
        """The incident the chart shows: the most severe, then the highest score."""
        return max(self.incidents, key=lambda a: (severity_rank(a.severity), a.event.score))

    def host(self) -> str:
        hosts = sorted({str(a.event.labels.get("host", "")) for a in self.incidents} - {""})
        return ", ".join(hosts[:3]) + (f" +{len(hosts) - 3}" if len(hosts) > 3 else "")

    def subject(self) -> str:
        """``[vigil] CRITICAL db-1: cpu_usage (level shift)``; resolves say RESOLVED."""
        where = self.host() or self.lead().event.name
        if self.kind == "resolved":
            head = "RESOLVED"
        else:
            head = self.severity.upper()
        if all(a.event.anomaly_type == "no_data" for a in self.incidents):
            # Stopped series (docs/stopped-series.md): "50 series stopped reporting".
            n = len(self.incidents)
            what = (f"{self.incidents[0].event.name}" if n == 1 else f"{n} series") + (
                " reporting again" if self.kind == "resolved" else " stopped reporting")
        elif len(self.incidents) == 1:
            event = self.incidents[0].event
            what = f"{event.name} ({_kind_words(event.anomaly_type)})"
        else:
            names = sorted({a.event.name for a in self.incidents})
            what = f"{len(self.incidents)} anomalies ({', '.join(names[:3])}"
            what += ", …)" if len(names) > 3 else ")"
        return f"[vigil] {head} {where}: {what}"

    def text(self, dashboard_url: str | None = None, limit: int | None = None) -> str:
        """Plain-text body; ``limit`` truncates with a count of what was left out."""
        lines = [self.subject().removeprefix("[vigil] "), ""]
        shown = 0
        compact = len(self.incidents) > 1  # one line per incident in a group
        for alert in sorted(self.incidents, key=lambda a: -severity_rank(a.severity)):
            block = _incident_lines(alert, self.kind, compact)
            candidate = "\n".join(lines + block)
            if limit is not None and shown and len(candidate) > limit - 40:
                lines.append(f"… and {len(self.incidents) - shown} more")
                break
            lines.extend(block)
            shown += 1
        if dashboard_url:
            lines.append(f"Dashboard: {dashboard_url}")
        body = "\n".join(lines).rstrip()
        if limit is not None and len(body) > limit:
            body = body[: limit - 1] + "…"
        return body

    def html(self, chart_cid: str | None = None, dashboard_url: str | None = None) -> str:
        esc = html.escape
        colour = {"critical": "#b00020", "warning": "#b26a00"}.get(self.severity, "#2e7d32")
        if self.kind == "resolved":
            colour = "#2e7d32"
        rows = []
        for alert in sorted(self.incidents, key=lambda a: -severity_rank(a.severity)):
            e = alert.event
            if self.kind == "resolved":
                state = esc(_resolved_words(alert))
            else:
                state = esc(f"{_follow_up_words(alert)}{e.severity}")
            rows.append(
                "<tr>"
                f"<td><code>{esc(e.series)}</code></td><td>{state}</td>"
                f"<td>{esc(_kind_words(e.anomaly_type))}</td>"
                f"<td>{_fmt(e.value)}</td><td>{_fmt(e.lower)} … {_fmt(e.upper)}</td>"
                f"<td>{esc(e.ts)}</td><td>{esc(e.reason)}</td>"
                "</tr>"
            )
        chart = f'<p><img src="cid:{chart_cid}" alt="chart"></p>' if chart_cid else ""
        link = (
            f'<p><a href="{esc(dashboard_url)}">Open the dashboard</a></p>' if dashboard_url else ""
        )
        return (
            "<html><body style=\"font-family:sans-serif\">"
            f"<h3 style=\"color:{colour}\">{esc(self.subject().removeprefix('[vigil] '))}</h3>"
            "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" "
            "style=\"border-collapse:collapse\">"
            "<tr><th>series</th><th>state</th><th>kind</th><th>value</th>"
            "<th>expected band</th><th>time (UTC)</th><th>why</th></tr>"
            + "".join(rows)
            + f"</table>{chart}{link}</body></html>"
        )


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.4g}"


def _kind_words(anomaly_type: str) -> str:
    return anomaly_type.replace("collective:", "").replace("_", " ")


#: How a follow-up message names the distinct anomaly an update tells (``AnomalyEvent.change``).
CHANGE_WORDS = {
    "direction": "new anomaly, the other way",
    "kind": "new anomaly of another kind",
    "larger": "new, much larger anomaly",
}


def _follow_up_words(alert: IncidentAlert) -> str:
    """What a message says before the severity of an incident told before: ``escalated to``,
    or the distinct anomaly an update tells (``change``)."""
    if not alert.escalation:
        return ""
    change = getattr(alert.event, "change", "")
    return f"{CHANGE_WORDS[change]}, " if change in CHANGE_WORDS else "escalated to "


def _resolved_words(alert: IncidentAlert) -> str:
    e = alert.event
    start = alert.opened_ms
    end = alert.resolved_ms or e.ts_ms
    if start is None:
        return "resolved"
    minutes = max(0, round((end - start) / 60_000))
    return f"resolved after {minutes} min"


def _duration_words(hours: float | None) -> str:
    """``45 min``, ``5 h``, ``3.5 days``; ``never at this rate`` for None.

    >>> [_duration_words(h) for h in (0.75, 5.2, 84.0, None)]
    ['45 min', '5 h', '3.5 days', 'never at this rate']
    """
    if hours is None or not math.isfinite(hours):
        return "never at this rate"
    if hours < 1.0:
        return f"{max(1, round(hours * 60))} min"
    if hours < 48.0:
        return f"{round(hours)} h"
    return f"{hours / 24:.1f} days"


def forecast_sentence(name: str, labels: Mapping[str, str], forecast: Mapping[str, Any],
                      resolved: bool = False) -> str:
    """What a capacity forecast (``AnomalyEvent.forecast``) says, for a person.

    >>> f = {"limit": 100.0, "hours": 5.2, "hours_low": 4.1, "hours_high": 7.3,
    ...      "rate_per_h": 2.1, "horizon_h": 24.0}
    >>> forecast_sentence("disk_used_percent", {"host": "db-01"}, f)
    'disk_used_percent on db-01 will reach 100 % in about 5 h (between 4 h and 7 h) at +2.1 %/h'
    """
    where = f" on {labels['host']}" if labels.get("host") else ""
    unit = " %" if name.endswith("_percent") else ""
    limit = forecast.get("limit")
    limit_text = f"{_fmt(limit)}{unit}" if limit is not None else "its limit"
    if resolved:
        return (f"{name}{where} no longer heads for {limit_text} within "
                f"{_duration_words(forecast.get('horizon_h'))}: now "
                f"{_duration_words(forecast.get('hours'))}")
    rate = float(forecast.get("rate_per_h") or 0.0)
    if forecast.get("hours") == 0:
        return f"{name}{where} has reached {limit_text}"
    return (f"{name}{where} will reach {limit_text} in about "
            f"{_duration_words(forecast.get('hours'))} (between "
            f"{_duration_words(forecast.get('hours_low'))} and "
            f"{_duration_words(forecast.get('hours_high'))}) at {rate:+.2g}{unit}/h")


def _incident_lines(alert: IncidentAlert, kind: str, compact: bool = False) -> list[str]:
    e = alert.event
    if kind == "resolved":
        return [f"✓ {e.series}: {_resolved_words(alert)}"]
    tag = _follow_up_words(alert)
    if e.anomaly_type == "no_data":  # no value to show: say since when
        return [f"• {e.series} — {e.severity}, {e.reason}"]
    extra = ""
    if alert.resolved_ms is not None:
        extra = f" — already over ({_resolved_words(alert)})"
    if getattr(e, "forecast", None):  # a capacity forecast: its sentence says it all
        head = f"• {e.series} — {tag}{e.severity}, forecast{extra}"
        return [f"{head}: {e.reason}"] if compact else [head, f"  {e.reason} (at {e.ts})"]
    if compact:
        return [
            f"• {e.series} — {tag}{e.severity}, {_kind_words(e.anomaly_type)}{extra}: "
            f"{_fmt(e.value)} (expected {_fmt(e.lower)} … {_fmt(e.upper)})"
        ]
    lines = [
        f"• {e.series} — {tag}{e.severity}, {_kind_words(e.anomaly_type)}{extra}",
        f"  value {_fmt(e.value)}, expected {_fmt(e.expected)} "
        f"[{_fmt(e.lower)} … {_fmt(e.upper)}] at {e.ts}",
        f"  {e.reason}",
    ]
    if alert.opinion is not None:
        p, verdicts = alert.opinion
        lines.append(f"  second opinion: {100 * p:.0f} % likely a real anomaly (learned from "
                     f"{verdicts} operators' verdicts)")
    return lines


@dataclass
class PendingGroup:
    """Incidents waiting for the group window to close before one message goes out."""

    notification: Notification
    due: float  # monotonic time at which to send


class Grouper:
    """Stage 4: incidents of one receiver and one group (e.g. one host) within
    ``group_wait_s`` become one :class:`Notification`; repeated events of an incident merge.

    >>> class E:
    ...     def __init__(self, i, sev="warning"):
    ...         self.incident_id, self.severity, self.labels = i, sev, {"host": "a"}
    ...         self.score, self.ts_ms = 1.0, 0
    >>> g = Grouper(["host"], wait_s=10)
    >>> _ = g.add("ops", "firing", E("i1"), now=0.0)
    >>> _ = g.add("ops", "firing", E("i1", "critical"), now=1.0)
    >>> _ = g.add("ops", "firing", E("i2"), now=2.0)
    >>> g.due(now=5.0)
    []
    >>> [(n.receiver, len(n.incidents), n.severity) for n in g.due(now=10.0)]
    [('ops', 2, 'critical')]
    """

    def __init__(self, group_by: Sequence[str], wait_s: float) -> None:
        self.group_by = list(group_by)
        self.wait_s = wait_s
        self.pending: dict[tuple, PendingGroup] = {}

    def key(self, event: Any) -> tuple[str, ...]:
        labels = event.labels or {}
        return tuple(str(labels.get(name, "")) for name in self.group_by)

    def find(self, receiver: str, kind: str, incident_id: str) -> IncidentAlert | None:
        for (r, k, _), group in self.pending.items():
            if r == receiver and k == kind:
                for alert in group.notification.incidents:
                    if alert.event.incident_id == incident_id:
                        return alert
        return None

    def add(
        self,
        receiver: str,
        kind: Literal["firing", "resolved"],
        event: Any,
        now: float | None = None,
        ack: Any = None,
        **details: Any,
    ) -> IncidentAlert:
        """Put ``event`` in its group (opening the group if needed); returns its entry."""
        now = time.monotonic() if now is None else now
        group_key = self.key(event)
        slot = (receiver, kind, group_key)
        group = self.pending.get(slot)
        if group is None:
            notification = Notification(receiver, kind, group_key, [])
            group = self.pending[slot] = PendingGroup(notification, now + self.wait_s)
        if ack is not None:
            group.notification.acks.append(ack)
        for alert in group.notification.incidents:
            if alert.event.incident_id == event.incident_id:
                alert.events += 1
                if severity_rank(event.severity) >= severity_rank(alert.severity):
                    alert.event = event
                for name, value in details.items():
                    if value is not None:
                        setattr(alert, name, value)
                return alert
        details.setdefault("opened_ms", event.ts_ms)
        alert = IncidentAlert(event, **details)
        group.notification.incidents.append(alert)
        return alert

    def due(self, now: float | None = None) -> list[Notification]:
        """Remove and return the groups whose window has closed."""
        now = time.monotonic() if now is None else now
        ready = [slot for slot, group in self.pending.items() if group.due <= now]
        return [self.pending.pop(slot).notification for slot in ready]

    def drain(self) -> list[Notification]:
        """Everything pending, regardless of its window (on shutdown)."""
        out = [group.notification for group in self.pending.values()]
        self.pending.clear()
        return out

    def next_due(self) -> float | None:
        return min((g.due for g in self.pending.values()), default=None)


def merge(notifications: Iterable[Notification]) -> Notification:
    """One digest of several notifications of one receiver and kind (rate limiting)."""
    items = list(notifications)
    first = items[0]
    digest = Notification(first.receiver, first.kind, ("digest",), [])
    seen: dict[str, IncidentAlert] = {}
    first_told = set()  # incidents whose first message is among the merged ones
    for n in items:
        digest.acks.extend(n.acks)
        for alert in n.incidents:
            key = alert.event.incident_id
            if not alert.escalation:
                first_told.add(key)
            if key not in seen or severity_rank(alert.severity) > severity_rank(seen[key].severity):
                seen[key] = alert
    # An escalation merged with its incident's first message is that first message.
    digest.incidents = [replace(a, escalation=False) if k in first_told else a
                        for k, a in seen.items()]
    return digest


class RateLimiter:
    """Stage 5: a token bucket per receiver (``rate`` messages per minute, burst of the same).

    >>> limiter = RateLimiter(per_minute=2)
    >>> limiter.wait_s("ops", now=0.0), limiter.wait_s("ops", now=0.0)
    (0.0, 0.0)
    >>> round(limiter.wait_s("ops", now=0.0), 1)
    30.0
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}

    def _level(self, receiver: str, now: float) -> float:
        tokens, last = self._tokens.get(receiver, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait_s(self, receiver: str, now: float | None = None) -> float:
        """Take a token if there is one (returns 0), else how long until there is one."""
        now = self.clock() if now is None else now
        tokens = self._level(receiver, now)
        if tokens >= 1.0:
            self._tokens[receiver] = (tokens - 1.0, now)
            return 0.0
        self._tokens[receiver] = (tokens, now)
        return (1.0 - tokens) / self.rate
