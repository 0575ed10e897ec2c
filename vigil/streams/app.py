"""The Faust app: topics and the two agents of the detection worker.

::

    metric topics ──ingest──► vigil-points (partitioned by series) ──detect──► vigil-anomalies
         │                                                      │
         └── unusable records ──► vigil-deadletter               └── state ──► Redis

``ingest`` parses raw records, dead-letters what it cannot use and re-partitions the points
by series id, one message per target partition per batch. ``detect`` owns a set of
partitions of the points topic — so every series is handled by exactly one worker of the
consumer group — and runs :class:`~vigil.streams.pipeline.DetectionPipeline` on each batch:
events are delivered first, then the states are saved, then the offsets are committed.

Both agents read ``noack`` batches and acknowledge a batch's records only once its work is
done (Faust's own batch reader acknowledges in a ``finally``, even when the handler
raised): an error that stops the worker leaves the batch uncommitted, and it is read again
after the restart. Every message produced (routed points, dead letters) is bounded by
``max_message_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import Callable

import faust
import numpy as np
import orjson
import redis.asyncio as aioredis
from faust.types import EventT, TopicT
from mode import CrashingSupervisor

from vigil.detectors.online import warm_up
from vigil.events import Feedback
from vigil.retrying import STORE_OUTAGE
from vigil.series import parse_series
from vigil.sinks import metrics
from vigil.streams.forecasts import ForecastWatch
from vigil.streams.input_health import InputHealth, reason_class
from vigil.streams.input_order import InputOrder
from vigil.streams.limits import SeriesLimits
from vigil.streams.lstm_scorer import LstmScorer
from vigil.streams.parsers import TimestampPolicy, make_parser
from vigil.streams.pipeline import (
    DetectionPipeline,
    decode_points,
    encode_lesson,
    encode_points,
    lesson,
    partition_for,
    route,
)
from vigil.streams.rates import CounterRates
from vigil.streams.records import Reject, dead_letter_record
from vigil.streams.remote_write import RemoteWriteError, decode_write_request, to_messages
from vigil.streams.settings import Settings
from vigil.streams.silence import attach_stopped_series
from vigil.streams.state import RedisStateStore, connect
from vigil.streams.storage import attach_storage
from vigil.streams.transport import VigilApp

__all__ = [
    "add_dashboard",
    "add_remote_write",
    "add_web_pages",
    "create_app",
    "new_app",
    "resolve_topics",
    "track_consumer_lag",
]

log = logging.getLogger("vigil.worker")


def resolve_topics(settings: Settings) -> list[str]:
    """The metric topics to consume: the configured list, or the pattern's current matches.

    Faust's own ``pattern=`` subscribes to nothing with the aiokafka driver, so the regex is
    resolved against the broker's topic list here.
    """
    if not settings.input_pattern:
        return list(settings.input_topics)
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    names = admin.list_topics(timeout=10).topics
    pattern = re.compile(settings.input_pattern)
    internal = {settings.points_topic, settings.anomalies_topic, settings.deadletter_topic}
    matched = sorted(
        n for n in names if pattern.fullmatch(n) and n not in internal and not n.startswith("__")
    )
    if not matched:
        raise SystemExit(f"no topic matches input pattern {settings.input_pattern!r}")
    return matched


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_app(settings: Settings, app_id: str, web_port: int) -> VigilApp:
    """A Faust app with vigil's consumer settings (short session, fast fetches, raw keys)."""
    session = settings.session_timeout_s
    app = VigilApp(
        app_id,
        broker=settings.broker_url,
        broker_credentials=settings.kafka_broker_credentials(),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=settings.points_partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(session / 6, 0.5),
        broker_rebalance_timeout=max(session * 1.7, 10),
        broker_commit_interval=0.5,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=web_port,
        producer_max_request_size=max(settings.max_message_bytes + 100_000, 1_000_000),
        producer_linger_ms=5,
    )
    app.vigil_fetch_max_wait_ms = settings.fetch_max_wait_ms
    return app


