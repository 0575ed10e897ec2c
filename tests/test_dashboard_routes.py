"""The dashboard's routes over a real aiohttp server: the token, the live feed's fan-out, the
ClickHouse-backed JSON and the chart. ClickHouse is replaced here by a store that follows
the ``ClickHouseStore`` read contract (the browser test in test_dashboard.py runs the whole
thing against a real ClickHouse)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vigil.sinks import metrics
from vigil.sinks.dashboard import COOKIE, AnomalyFeed, Dashboard

TOKEN = "s3cret-token"
NOW = 1_700_000_000_000


def _event(n: int, kind: str = "open") -> dict:
    return {
        "event_id": f"e{n}", "incident_id": "inc1", "kind": kind, "series": 'cpu{host="a"}',
        "name": "cpu", "labels": {"host": "a"}, "ts": "", "ts_ms": NOW + n * 60_000,
        "value": 9.0, "expected": 1.0, "lower": 0.5, "upper": 1.5, "score": 12.0,
        "severity": "major", "anomaly_type": "point", "detectors": ["seasonal"],
        "reason": "way up", "context": {"ts_ms": [1], "value": [1.0]}, "z": 16.0,
    }


class ContractStore:
    """The read methods of ``ClickHouseStore`` with fixed answers, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def series_summary(self, since_ms):
        self.calls.append(("series_summary", since_ms))
        return [{"series": 'cpu{host="a"}', "name": "cpu", "labels": {"host": "a"},
                 "anomaly_count": 2, "last_anomaly_ms": NOW, "last_seen_ms": NOW}]

    def series_steps(self, series, since_ms, until_ms):
        self.calls.append(("series_steps", series, since_ms, until_ms))
        if series != 'cpu{host="a"}':
            return {k: [] for k in ("ts_ms", "value", "expected", "lower", "upper", "z",
                                    "anomalous")}
        n = 60
        return {"ts_ms": [NOW + i * 60_000 for i in range(n)],
                "value": [1.0] * (n - 1) + [9.0], "expected": [1.0] * n,
                "lower": [0.5] * n, "upper": [1.5] * n, "z": [0.1] * (n - 1) + [12.0],
                "anomalous": [0] * (n - 1) + [1]}

    def incident(self, incident_id):
        self.calls.append(("incident", incident_id))
        if incident_id != "inc1":
            return None
        event = {k: v for k, v in _event(1).items() if k != "context"}
        return {"incident_id": "inc1", "series": event["series"], "name": "cpu",
                "labels": {"host": "a"}, "opened_ms": NOW, "resolved_ms": None,
                "severity": "major", "anomaly_type": "point", "peak_score": 12.0,
                "events": [event], "feedback": [{"action": "acknowledge", "user_name": "ann",
                                                 "ts_ms": NOW, "source": "telegram"}]}

    def recent_events(self, limit):
        return [{k: v for k, v in _event(n).items() if k != "context"} for n in (3, 2)]


@pytest.fixture
async def client():
    store = ContractStore()
    feed = AnomalyFeed("unused:9092", "anomalies", backlog=10, client_queue=3,
                       seed=store.recent_events)
    await feed._seed()
    published = []

    async def publish(record) -> str:
        published.append(record)
        return "an offer" if record.action == "not_anomaly" else ""

    dashboard = Dashboard(TOKEN, feed, store, publish=publish)
    app = web.Application()
    dashboard.install(app)
    async with TestClient(TestServer(app)) as c:
        c.store, c.feed, c.dashboard, c.published = store, feed, dashboard, published
        yield c
    dashboard.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/events", "/dashboard/api/series",
                                  "/dashboard/api/incidents/inc1", "/dashboard/api/recent",
                                  "/dashboard/chart.png?series=cpu"])
async def test_every_route_refuses_a_missing_or_wrong_token(client, path):
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status == 401
    sep = "&" if "?" in path else "?"
    assert (await client.get(f"{path}{sep}token=nope")).status == 401
    assert client.store.calls == []  # nothing was read for a refused request


