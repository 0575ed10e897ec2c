"""The live dashboard, served under ``/dashboard`` by the worker's own web server (aiohttp).

* ``/dashboard`` — one HTML page (``dashboard.html`` beside this file, no assets from the
  internet): the series with their anomaly counts, a live feed of anomaly events, a chart
  per series and an incident view with its events and operators' feedback.
* ``/dashboard/events`` — server-sent events. One :class:`AnomalyFeed` per worker reads the
  anomalies topic with a plain aiokafka consumer *without a group* (every partition, from
  the end), so every worker's dashboard sees every event, and fans each event out to the
  connected browsers through bounded queues: a browser that falls behind is disconnected
  (its ``EventSource`` reconnects) rather than slowing anything down.
* ``/dashboard/api/…`` — JSON read from the history store (the contract of
  :class:`vigil.sinks.store.HistoryStore`); the store's calls are synchronous and run
  in a thread.
* ``POST /dashboard/api/incidents/{id}/feedback`` — an operator's verdict (*Not an anomaly*,
  *Acknowledge*) published to the feedback topic, as the Telegram buttons do.
* ``/dashboard/chart.png`` — a series' steps drawn by :func:`vigil.sinks.charts.render_chart`
  in a separate process (drawing is CPU-bound and would hold the GIL against the loop).

Every dashboard route needs the ``dashboard_token`` setting's value as
``Authorization: Bearer <token>``, or a session: ``?token=<token>`` on any route answers a
redirect to the same URL without it and sets an HttpOnly, SameSite=Strict cookie holding a
signed expiry (12 h; ``Secure`` behind TLS), never the token. Anything else gets 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from vigil.events import EVENT_FIELDS, AnomalyEvent, Feedback, verdict
from vigil.sinks import metrics
from vigil.sinks.charts import chart_process_pool, render_chart

__all__ = ["AnomalyFeed", "Dashboard", "Subscriber", "check_token"]

log = logging.getLogger("vigil.dashboard")

COOKIE = "vigil_dashboard"
HOUR_MS = 3_600_000
MAX_HOURS = 24 * 31


SESSION_S = 12 * 3600


def check_token(request: web.Request, token: str) -> bool:
    """Whether ``request`` carries ``token`` (Bearer header or ``?token=``).

    Constant-time comparison, so the answer's timing says nothing about the token.
    """
    expected = token.encode()
    offered = []
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        offered.append(header[len("Bearer ") :].strip())
    offered.append(request.query.get("token", ""))
    return any(o and hmac.compare_digest(o.encode(), expected) for o in offered)


class Sessions:
    """Session cookies: ``<expiry epoch s>.<HMAC-SHA256 of it>`` under a key derived from
    the token (a new token ends every session).

    >>> s = Sessions("t0ken"); cookie = s.issue(now_s=1000)
    >>> s.valid(cookie, now_s=1000 + 60), s.valid(cookie, now_s=1000 + SESSION_S + 1)
    (True, False)
    """

    def __init__(self, token: str, lifetime_s: int = SESSION_S) -> None:
        self._key = hmac.new(token.encode(), b"vigil dashboard session", hashlib.sha256).digest()
        self.lifetime_s = lifetime_s

    def _sign(self, expiry: str) -> str:
        return hmac.new(self._key, expiry.encode(), hashlib.sha256).hexdigest()

    def issue(self, now_s: float | None = None) -> str:
        expiry = str(int((time.time() if now_s is None else now_s) + self.lifetime_s))
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, cookie: str, now_s: float | None = None) -> bool:
        expiry, _, signature = cookie.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(signature, self._sign(expiry)):
            return False
        return int(expiry) > (time.time() if now_s is None else now_s)


class Subscriber:
    """One connected browser: a bounded queue, and whether it was dropped for lagging."""

    #: Put in the queue to end the stream (server shutdown).
    END = b""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.dropped = asyncio.Event()

    def end(self) -> None:
        """Make the stream's handler return (at once when it waits for an event)."""
        self.dropped.set()
        with contextlib.suppress(asyncio.QueueFull):  # full: the handler is not waiting
            self.queue.put_nowait(self.END)