def add_web_pages(
    app: faust.App,
    redis_client: aioredis.Redis,
    details: Callable[[], dict],
    store_url: str = "",
) -> None:
    """``/metrics`` (Prometheus) and ``/health``: Redis reachable, the Kafka partitions this
    process owns, the history store reachable (when configured), plus ``details()``. Both stay open
    without the dashboard token, as Prometheus scrapers and probes expect."""
    store_name, store_ping = _store_ping(store_url) if store_url else ("", None)

    @app.page("/metrics")
    async def prometheus_metrics(web, request):
        body, content_type = metrics.exposition()
        # aiohttp refuses a charset inside content_type=; pass the header as it is.
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.page("/health")
    async def health(web, request):
        try:
            await redis_client.ping()
            redis_ok = True
        except Exception:  # noqa: BLE001 - health reports, it does not raise
            redis_ok = False
        report: dict = {"redis": redis_ok}
        try:
            assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in app.consumer.assignment())
        except Exception:  # noqa: BLE001 - no consumer yet (starting)
            assigned = []
        report["kafka_assigned"] = assigned
        healthy = redis_ok
        if STORE_OUTAGE.error is not None:  # waiting out a Redis that cannot write
            report["store_error"] = STORE_OUTAGE.error
            healthy = False
        if store_ping is not None:
            report[store_name] = await asyncio.to_thread(store_ping)
            healthy = healthy and report[store_name]
        return web.json({**report, **details()}, status=200 if healthy else 503)


def _store_ping(url: str) -> tuple[str, Callable[[], bool]]:
    """``/health``'s name and check of the history store (``clickhouse`` or ``postgres``)."""
    from vigil.sinks.store import store_kind

    if store_kind(url) == "postgres":
        from vigil.sinks.postgres import PostgresStore

        return "postgres", PostgresStore(url, connect_timeout=2, statement_timeout_s=5).ping
    return "clickhouse", _clickhouse_ping(url)


def _clickhouse_ping(url: str) -> Callable[[], bool]:
    """A ``SELECT 1`` against ClickHouse, for ``/health`` (one connection, reused)."""
    import threading

    from clickhouse_driver import Client

    client = Client.from_url(url)
    client.connection.connect_timeout = 2
    client.connection.send_receive_timeout = 5
    lock = threading.Lock()

    def ping() -> bool:
        with lock:
            try:
                return client.execute("SELECT 1") == [(1,)]
            except Exception:  # noqa: BLE001 - reachable or not, nothing else
                client.disconnect()
                return False

    return ping


def track_consumer_lag(app: faust.App, interval_s: float) -> None:
    """Refresh ``vigil_consumer_lag``: per owned partition, the end offset minus the
    committed offset, every ``interval_s`` seconds (revoked partitions disappear)."""

    @app.timer(interval_s)
    async def consumer_lag() -> None:
        consumer = app.consumer
        try:
            assigned = consumer.assignment()
            highwaters = await consumer.highwaters(*assigned) if assigned else {}
        except Exception as exc:  # noqa: BLE001 - a gauge must not stop the worker
            log.warning("consumer lag not refreshed: %s", exc)
            return
        metrics.CONSUMER_LAG.clear()
        for tp, end in highwaters.items():
            committed = consumer._committed_offset.get(tp) or 0
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                max(0, (end or 0) - committed)
            )


def add_remote_write(app: faust.App, settings: Settings, topic: TopicT) -> None:
    """Prometheus remote_write at ``POST /api/v1/write``: samples become vigil JSON points on
    ``topic`` (see :mod:`vigil.streams.remote_write`)."""
    from aiohttp import web

    limit = settings.remote_write_max_bytes
    known_types: dict[str, int] = {}  # metric family → type, from metadata requests

    def refuse(status: int, reason: str) -> web.Response:
        metrics.REMOTE_WRITE_REQUESTS.labels(status=str(status)).inc()
        log.warning("remote_write refused (%d): %s", status, reason)
        return web.Response(status=status, text=reason + "\n")

    async def write(request: web.Request) -> web.Response:
        if (request.content_length or 0) > limit:
            return refuse(413, f"body of {request.content_length} bytes is over the limit of "
                               f"{limit} (VIGIL_REMOTE_WRITE_MAX_BYTES)")
        body = bytearray()
        while len(body) <= limit:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                break
            body += chunk
        try:
            write_request = decode_write_request(bytes(body), limit,
                                                 settings.remote_write_max_series)
        except RemoteWriteError as exc:
            return refuse(exc.status, str(exc))
        converted = to_messages(write_request, known_types=known_types)
        sent = [await topic.send(key=k, value=m)
                for k, m in zip(converted.keys, converted.messages, strict=True)]
        if sent:
            await asyncio.gather(*sent)
        metrics.REMOTE_WRITE_SAMPLES.inc(converted.samples)
        metrics.REMOTE_WRITE_STALE.inc(converted.stale)
        metrics.REMOTE_WRITE_REQUESTS.labels(status="204").inc()
        return web.Response(status=204)

    app.web.web_app.router.add_post("/api/v1/write", write)
    log.info("Prometheus remote_write at http://%s:%s/api/v1/write → topic %s",
             settings.web_host, settings.web_port, topic.get_topic_name())


