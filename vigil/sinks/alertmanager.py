"""The Alertmanager channel: incidents as alerts on Alertmanager's API v2 (``/api/v2/alerts``).

vigil then acts as Prometheus does towards Alertmanager: one alert per incident, identified
by its labels (the series' labels, ``alertname``, ``metric``, ``severity``,
``anomaly_type``), posted at the opening with ``startsAt``, re-posted every ``repeat_s``
while open with ``endsAt`` 4 × ``repeat_s`` ahead (so alerts of a notifier that stopped
expire on their own, and Alertmanager's ``resolve_timeout`` never ends one early), and
posted once more with ``endsAt`` at the resolve. Grouping, dedupe, silences and inhibition
are then Alertmanager's.

The open alerts of each receiver are kept in Redis (:class:`OpenAlerts`, implemented by
:class:`~vigil.sinks.delivery.NotifierStore`), so the re-posting survives restarts. An
ended alert stays there as a tombstone for a few rounds and is re-posted ended: a re-post
by another notifier process that raced with the resolve is corrected within ``repeat_s``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Protocol

import aiohttp
import orjson

from vigil.events import AnomalyEvent
from vigil.series import sanitise_label_key
from vigil.sinks.alerts import AlertmanagerReceiver, IncidentAlert, Notification
from vigil.sinks.webhook import HttpDeliveryError, HttpPoster
from vigil.times import iso
from vigil.times import now_ms as _now_ms

__all__ = ["AlertmanagerChannel", "OpenAlerts", "alertmanager_alert"]

log = logging.getLogger(__name__)

HOLD_REPEATS = 4  # a posted alert stays active this many repeat intervals without a re-post
TOMBSTONE_REPEATS = 3  # an ended alert is re-posted (ended) for this many intervals


class OpenAlerts(Protocol):
    """Where the alerts posted to one receiver's Alertmanager are remembered."""

    async def open_alerts(
        self, receiver: str, incident_ids: list[str] | None = None
    ) -> dict[str, dict]: ...
    async def put_open_alerts(self, receiver: str, alerts: dict[str, dict]) -> None: ...
    async def drop_open_alerts(self, receiver: str, incident_ids: list[str]) -> None: ...


def alertmanager_alert(
    event: AnomalyEvent,
    settings: AlertmanagerReceiver,
    opened_ms: int,
    dashboard_url: str | None = None,
) -> dict[str, Any]:
    """The alert of ``event``'s incident, without ``endsAt`` (postable to ``/api/v2/alerts``).

    >>> from vigil.sinks.alerts import AlertmanagerReceiver
    >>> class E: name, series, labels, severity, anomaly_type = "cpu", 'cpu{host="a"}', \
{"host": "a"}, "critical", "point"
    >>> E.incident_id, E.reason, E.value, E.expected, E.lower, E.upper = "i1", "high", 9, 5, 4, 6
    >>> alert = alertmanager_alert(E(), AlertmanagerReceiver(urls="http://am:9093"), 0)
    >>> alert["labels"]
    {'host': 'a', 'alertname': 'VigilAnomaly', 'metric': 'cpu', 'severity': 'critical', \
'anomaly_type': 'point'}
    >>> alert["startsAt"], alert["annotations"]["summary"]
    ('1970-01-01T00:00:00.000Z', 'cpu{host="a"}: critical point anomaly')
    """
    # Label names by Prometheus' rules (Alertmanager refuses others with a 400).
    labels = {sanitise_label_key(str(k)): str(v)
              for k, v in (event.labels or {}).items() if str(v) != ""}
    labels.update(settings.labels)
    labels.update(alertname=settings.alertname, metric=event.name, severity=event.severity,
                  anomaly_type=event.anomaly_type)
    kind = event.anomaly_type.replace("collective:", "").replace("_", " ")
    annotations = {
        "summary": f"{event.series}: {event.severity} {kind} anomaly",
        "description": event.reason,
        "series": event.series,
        "value": f"{event.value:.6g}",
        "expected": f"{event.expected:.6g} [{event.lower:.6g} … {event.upper:.6g}]",
        "incident_id": event.incident_id,
    }
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations,
                             "startsAt": _rfc3339(opened_ms)}
    if dashboard_url:
        annotations["dashboard"] = dashboard_url
        if dashboard_url.startswith(("http://", "https://")):  # else a 400: not a URL
            alert["generatorURL"] = dashboard_url
    return alert


def _rfc3339(ts_ms: int) -> str:
    text = iso(ts_ms, keep_ms=True)
    return text if "." in text else text[:-1] + ".000Z"