class AnomalyFeed:
    """Reads every partition of the anomalies topic (no consumer group) and fans out.

    It also keeps the last ``backlog`` events (seeded from ClickHouse when the feed starts),
    which a browser gets first when it connects. ``security`` holds aiokafka's security
    arguments (``Settings.kafka_aiokafka_security()``; none: plaintext).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        backlog: int = 100,
        client_queue: int = 500,
        seed: Callable[[int], list[dict]] | None = None,
        security: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = dict(security or {})
        self.topic = topic
        self.client_queue = client_queue
        self.recent: deque[bytes] = deque(maxlen=max(backlog, 1))
        self.backlog = backlog
        self.seed = seed
        self.subscribers: set[Subscriber] = set()
        self.running = False
        self.received = 0

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self.client_queue)
        self.subscribers.add(subscriber)
        metrics.DASHBOARD_CLIENTS.set(len(self.subscribers))
        return subscriber

    def close(self) -> None:
        """End every browser's stream (the web server waits for open requests on stop)."""
        for subscriber in list(self.subscribers):
            self.unsubscribe(subscriber)
            subscriber.end()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        metrics.DASHBOARD_CLIENTS.set(len(self.subscribers))

    def publish(self, data: bytes) -> None:
        """Hand one event (JSON bytes) to every browser; never waits."""
        self.recent.append(data)
        for subscriber in list(self.subscribers):
            try:
                subscriber.queue.put_nowait(data)
            except asyncio.QueueFull:
                self.unsubscribe(subscriber)
                subscriber.dropped.set()
                metrics.DASHBOARD_CLIENTS_DROPPED.inc()

    @staticmethod
    def slim(raw: bytes) -> bytes | None:
        """The event without its chart context (the browser draws charts from ClickHouse);
        None for a record that is not an anomaly event."""
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or "event_id" not in event:
            return None
        event.pop("context", None)
        return orjson.dumps(event)

    async def _seed(self) -> None:
        if self.seed is None or not self.backlog:
            return
        try:
            events = await asyncio.to_thread(self.seed, self.backlog)
        except Exception as exc:  # noqa: BLE001 - a dashboard without history still works
            log.warning("cannot read recent events from ClickHouse: %s", exc)
            return
        for event in reversed(events):  # newest first → oldest first
            event = dict(event)
            event.pop("context", None)
            self.recent.append(orjson.dumps(event, default=str))

    async def run(self) -> None:
        """Consume until cancelled; reconnects after a broker error."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        seeded = False
        positions: dict[int, int] = {}  # partition → next offset, to resume after an error
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                **self.security,
            )
            try:
                await consumer.start()
                partitions = None
                while not partitions:
                    await consumer.topics()  # refreshes the cluster metadata
                    partitions = consumer.partitions_for_topic(self.topic)
                    if not partitions:
                        await asyncio.sleep(1)  # the topic does not exist yet
                assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                fresh = [tp for tp in assigned if tp.partition not in positions]
                for tp in assigned:
                    if tp.partition in positions:
                        consumer.seek(tp, positions[tp.partition])
                if fresh:
                    await consumer.seek_to_end(*fresh)
                if not seeded:
                    # The backlog is read once the live start is fixed: an event may come
                    # both ways (browsers keep events by id), but none falls between.
                    await self._seed()
                    seeded = True
                self.running = True
                log.info("dashboard feed reads %s (%d partitions)", self.topic, len(assigned))
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                    for tp, records in batches.items():
                        positions[tp.partition] = records[-1].offset + 1
                        for record in records:
                            data = self.slim(record.value or b"")
                            if data is not None:
                                self.received += 1
                                self.publish(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the feed retries, the worker goes on
                log.warning("dashboard feed error (%s); retrying in 2 s", exc)
                await asyncio.sleep(2)
            finally:
                self.running = False
                with contextlib.suppress(Exception):
                    await consumer.stop()


class Dashboard:
    """The routes under ``/dashboard`` on an aiohttp application."""

    def __init__(
        self,
        token: str,
        feed: AnomalyFeed,
        store: Any | None = None,
        z_marked: float = 6.0,
        publish: Callable[[Feedback], Awaitable[str]] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the dashboard needs a non-empty token")
        self.token = token
        self.sessions = Sessions(token)
        self.feed = feed
        self.store = store
        self.z_marked = z_marked
        # Operators' verdicts to the feedback topic; answers the offer to teach the metric.
        self.publish = publish
        self._chart_pool: ProcessPoolExecutor | None = None

    def install(self, app: web.Application) -> None:
        """Add the routes to ``app`` (before it starts), and end the live streams when it
        shuts down — an open stream would otherwise hold up the worker's stop."""
        routes = [
            ("/dashboard", self.page),
            ("/dashboard/", self.page),
            ("/dashboard/events", self.events),
            ("/dashboard/api/recent", self.recent),
            ("/dashboard/api/series", self.series),
            ("/dashboard/api/steps", self.steps),
            ("/dashboard/api/incidents/{incident_id}", self.incident),
            ("/dashboard/chart.png", self.chart),
        ]
        for path, handler in routes:
            app.router.add_get(path, self._guarded(handler))
        app.router.add_post("/dashboard/api/incidents/{incident_id}/feedback",
                            self._guarded(self.feedback))
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.feed.close()
        self.close()

    # -- access -------------------------------------------------------------------------

    def session_cookie(self, now_s: float | None = None) -> str:
        """A session cookie's value, valid for 12 hours from ``now_s``."""
        return self.sessions.issue(now_s)

    def _guarded(self, handler):
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = request.cookies.get(COOKIE, "")
            if not (check_token(request, self.token)
                    or (session and self.sessions.valid(session))):
                return web.json_response(
                    {"error": "a dashboard token is required (Authorization: Bearer, or "
                              "?token= once)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="vigil dashboard"'},
                )
            if "token" in request.query:
                # Swap the token in the URL for a session cookie: the URL (history, logs,
                # Referer) never answers with the token still in it.
                rest = [(k, v) for k, v in request.query.items() if k != "token"]
                response = web.Response(
                    status=302, headers={"Location": str(request.rel_url.with_query(rest))}
                )
                tls = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
                response.set_cookie(
                    COOKIE, self.session_cookie(), httponly=True, samesite="Strict",
                    path="/dashboard", max_age=self.sessions.lifetime_s, secure=tls or None,
                )
                return response
            return await handler(request)

        return guarded

    # -- pages --------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        html = resources.files("vigil.sinks").joinpath("dashboard.html").read_text("utf-8")
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
            },
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the backlog, then every new anomaly event as it arrives."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        subscriber = self.feed.subscribe()
        try:
            backlog = list(self.feed.recent)
            await response.write(b"retry: 2000\n\n")
            for data in backlog:
                await response.write(b"event: backlog\ndata: " + data + b"\n\n")
            await response.write(b"event: ready\ndata: {}\n\n")
            while not subscriber.dropped.is_set():
                try:
                    data = await asyncio.wait_for(subscriber.queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")  # proxies close idle streams
                    continue
                if data == Subscriber.END:
                    break
                await response.write(b"event: anomaly\ndata: " + data + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(subscriber)
        return response

    async def recent(self, request: web.Request) -> web.StreamResponse:
        events = [orjson.loads(d) for d in self.feed.recent]
        return web.json_response({"events": events[::-1], "feed_running": self.feed.running})

    # -- history store reads (ClickHouse or PostgreSQL) -------------------------------------

    def _need_store(self) -> None:
        if self.store is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "no history store is configured (VIGIL_CLICKHOUSE_URL or '
                     'VIGIL_POSTGRES_URL)"}',
                content_type="application/json",
            )

    async def _read(self, method: str, *args):
        self._need_store()
        try:
            return await asyncio.to_thread(getattr(self.store, method), *args)
        except Exception as exc:  # noqa: BLE001 - say what failed, keep serving
            log.warning("history store read %s failed: %s", method, exc)
            # The details stay in the worker's log: no server internals to the browser.
            raise web.HTTPBadGateway(
                text=orjson.dumps({"error": "history store read failed (details in the worker's "
                                            "log)"}).decode(),
                content_type="application/json",
            ) from None

    @staticmethod
    def _window(request: web.Request) -> tuple[int, int]:
        """``since_ms, until_ms`` from ``?hours=`` (default 24) and ``?until_ms=`` (now)."""
        try:
            hours = float(request.query.get("hours", "24"))
            until = int(request.query.get("until_ms") or time.time() * 1000)
        except ValueError:
            raise web.HTTPBadRequest(text="hours and until_ms must be numbers") from None
        if not 0 < hours <= MAX_HOURS:
            raise web.HTTPBadRequest(text=f"hours must be in (0, {MAX_HOURS}]")
        return until - int(hours * HOUR_MS), until

    @staticmethod
    def _json(data) -> web.Response:
        return web.Response(
            body=orjson.dumps(data, default=str, option=orjson.OPT_SERIALIZE_NUMPY),
            content_type="application/json",
        )

    async def series(self, request: web.Request) -> web.StreamResponse:
        since, _ = self._window(request)
        return self._json({"series": await self._read("series_summary", since)})

    def _series_arg(self, request: web.Request) -> str:
        series = request.query.get("series", "")
        if not series:
            raise web.HTTPBadRequest(text="?series= is required")
        return series

    async def steps(self, request: web.Request) -> web.StreamResponse:
        series = self._series_arg(request)
        since, until = self._window(request)
        return self._json(await self._read("series_steps", series, since, until))

    async def incident(self, request: web.Request) -> web.StreamResponse:
        incident = await self._read("incident", request.match_info["incident_id"])
        if incident is None:
            raise web.HTTPNotFound(text='{"error": "no such incident"}',
                                   content_type="application/json")
        return self._json(incident)

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        """``POST {"action": "not_anomaly" | "acknowledge", "user": "…"}``: an operator's
        verdict on the incident, published as the Telegram buttons do (docs/feedback.md)."""
        if self.publish is None:
            raise web.HTTPServiceUnavailable(text='{"error": "feedback is not wired"}',
                                             content_type="application/json")
        try:
            body = orjson.loads(await request.read())
            action, user = body["action"], str(body.get("user") or "dashboard")[:100]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='{"error": "send {\\"action\\": …}"}',
                                     content_type="application/json") from None
        if action not in ("not_anomaly", "acknowledge"):
            raise web.HTTPBadRequest(text='{"error": "action: not_anomaly or acknowledge"}',
                                     content_type="application/json")
        incident = await self._read("incident", request.match_info["incident_id"])
        if incident is None or not incident.get("events"):
            raise web.HTTPNotFound(text='{"error": "no such incident"}',
                                   content_type="application/json")
        events = [AnomalyEvent(**{k: e[k] for k in EVENT_FIELDS if k in e})
                  for e in incident["events"]]
        record = verdict(action, events, user, source="dashboard")
        offer = await self.publish(record)  # where many series of the metric are marked
        return self._json({**record.asdict(), "offer": offer or ""})

    async def chart(self, request: web.Request) -> web.StreamResponse:
        series = self._series_arg(request)
        since, until = self._window(request)
        steps = await self._read("series_steps", series, since, until)
        if not steps or not steps.get("ts_ms"):
            raise web.HTTPNotFound(text="no steps of this series in that window")
        marked = request.query.get("event_ts_ms")
        png = await self._draw(steps, series, int(marked) if marked and marked.isdigit() else None)
        return web.Response(body=png, content_type="image/png",
                            headers={"Cache-Control": "no-store"})

    async def _draw(self, steps: dict, title: str, event_ts_ms: int | None) -> bytes:
        context = {k: steps[k] for k in ("ts_ms", "value", "expected", "lower", "upper", "z")
                   if k in steps}
        args = (render_chart, context, title, event_ts_ms, self.z_marked, (10.0, 3.6))
        loop = asyncio.get_running_loop()
        if self._chart_pool is None:
            self._chart_pool = chart_process_pool(1)
        try:
            return await loop.run_in_executor(self._chart_pool, *args)
        except BrokenProcessPool:
            log.warning("the dashboard's chart process died; starting another")
            self._chart_pool = None
            return await asyncio.to_thread(*args)

    def warm_up(self) -> None:
        """Start the chart process and import matplotlib in it before the first request."""
        if self._chart_pool is None:
            self._chart_pool = chart_process_pool(1)

    def close(self) -> None:
        if self._chart_pool is not None:
            self._chart_pool.shutdown(wait=False, cancel_futures=True)
            self._chart_pool = None