def add_dashboard(app: faust.App, settings: Settings, redis_client: aioredis.Redis) -> None:
    """The live dashboard under ``/dashboard`` when ``dashboard_token`` is set."""
    token = settings.dashboard_token.get_secret_value() if settings.dashboard_token else ""
    if not token:
        log.info("dashboard off (set VIGIL_DASHBOARD_TOKEN to serve /dashboard)")
        return
    if not settings.web_enabled:
        log.warning("dashboard off: the web server is disabled (VIGIL_WEB_ENABLED=false)")
        return
    if len(token) < 16:
        log.warning("the dashboard token is short (%d characters); use a random one, e.g. "
                    "openssl rand -hex 16", len(token))
    from vigil.sinks.dashboard import AnomalyFeed, Dashboard
    from vigil.sinks.delivery import METRIC_OFFER_SERIES, NotifierStore, metric_offer_text

    store = None
    if settings.store_url:
        from vigil.sinks.store import open_store

        store = open_store(settings)
    else:
        log.warning("dashboard without history (VIGIL_CLICKHOUSE_URL, VIGIL_POSTGRES_URL unset): "
                    "live feed only, no series, charts or incidents")
    feed = AnomalyFeed(
        settings.kafka_bootstrap,
        settings.anomalies_topic,
        backlog=settings.dashboard_backlog,
        client_queue=settings.dashboard_client_queue,
        seed=store.recent_events if store is not None else None,
        security=settings.kafka_aiokafka_security(),
    )
    feedback_topic = app.topic(settings.feedback_topic, internal=True, key_serializer="raw")

    marks = NotifierStore(redis_client, settings.redis_prefix)

    async def publish(record: Feedback) -> str:
        """Publish the verdict; after a "not an anomaly", the offer to teach the metric."""
        await (await feedback_topic.send(key=record.incident_id.encode(), value=record))
        if record.action != "not_anomaly":
            return ""
        name = parse_series(record.series)[0]
        marked = await marks.mark_not_anomaly(name, record.series)
        return (metric_offer_text(name, marked, record.incident_id)
                if marked >= METRIC_OFFER_SERIES else "")

    dashboard = Dashboard(token, feed, store, z_marked=settings.detector.z_open,
                          publish=publish)
    dashboard.install(app.web.web_app)

    @app.task
    async def dashboard_feed() -> None:
        dashboard.warm_up()
        await feed.run()

    log.info("dashboard at http://%s:%s/dashboard", settings.web_host, settings.web_port)