class AlertmanagerChannel:
    """Posts one receiver's incidents to its Alertmanagers and keeps them active."""

    name = "alertmanager"

    def __init__(
        self,
        receiver_name: str,
        settings: AlertmanagerReceiver,
        store: OpenAlerts,
        dashboard_url: str | None = None,
    ) -> None:
        self.receiver_name = receiver_name
        self.settings = settings
        self.store = store
        self.dashboard_url = dashboard_url
        self.http = HttpPoster(settings.timeout_s)
        self.repeat_s = settings.repeat_s
        # One post at a time: a re-post must not revive an alert a resolve just ended.
        self._lock = asyncio.Lock()

    # --- HTTP -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        s = self.settings
        if s.bearer_token is not None:
            return {"Authorization": f"Bearer {s.bearer_token.get_secret_value()}"}
        if s.username is not None and s.password is not None:
            pair = f"{s.username}:{s.password.get_secret_value()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    async def post(self, alerts: list[dict]) -> None:
        """POST ``alerts`` to every Alertmanager; done when at least one accepted them (as
        Prometheus counts it), else raises the first failure."""
        if not alerts:
            return
        body = orjson.dumps(alerts)
        headers = self._headers()
        failures: list[BaseException] = []
        for url in self.settings.urls:
            try:
                await self.http.post(f"{url}/api/v2/alerts", body, headers)
            except (HttpDeliveryError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failures.append(exc)
        if len(failures) == len(self.settings.urls):
            raise failures[0]
        for exc in failures:
            log.warning("alertmanager receiver %s: one Alertmanager refused: %s",
                        self.receiver_name, exc)

    # --- notifications ----------------------------------------------------------------------

    async def send(
        self,
        notification: Notification,
        chart_png: bytes | None,
        previous: dict | None,
        progress: dict | None = None,
    ) -> dict:
        """Post the notification's incidents (opened, escalated or ended) as alerts."""
        async with self._lock:
            now = _now_ms()
            ids = [item.event.incident_id for item in notification.incidents]
            stored = await self.store.open_alerts(self.receiver_name, ids)
            posts: list[dict] = []
            keep: dict[str, dict] = {}  # incident → what to remember of it
            for item in notification.incidents:
                before = stored.get(item.event.incident_id)
                if notification.kind == "resolved":
                    self._resolved(item, before, now, posts, keep)
                else:
                    self._opened(item, before, now, posts, keep)
            await self.post(posts)
            await self.store.put_open_alerts(self.receiver_name, keep)
        return {"alerts": len(posts)}

    def _resolved(self, item: IncidentAlert, before: dict | None, now: int,
                  posts: list[dict], keep: dict[str, dict]) -> None:
        event = item.event
        # The labels of the alert posted (a resolve's own severity is "none").
        alert = before or self._alert(event, item.opened_ms or event.ts_ms)
        ended = max(event.ts_ms, alert["opened_ms"])
        posts.append(self._ended(alert, ended))
        keep[event.incident_id] = {**alert, "ended_ms": ended, "dropped_ms": now}

    def _opened(self, item: IncidentAlert, before: dict | None, now: int,
                posts: list[dict], keep: dict[str, dict]) -> None:
        event = item.event
        if before is not None and before.get("ended_ms") is not None:
            before = None  # a tombstone: that alert was already ended
        opened = (before or {}).get("opened_ms") or item.opened_ms or event.ts_ms
        alert = self._alert(event, opened)
        if before is not None and before["labels"] != alert["labels"]:
            posts.append(self._ended(before, now))  # escalated: the old labels end
        if item.resolved_ms is not None:  # over before its first post
            ended = max(item.resolved_ms, opened)
            posts.append(self._ended(alert, ended))
            keep[event.incident_id] = {**alert, "ended_ms": ended, "dropped_ms": now}
        else:
            posts.append(self._firing(alert, now))
            keep[event.incident_id] = alert

    def _alert(self, event: AnomalyEvent, opened_ms: int) -> dict:
        alert = alertmanager_alert(event, self.settings, opened_ms, self.dashboard_url)
        alert["opened_ms"] = opened_ms
        return alert

    def _firing(self, alert: dict, now_ms: int) -> dict:
        out = {k: v for k, v in alert.items() if k not in ("opened_ms", "ended_ms", "dropped_ms")}
        out["endsAt"] = _rfc3339(now_ms + int(HOLD_REPEATS * self.repeat_s * 1000))
        return out

    def _ended(self, alert: dict, ended_ms: int) -> dict:
        out = {k: v for k, v in alert.items() if k not in ("opened_ms", "ended_ms", "dropped_ms")}
        out["endsAt"] = _rfc3339(ended_ms)
        return out

    async def repost(self) -> int:
        """Re-post every open alert (and recent tombstones, ended); returns how many."""
        async with self._lock:
            now = _now_ms()
            stored = await self.store.open_alerts(self.receiver_name)
            posts, expired = [], []
            for incident_id, alert in stored.items():
                if alert.get("ended_ms") is None:
                    posts.append(self._firing(alert, now))
                elif now - alert.get("dropped_ms", 0) > TOMBSTONE_REPEATS * self.repeat_s * 1000:
                    expired.append(incident_id)
                else:
                    posts.append(self._ended(alert, alert["ended_ms"]))
            await self.post(posts)
            if expired:
                await self.store.drop_open_alerts(self.receiver_name, expired)
            return len(posts)

    async def close(self) -> None:
        await self.http.close()
