"""The generic webhook channel: every notification POSTed as one signed JSON body.

The body (``version`` 1, documented in docs/alerts.md#webhook) is the notification — kind,
receiver, group, subject and text — plus each incident with the fields of its
:class:`~vigil.events.AnomalyEvent` (without the chart context). It is the same bytes on every
attempt, so a receiver can dedupe on ``notification_id``. With a ``secret`` the header
``X-Vigil-Signature: sha256=<hex>`` carries the HMAC-SHA256 of the raw body.

The HTTP helpers here (:func:`post_json`, :class:`HttpDeliveryError`) are shared with the
Alertmanager channel: a 4xx answer other than 408 and 429 is permanent (dead-lettered at
once), a 5xx, a 408/429 or a connection failure is retried (``Retry-After`` honoured).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from vigil import __version__
from vigil.events import EVENT_FIELDS
from vigil.sinks.alerts import IncidentAlert, Notification, WebhookReceiver

__all__ = [
    "WEBHOOK_VERSION",
    "HttpDeliveryError",
    "HttpPoster",
    "WebhookChannel",
    "is_permanent_http_error",
    "is_transient_http_error",
    "sign",
    "webhook_body",
]

WEBHOOK_VERSION = 1
USER_AGENT = f"vigil/{__version__}"
_RETRIABLE_4XX = (408, 429)


class HttpDeliveryError(Exception):
    """An HTTP answer other than 2xx; ``permanent`` when another attempt cannot help."""

    def __init__(self, url: str, status: int, body: str, retry_after_s: float | None = None):
        super().__init__(f"{url} answered {status}: {body[:300]}")
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def permanent(self) -> bool:
        return 400 <= self.status < 500 and self.status not in _RETRIABLE_4XX


def is_permanent_http_error(exc: BaseException) -> bool:
    """A refused request (4xx but 408/429): not retried, dead-lettered at once.

    >>> is_permanent_http_error(HttpDeliveryError("u", 400, "")), \
is_permanent_http_error(HttpDeliveryError("u", 503, ""))
    (True, False)
    """
    return isinstance(exc, HttpDeliveryError) and exc.permanent


def is_transient_http_error(exc: BaseException) -> bool:
    """Failures that waiting may cure: a 5xx, 408 or 429 answer, a connection refused or
    dropped, a timeout (``OSError`` covers the last two).

    >>> is_transient_http_error(HttpDeliveryError("u", 503, "")), \
is_transient_http_error(HttpDeliveryError("u", 404, ""))
    (True, False)
    """
    if isinstance(exc, HttpDeliveryError):
        return not exc.permanent
    return isinstance(exc, aiohttp.ClientError | OSError)


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: fall back to the usual backoff
        return None


class HttpPoster:
    """One aiohttp session per channel, opened on first use (inside the running loop)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """POST ``body``; raises :class:`HttpDeliveryError` on a non-2xx answer (aiohttp's
        errors and timeouts on a failed connection — both retried by the delivery engine)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        async with self._session.post(url, data=body, headers=all_headers) as answer:
            if answer.status >= 300:
                text = await answer.text(errors="replace")
                raise HttpDeliveryError(url, answer.status, text,
                                        _retry_after_s(answer.headers.get("Retry-After")))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the raw body.

    >>> sign(b"s3cret", b'{"version":1}')
    'sha256=37d836ceeac029e78ae7c1aea23d20f2c8b7e6f4ad4b2eea354086f1917a30a5'
    """
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _incident(alert: IncidentAlert, kind: str) -> dict[str, Any]:
    event = alert.event
    status = "resolved" if kind == "resolved" or alert.resolved_ms is not None else "firing"
    return {
        "incident_id": event.incident_id,
        "status": status,
        "severity": event.severity,
        "escalation": alert.escalation,
        "events": alert.events,
        "opened_ms": alert.opened_ms,
        "resolved_ms": event.ts_ms if kind == "resolved" else alert.resolved_ms,
        "event": {name: getattr(event, name) for name in EVENT_FIELDS if name != "context"},
    }


def webhook_body(
    notification: Notification,
    group_by: Sequence[str],
    dashboard_url: str | None = None,
    previous: dict | None = None,
) -> dict[str, Any]:
    """The JSON body of ``notification`` (a dict; see docs/alerts.md#webhook)."""
    digest = notification.group == ("digest",)
    group = {} if digest else dict(zip(group_by, notification.group, strict=False))
    return {
        "version": WEBHOOK_VERSION,
        "notification_id": notification.id,
        "in_reply_to": (previous or {}).get("notification_id"),
        "kind": notification.kind,
        "receiver": notification.receiver,
        "group": group,
        "digest": digest,
        "severity": notification.severity,
        "subject": notification.subject(),
        "text": notification.text(dashboard_url),
        "dashboard_url": dashboard_url,
        "incidents": [_incident(a, notification.kind) for a in notification.incidents],
    }


class WebhookChannel:
    """POSTs each notification of one receiver to its URL."""

    name = "webhook"

    def __init__(self, receiver: WebhookReceiver, group_by: Sequence[str],
                 dashboard_url: str | None = None) -> None:
        self.receiver = receiver
        self.group_by = list(group_by)
        self.dashboard_url = dashboard_url
        self.http = HttpPoster(receiver.timeout_s)

    def request(self, notification: Notification, previous: dict | None = None
                ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one POST (the same on every attempt)."""
        body = orjson.dumps(
            webhook_body(notification, self.group_by, self.dashboard_url, previous)
        )
        headers = {**self.receiver.headers, "X-Vigil-Notification": notification.id}
        if self.receiver.secret is not None:
            secret = self.receiver.secret.get_secret_value().encode()
            headers["X-Vigil-Signature"] = sign(secret, body)
        return body, headers

    async def send(
        self,
        notification: Notification,
        chart_png: bytes | None,
        previous: dict | None,
        progress: dict | None = None,
    ) -> dict:
        """POST the notification; returns the id follow-ups name in ``in_reply_to``."""
        body, headers = self.request(notification, previous)
        await self.http.post(self.receiver.url, body, headers)
        return {"notification_id": (previous or {}).get("notification_id") or notification.id}

    async def close(self) -> None:
        await self.http.close()