async def test_token_in_the_url_becomes_a_signed_session_cookie_and_leaves_the_url(client):
    response = await client.get(f"/dashboard?token={TOKEN}", allow_redirects=False)
    assert response.status == 302
    assert "token" not in response.headers["Location"]
    cookie = response.cookies[COOKIE]
    # A signed session that expires, never the long-lived token itself.
    assert TOKEN not in cookie.value and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert 0 < int(cookie["max-age"]) <= 12 * 3600
    assert not cookie["secure"]  # plain HTTP here; Secure behind TLS (below)
    page = await client.get("/dashboard")  # the client keeps the cookie
    assert page.status == 200
    html = await page.text()
    assert "EventSource" in html and "http://" not in html and "https://" not in html


async def test_series_steps_incident_json_from_the_store(client):
    series = await (await client.get("/dashboard/api/series?hours=6", headers=AUTH)).json()
    assert series["series"][0]["anomaly_count"] == 2
    assert client.store.calls[-1][0] == "series_summary"
    steps = await (await client.get("/dashboard/api/steps", headers=AUTH,
                                    params={"series": 'cpu{host="a"}', "hours": "1",
                                            "until_ms": str(NOW)})).json()
    assert len(steps["ts_ms"]) == 60
    assert client.store.calls[-1] == ("series_steps", 'cpu{host="a"}', NOW - 3_600_000, NOW)
    incident = await (await client.get("/dashboard/api/incidents/inc1", headers=AUTH)).json()
    assert incident["feedback"][0]["action"] == "acknowledge"
    assert (await client.get("/dashboard/api/incidents/nope", headers=AUTH)).status == 404
    bad = await client.get("/dashboard/api/series?hours=abc", headers=AUTH)
    assert bad.status == 400


async def test_verdicts_from_the_incident_view_are_published_as_feedback(client):
    url = "/dashboard/api/incidents/inc1/feedback"
    refused = await client.post(url, data=b'{"action": "not_anomaly"}')
    assert refused.status == 401 and client.published == []
    done = await client.post(url, headers=AUTH, data=b'{"action": "not_anomaly", "user": "ann"}')
    assert done.status == 200 and (await done.json())["offer"] == "an offer"
    (record,) = client.published
    assert (record.action, record.incident_id, record.user_name, record.source) == (
        "not_anomaly", "inc1", "ann", "dashboard")
    assert record.pattern == {"anomaly_type": "point", "direction": 1, "peak_score": 16.0,
                              "opened_ms": NOW + 60_000}
    ack = await client.post(url, headers=AUTH, data=b'{"action": "acknowledge"}')
    assert ack.status == 200 and client.published[-1].pattern is None
    assert client.published[-1].user_name == "dashboard"
    for body, status in ((b'{"action": "mute"}', 400), (b"junk", 400)):
        assert (await client.post(url, headers=AUTH, data=body)).status == status
    missing = await client.post("/dashboard/api/incidents/nope/feedback", headers=AUTH,
                                data=b'{"action": "acknowledge"}')
    assert missing.status == 404 and len(client.published) == 2


async def test_chart_is_a_png_of_the_stored_steps(client):
    response = await client.get("/dashboard/chart.png", headers=AUTH,
                                params={"series": 'cpu{host="a"}', "until_ms": str(NOW + 1)})
    assert response.status == 200 and response.content_type == "image/png"
    body = await response.read()
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 5_000
    empty = await client.get("/dashboard/chart.png", headers=AUTH, params={"series": "none"})
    assert empty.status == 404


async def _read_sse(response, count: int) -> list[tuple[str, dict]]:
    events, name = [], None
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, orjson.loads(line[len("data: "):])))
    return events


