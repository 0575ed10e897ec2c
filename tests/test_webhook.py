"""The generic webhook receiver: a real HTTP server (aiohttp) receives signed JSON bodies; a
5xx is retried, a 4xx dead-lettered, and the body is the documented schema."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from tests.test_notifier import STEP_MS, Harness, make_event
from vigil.events import EVENT_FIELDS
from vigil.sinks.alerts import Grouper, Notification
from vigil.sinks.webhook import WebhookChannel, sign, webhook_body

SECRET = "s3cret-webhook"
BODY_KEYS = {"version", "notification_id", "in_reply_to", "kind", "receiver", "group",
             "digest", "severity", "subject", "text", "dashboard_url", "incidents"}
INCIDENT_KEYS = {"incident_id", "status", "severity", "escalation", "events", "opened_ms",
                 "resolved_ms", "event"}


class Hook:
    """An aiohttp server that answers with the queued statuses (then 200) and keeps every
    request it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.Response(status=status, text="nope" if status >= 300 else "ok",
                            headers=headers)

    def bodies(self) -> list[dict]:
        return [orjson.loads(body) for _, body in self.requests]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    server = Hook()
    app = web.Application()
    app.router.add_post("/hook", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield server
    finally:
        await runner.cleanup()


def hook_config(url: str, **extra) -> dict:
    config = {
        "receivers": [{"name": "automation", "webhook": {
            "url": url, "secret": SECRET, "headers": {"X-Api-Key": "k1"}}}],
        "default_receivers": ["automation"],
        "group_wait_s": 0.1,
        "retry_attempts": 4,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "dashboard_url": "https://grafana.example.com/d/vigil",
    }
    config.update(extra)
    return config


def verified(headers: dict, body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("X-Vigil-Signature", ""), expected)


@pytest.mark.integration
async def test_signed_body_then_resolve_in_reply(redis_url, hook):
    opened = make_event(series='cpu_usage{host="db-1"}', severity="critical")
    async with Harness(redis_url, hook_config(hook.url)) as h:
        await h.send(opened)
        await h.settle()
        await h.send(make_event(series=opened.series, kind="resolve", severity="none",
                                incident=opened.incident_id, ts_ms=opened.ts_ms + 5 * STEP_MS,
                                context=False))
        await h.settle()
    assert len(hook.requests) == 2 and h.dead_letters == []
    for headers, body in hook.requests:
        assert verified(headers, body)
        assert headers["X-Api-Key"] == "k1" and headers["Content-Type"] == "application/json"
    firing, resolved = hook.bodies()
    assert set(firing) == BODY_KEYS and firing["version"] == 1
    assert hook.requests[0][0]["X-Vigil-Notification"] == firing["notification_id"]
    assert (firing["kind"], firing["receiver"], firing["group"], firing["severity"]) == (
        "firing", "automation", {"host": "db-1"}, "critical")
    assert firing["dashboard_url"] in firing["text"]
    (incident,) = firing["incidents"]
    assert set(incident) == INCIDENT_KEYS and incident["status"] == "firing"
    assert set(incident["event"]) == set(EVENT_FIELDS) - {"context"}
    assert incident["event"]["reason"] == opened.reason
    assert incident["opened_ms"] == opened.ts_ms
    assert resolved["kind"] == "resolved" and resolved["in_reply_to"] == firing["notification_id"]
    assert resolved["incidents"][0]["resolved_ms"] == opened.ts_ms + 5 * STEP_MS
    assert "resolved after 5 min" in resolved["text"]


@pytest.mark.integration
async def test_server_errors_are_retried_and_refusals_dead_lettered(redis_url, hook):
    async with Harness(redis_url, hook_config(hook.url)) as h:
        hook.statuses = [500, 503, 429]  # transient: retried (Retry-After honoured)
        await h.send(make_event(series='cpu_usage{host="a"}'))
        await h.settle()
        assert len(hook.requests) == 4 and h.dead_letters == []
        # Every attempt carries the same bytes: the receiver can dedupe on notification_id.
        assert len({body for _, body in hook.requests}) == 1
        hook.statuses = [400]  # refused: another attempt cannot help
        await h.send(make_event(series='cpu_usage{host="b"}'))
        await h.settle()
        assert len(hook.requests) == 5
        hook.statuses = [500] * 10  # down for longer than retry_attempts: it waits
        await h.send(make_event(series='cpu_usage{host="c"}'))
        await h.settle()
    (refused,) = h.dead_letters
    assert refused.channel == "webhook" and refused.attempts == 1 and "400" in refused.error
    assert len(hook.requests) == 16 and len(h.acked) == 3


@pytest.mark.integration
async def test_nothing_listening_is_retried_for_outage_max_s_then_dead_lettered(redis_url):
    from vigil.devtools.embedded import free_port

    config = hook_config(f"http://127.0.0.1:{free_port()}/hook", retry_attempts=2,
                         outage_max_s=0.5)
    async with Harness(redis_url, config) as h:
        await h.send(make_event())
        await h.settle()
    (dead,) = h.dead_letters
    assert dead.attempts > 2 and "Connect" in dead.error


def test_body_of_a_group_lists_each_incident_and_a_digest_has_no_group():
    grouper = Grouper(["host", "dc"], wait_s=0)
    first = make_event(series='cpu_usage{host="db-1",dc="fra"}', context=False)
    second = make_event(series='mem_used{host="db-1",dc="fra"}', severity="critical",
                        context=False)
    grouper.add("ops", "firing", first, now=0.0, resolved_ms=first.ts_ms + STEP_MS)
    grouper.add("ops", "firing", second, now=0.0)
    (notification,) = grouper.due(now=1.0)
    notification.id = "n1"
    body = webhook_body(notification, ["host", "dc"])
    assert body["group"] == {"host": "db-1", "dc": "fra"} and not body["digest"]
    assert body["severity"] == "critical" and body["dashboard_url"] is None
    assert [i["status"] for i in body["incidents"]] == ["resolved", "firing"]
    assert body["incidents"][0]["resolved_ms"] == first.ts_ms + STEP_MS
    digest = Notification("ops", "firing", ("digest",), notification.incidents, id="n2")
    assert webhook_body(digest, ["host", "dc"])["group"] == {}
    assert webhook_body(digest, ["host", "dc"])["digest"] is True


def test_signature_covers_the_raw_body():
    from vigil.sinks.alerts import WebhookReceiver

    channel = WebhookChannel(WebhookReceiver(url="http://x/hook", secret=SECRET), ["host"])
    alert = Grouper(["host"], 0).add("ops", "firing", make_event(context=False), now=0)
    notification = Notification("ops", "firing", ("db-1",), [alert], id="n1")
    body, headers = channel.request(notification)
    assert verified(headers, body)
    assert not verified(headers, body.replace(b'"warning"', b'"critical"'))
    assert headers["X-Vigil-Signature"] == sign(SECRET.encode(), body)
    unsigned = WebhookChannel(WebhookReceiver(url="http://x/hook"), ["host"])
    assert "X-Vigil-Signature" not in unsigned.request(notification)[1]