def create_app(settings: Settings | None = None, topics: list[str] | None = None) -> faust.App:
    """Build the worker's Faust app from ``settings`` (environment by default)."""
    settings = settings or Settings()
    topics = topics or resolve_topics(settings)
    app = new_app(settings, settings.app_id, settings.web_port)
    parser = make_parser(
        settings.input_format,
        name_field=settings.json_name_field,
        value_field=settings.json_value_field,
        timestamp_field=settings.json_timestamp_field,
        labels_field=settings.json_labels_field,
        label_fields=tuple(settings.json_label_fields),
        timestamps=TimestampPolicy(
            max_future_s=settings.max_future_s, max_past_s=settings.max_past_s
        ),
        graphite_templates=settings.graphite_templates,
        types_db=settings.collectd_types_db,
        collectd_store_rates=settings.collectd_store_rates,
    )
    input_health = InputHealth(settings.input_format)
    rates = CounterRates(settings.rate_metrics, settings.max_cached_series)
    input_topic = app.topic(*topics, value_serializer="raw", key_serializer="raw")
    points_topic = app.topic(
        settings.points_topic,
        partitions=settings.points_partitions,
        internal=True,
        value_serializer="raw",
        key_serializer="raw",
    )
    anomalies_topic = app.topic(settings.anomalies_topic, internal=True, key_serializer="raw")
    deadletter_topic = app.topic(settings.deadletter_topic, internal=True, key_serializer="raw")

    redis_client = connect(settings.redis_url, settings.redis_cluster)
    store = RedisStateStore(redis_client, settings.redis_prefix,
                            idle_expiry_ms=int(settings.idle_expiry_days * 86_400_000),
                            slot_groups=settings.redis_slot_groups)
    lstm = None
    if settings.lstm_model:
        lstm = LstmScorer(settings.lstm_model, settings.lstm_device, settings.lstm_batch,
                          settings.detector.z_open, settings.lstm_threads,
                          settings.lstm_z_open)
    else:
        log.info("no LSTM model configured (VIGIL_LSTM_MODEL): seasonal detector alone")
    from vigil.sinks.store import notifier_state

    pipeline = DetectionPipeline(
        store,
        settings.detector,
        settings.max_cached_series,
        directions=settings.directions,
        history_steps=settings.chart_history_steps,
        lstm=lstm,
        lateness_steps=settings.allowed_lateness_steps,
        forecasts=ForecastWatch(settings.forecast_limits, settings.forecast_warning_h,
                                settings.forecast_critical_h, settings.detector,
                                settings.max_cached_series),
        # With PostgreSQL, taught patterns are kept there too: they survive a Redis wipe.
        taught_store=notifier_state(settings),
        # Counters become rates inside the pipeline: after the hold-back, in time order.
        rates=rates,
    )

    history = attach_storage(app, settings)  # ClickHouse or PostgreSQL, when configured
    # Bounded growth: series beyond the limits are refused (dead-lettered, counted).
    limits = SeriesLimits(settings.max_series_per_worker, settings.max_series_per_metric)
    # Stopped series: a wall-clock check publishes no_data events (docs/stopped-series.md).
    stopped = attach_stopped_series(app, settings, redis_client, anomalies_topic,
                                    on_forgotten=pipeline.forget, limits=limits)
    # Compile the detector's step kernel (or load it from numba's cache) now, at start, not
    # on the first batch.
    warm_up()

    async def dead_letter(reject: Reject, event: EventT, stage: str = "parse") -> asyncio.Future:
        message = event.message
        metrics.DEAD_LETTERS.labels(stage=stage, reason=reason_class(reject.reason)).inc()
        record = dead_letter_record(
            reject.reason, reject.raw, topic=message.topic, partition=message.partition,
            offset=message.offset, ts_ms=_now_ms(), stage=stage,
            max_raw_bytes=min(settings.deadletter_raw_bytes, settings.max_message_bytes // 2),
        )
        return await deadletter_topic.send(key=message.topic.encode(), value=record)

    # The ingest merges its input partitions by event time (vigil/streams/input_order.py):
    # a message is acked once all its points have gone on to detection.
    order: InputOrder[EventT] = InputOrder(settings.input_idle_s, settings.input_max_held_points)
    release_lock = asyncio.Lock()
    ingest_stream: list = []  # the ingest agent's stream, for the timer's acks

    # An agent that fails on something unexpected stops the worker (non-zero exit) rather
    # than leaving a live process that silently consumes nothing. Its batch is not acked.
    @app.agent(input_topic, name="vigil.ingest", supervisor_strategy=CrashingSupervisor)
    async def ingest(stream):
        ingest_stream[:] = [stream]
        async for events in stream.noack_take(settings.ingest_batch, settings.batch_window_s):
            await ingest_batch(events, stream)

    async def ingest_batch(events: list[EventT], stream) -> None:
        now = _now_ms()
        pending: list[asyncio.Future] = []
        points = 0
        for event in events:
            result = parser.parse(event.value or b"", now)
            for reject in result.rejects:
                pending.append(await dead_letter(reject, event))
            points += len(result)
            seen = time.monotonic()
            input_health.record(event.message.topic, len(result),
                                [r.reason for r in result.rejects], seen)
            order.add(event.message.tp, event.message.offset, result, event, seen)
        report_inputs()
        metrics.POINTS_IN.inc(points)
        metrics.POINTS_RATE.add(points)
        metrics.MESSAGES_IN.inc(len(events))
        # Dead letters are delivered before the messages they came from are acked.
        if pending:
            await asyncio.gather(*pending)
        await release_points(stream)

    def input_partitions() -> list:
        return [tp for tp in app.consumer.assignment() if tp.topic in input_topic.topics]

    def offsets(tp) -> tuple[int | None, int | None]:
        # (committed offset, high watermark as of the last fetch); unknown holds back.
        consumer = app.consumer
        try:
            return consumer._committed_offset.get(tp), consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not started, or no longer assigned
            return None, None

    async def release_points(stream) -> None:
        async with release_lock:
            # The partitions owned now: newly assigned ones are tracked, revoked ones dropped.
            clock = time.monotonic()
            order.assign(input_partitions(), clock)
            released = order.release(offsets, clock)
            metrics.INPUT_POINTS_WAITING.set(order.held)
            if released.forced:
                metrics.INPUT_POINTS_FORCED.inc(released.forced)
                log.warning("%d points went on to detection before their input partitions "
                            "caught up (more than VIGIL_INPUT_MAX_HELD_POINTS=%d waited)",
                            released.forced, settings.input_max_held_points)
            pending: list[asyncio.Future] = []
            routed = route(released.results, settings.points_partitions,
                           settings.max_points_per_message, settings.max_message_bytes)
            for series in routed.oversized:
                reason = f"point too large to route (series id of {len(series)} characters)"
                pending.append(await dead_letter(Reject(reason, series.encode()),
                                                 released.sources[0], "route"))
            for partition, blob in routed.messages:
                pending.append(
                    await points_topic.send(key=str(partition).encode(), value=blob,
                                            partition=partition)
                )
            # Offsets are acked once everything from their messages is delivered.
            if pending:
                await asyncio.gather(*pending)
            for event in released.done:
                await stream.ack(event)

    @app.timer(settings.input_idle_s / 4)
    async def release_waiting() -> None:
        # Points wait for lagging partitions; when no new message comes to release them
        # (the partition went idle, or the backlog ended), this does.
        if ingest_stream and order.waiting:
            await release_points(ingest_stream[0])

    @app.agent(points_topic, name="vigil.detect", supervisor_strategy=CrashingSupervisor)
    async def detect(stream):
        async for events in stream.noack_take(settings.detect_batch, settings.batch_window_s):
            await detect_batch(events)
            for event in events:
                await stream.ack(event)

    async def detect_batch(events: list[EventT]) -> None:
        started = time.perf_counter()
        counters: set[str] = set()
        lessons: list[dict] = []
        series, ts_ms, values, bad = decode_points((e.value or b"" for e in events), counters,
                                                   lessons)
        for n, reason in bad:
            event = events[n]
            await (await dead_letter(Reject(reason, event.value or b""), event, "route"))
        (series, ts_ms, values), refused = limits.split(series, ts_ms, values)
        for reason, *columns in refused.values():
            await (await dead_letter(Reject(reason, encode_points(*columns)), events[0], "limit"))
        if stopped is not None:
            stopped.observe(series, ts_ms, _now_ms())
        # A batch whose first message of a partition is past offset 0 continues a stream
        # processed before (a fresh stream's first batch holds offsets 0, 1, …: not resumed).
        first: dict[int, int] = {}
        for e in events:
            first[e.message.partition] = min(first.get(e.message.partition, 1 << 62),
                                             e.message.offset or 0)
        resumed = any(offset > 0 for offset in first.values())
        if lessons:
            # Operators' teaching lands before the batch's points (it was given later than
            # any point of the batch it shares a partition with was produced, or about so).
            await pipeline.teach(lessons, resumed)
            for item in lessons:
                metrics.LESSONS.labels(action=item["action"]).inc()
        resets = rates.resets
        batch = await pipeline.process(series, ts_ms, values, resumed, counters)
        metrics.COUNTER_POINTS_HELD.inc(batch.counter_points_held)
        metrics.COUNTER_RESETS.inc(rates.resets - resets)
        delivered = [
            await anomalies_topic.send(key=e.series.encode(), value=e) for e in batch.events
        ]
        if delivered:
            await asyncio.gather(*delivered)
        await pipeline.save(batch)
        if history is not None:
            history.record(batch.series, batch.results, batch.events)
        metrics.POINTS_DETECTED.inc(batch.points - batch.dropped)
        metrics.STEPS_SCORED.inc(batch.steps)
        metrics.DETECTOR_CPU_SECONDS.inc(batch.detector_cpu_s)
        for reason, count in (batch.dropped_by_reason or {}).items():
            metrics.POINTS_DROPPED.labels(reason=reason).inc(count)
        for e in batch.events:
            metrics.EVENTS_OUT.labels(kind=e.kind, severity=e.severity).inc()
        if batch.results is not None:
            metrics.OPENINGS_WITHHELD.inc(int(np.count_nonzero(batch.results.taught)))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.CACHED_SERIES.set(pipeline.cached_series)

    # Operators' feedback that teaches a series (docs/feedback.md) goes to the series'
    # partition of the internal topic, so its owner applies it in order with the points.
    feedback_topic = app.topic(settings.feedback_topic, internal=True, key_serializer="raw",
                               value_serializer="raw")
    ttl_ms = int(settings.feedback_ttl_days * 86_400_000)

    @app.agent(feedback_topic, name="vigil.teach")
    async def teach(stream):
        async for raw in stream:
            try:
                item = lesson(orjson.loads(raw), ttl_ms)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                    AttributeError) as exc:
                log.warning("feedback record not applied (%s): %.200r", exc, raw)
                continue
            if item is None:
                continue
            partition = partition_for(item["series"], settings.points_partitions)
            await (await points_topic.send(key=str(partition).encode(),
                                           value=encode_lesson(item), partition=partition))

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs) -> None:
        # Another worker may own these series now; Redis holds their latest state.
        pipeline.forget()
        rates.forget()
        owned = {tp.partition for tp in app.consumer.assignment()
                 if tp.topic == settings.points_topic} - {tp.partition for tp in revoked}
        limits.revoke(lambda s: partition_for(s, settings.points_partitions) in owned)

    degraded: dict[str, dict] = {}

    def report_inputs() -> None:
        found = input_health.warn(time.monotonic())
        for topic in set(degraded) - set(found):
            metrics.INPUT_DEGRADED.remove(topic)
        for topic, info in found.items():
            metrics.INPUT_DEGRADED.labels(topic=topic).set(info["dead_lettered_ratio"])
        degraded.clear()
        degraded.update(found)

    def details() -> dict:
        report: dict = {"topics": topics, "status": "degraded" if degraded else "ok"}
        if degraded:
            report["degraded_inputs"] = dict(degraded)
        return report

    add_web_pages(app, redis_client, details, settings.store_url)
    if settings.remote_write_enabled and settings.web_enabled:
        add_remote_write(app, settings, app.topic(
            settings.remote_write_topic or topics[0], value_serializer="raw",
            key_serializer="raw"))
    track_consumer_lag(app, settings.lag_refresh_s)
    add_dashboard(app, settings, redis_client)

    if lstm is not None:

        @app.task
        async def load_lstm() -> None:
            await lstm.refresh()  # at start, before the first batch is likely

        @app.timer(settings.lstm_reload_s)
        async def watch_lstm() -> None:
            await lstm.refresh()

    if settings.input_pattern:

        @app.timer(settings.pattern_refresh_s)
        async def watch_pattern() -> None:
            current = await asyncio.get_running_loop().run_in_executor(
                None, resolve_topics, settings
            )
            if set(current) != set(topics):
                log.warning(
                    "topics matching %r changed (%s); restarting the worker to resubscribe",
                    settings.input_pattern,
                    ", ".join(sorted(set(current) ^ set(topics))),
                )
                metrics.RESUBSCRIBES.inc()
                # Stop gracefully (commits offsets) as on SIGTERM; the CLI then execs a fresh
                # worker that subscribes to the new set.
                app.vigil_restart = True
                os.kill(os.getpid(), signal.SIGTERM)

    app.vigil_restart = False
    return app