async def test_feed_sends_the_backlog_then_live_events_without_context(client):
    response = await client.get("/dashboard/events", headers=AUTH)
    assert response.headers["Content-Type"] == "text/event-stream"
    first = await _read_sse(response, 3)
    assert [(n, e.get("event_id")) for n, e in first] == [
        ("backlog", "e2"), ("backlog", "e3"), ("ready", None)]
    client.feed.publish(AnomalyFeed.slim(orjson.dumps(_event(4))))
    (name, event), = await _read_sse(response, 1)
    assert name == "anomaly" and event["event_id"] == "e4" and "context" not in event
    assert AnomalyFeed.slim(b"not json") is None and AnomalyFeed.slim(b"[1]") is None
    response.close()


async def test_a_slow_client_is_dropped_and_the_others_keep_receiving(client):
    dropped_before = metrics.DASHBOARD_CLIENTS_DROPPED._value.get()
    slow = client.feed.subscribe()
    fast = client.feed.subscribe()
    for n in range(5):  # the queues hold 3
        client.feed.publish(orjson.dumps({"event_id": f"x{n}"}))
        fast.queue.get_nowait()
    assert slow.dropped.is_set() and slow not in client.feed.subscribers
    assert fast in client.feed.subscribers and not fast.dropped.is_set()
    assert metrics.DASHBOARD_CLIENTS_DROPPED._value.get() == dropped_before + 1
    client.feed.unsubscribe(fast)


async def test_without_clickhouse_the_reads_say_so(client):
    feed = AnomalyFeed("unused:9092", "anomalies")
    app = web.Application()
    Dashboard(TOKEN, feed, store=None).install(app)
    async with TestClient(TestServer(app)) as c:
        response = await c.get("/dashboard/api/series", headers=AUTH)
        assert response.status == 503
        assert "VIGIL_CLICKHOUSE_URL" in (await response.json())["error"]


async def test_open_streams_end_when_the_server_shuts_down(client):
    # The web server waits for open requests when the worker stops: a live stream must end.
    response = await client.get("/dashboard/events", headers=AUTH)
    await _read_sse(response, 3)  # backlog and ready
    assert len(client.feed.subscribers) == 1
    await client.server.app.shutdown()
    rest = await asyncio.wait_for(response.content.read(), 5)  # EOF, not a hang
    assert b"anomaly" not in rest
    assert client.feed.subscribers == set()


@pytest.mark.parametrize("path", ["/dashboard/api/series", "/dashboard/chart.png?series=cpu",
                                  "/dashboard/api/recent"])
async def test_a_token_in_an_api_url_redirects_to_the_clean_url(client, path):
    sep = "&" if "?" in path else "?"
    response = await client.get(f"{path}{sep}token={TOKEN}", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == path
    assert client.store.calls == []  # nothing answered on the URL holding the token


async def test_the_raw_token_as_a_cookie_or_an_expired_session_opens_nothing(client):
    client.session.cookie_jar.update_cookies({COOKIE: TOKEN})
    assert (await client.get("/dashboard/api/recent")).status == 401
    expired = client.dashboard.session_cookie(now_s=time.time() - 13 * 3600)
    client.session.cookie_jar.update_cookies({COOKIE: expired})
    assert (await client.get("/dashboard/api/recent")).status == 401
    fresh = client.dashboard.session_cookie()
    client.session.cookie_jar.update_cookies({COOKIE: fresh})
    assert (await client.get("/dashboard/api/recent")).status == 200
    forged = fresh.rsplit(".", 1)[0] + ".0000"
    client.session.cookie_jar.update_cookies({COOKIE: forged})
    assert (await client.get("/dashboard/api/recent")).status == 401


async def test_the_session_cookie_is_secure_behind_tls(client):
    response = await client.get(f"/dashboard?token={TOKEN}", allow_redirects=False,
                                headers={"X-Forwarded-Proto": "https"})
    assert response.cookies[COOKIE]["secure"]


async def test_a_failed_clickhouse_read_answers_502_without_internals(client):
    def broken(*args):
        raise RuntimeError("Code: 81. DB::Exception: Database vigil_internal doesn't exist")

    client.store.series_summary = broken
    response = await client.get("/dashboard/api/series", headers=AUTH)
    assert response.status == 502
    body = await response.text()
    assert "DB::Exception" not in body and "vigil_internal" not in body
    assert "history store read failed" in body
