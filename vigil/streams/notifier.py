"""The notifier's Faust app: the anomalies topic into the delivery engine, presses out.

::

    vigil-anomalies ──notify──► Notifier (vigil.sinks.delivery) ──► email, Telegram,
                                  │                                  Alertmanager, webhook
                                  │ failed ► vigil-alerts-deadletter
    Telegram buttons ──presses──► vigil-feedback (+ a silence for Mute)
    vigil-feedback ──acknowledgements──► no more escalations of the incident

An anomaly event's offset is committed only after every message it contributed to was
delivered or dead-lettered (manual acks on a ``noack`` stream, released in offset order by
:class:`~vigil.sinks.delivery.InOrderAcks`), so a crash loses nothing.
"""

from __future__ import annotations

import logging

import faust
import orjson
from mode import CrashingSupervisor

from vigil.events import AlertDeadLetter, AnomalyEvent, Feedback
from vigil.sinks import metrics
from vigil.sinks.delivery import InOrderAcks, Notifier, NotifierStore, build_channels
from vigil.sinks.store import notifier_state
from vigil.sinks.telegram import (
    TelegramBot,
)
from vigil.streams.app import add_web_pages, new_app
from vigil.streams.settings import Settings
from vigil.streams.state import connect

__all__ = ["create_notifier_app", "decode_event"]

log = logging.getLogger("vigil.notifier")


def decode_event(raw: bytes | None) -> AnomalyEvent | None:
    """An anomaly event from the topic's JSON, or None if it is not one."""
    try:
        data = orjson.loads(raw or b"")
        data.pop("__faust", None)
        return AnomalyEvent(**data)
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


def create_notifier_app(settings: Settings | None = None) -> faust.App:
    """The notifier's Faust app (its own consumer group: ``notifier_app_id``)."""
    settings = settings or Settings()
    config = settings.alerts
    if not config.receivers:
        raise SystemExit("no receivers configured: write an alerts: section in the settings "
                         "file (VIGIL_CONFIG_FILE), see docs/alerts.md")
    app = new_app(settings, settings.notifier_app_id, settings.notifier_web_port)
    anomalies = app.topic(settings.anomalies_topic, value_serializer="raw", key_serializer="raw")
    feedback_topic = app.topic(settings.feedback_topic, internal=True, key_serializer="raw")
    dead_letters = app.topic(settings.alerts_deadletter_topic, internal=True,
                             key_serializer="raw")
    redis_client = connect(settings.redis_url, settings.redis_cluster)
    store = NotifierStore(redis_client, settings.redis_prefix, notifier_state(settings))
    uses_telegram = any(r.telegram for r in config.receivers)
    bot = TelegramBot(config.telegram, config.telegram_chats()) if uses_telegram else None

    async def dead_letter(record: AlertDeadLetter) -> None:
        await (await dead_letters.send(key=record.receiver.encode(), value=record))

    async def feedback(record: Feedback) -> None:
        await (await feedback_topic.send(key=record.incident_id.encode(), value=record))

    notifier = Notifier(
        config, store, build_channels(config, bot, store), dead_letter, feedback,
        z_marked=settings.detector.z_open,
    )
    app.vigil_notifier = notifier

    @app.agent(anomalies, name="vigil.notify", supervisor_strategy=CrashingSupervisor)
    async def notify(stream):
        # Kept across rebalances: an event still in a group is acked when it is sent (Faust
        # ignores acks of partitions it no longer owns; the new owner skips what Redis
        # records as sent).
        acks = InOrderAcks(stream.ack)
        async for events in stream.noack_take(500, settings.batch_window_s):
            for event in events:
                ack = acks.register(event.message.tp, event)
                anomaly = decode_event(event.value)
                if anomaly is None:
                    log.warning("skipping a record on %s that is not an anomaly event: %r",
                                settings.anomalies_topic, (event.value or b"")[:200])
                    metrics.EVENTS_SUPPRESSED.labels(reason="malformed").inc()
                    await ack()
                    continue
                await notifier.accept(anomaly, ack)

    # Feedback given elsewhere (`vigil feedback acknowledge`, another notifier's buttons).
    feedback_in = app.topic(settings.feedback_topic, internal=True, key_serializer="raw",
                            value_serializer="raw")

    @app.agent(feedback_in, name="vigil.feedback")
    async def apply_feedback(stream):
        async for raw in stream:
            try:
                data = orjson.loads(raw)
                data.pop("__faust", None)
                record = Feedback(**data)
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
                log.warning("skipping a feedback record (%s): %.200r", exc, raw)
                continue
            await notifier.apply_feedback(record)

    @app.task
    async def deliver() -> None:
        notifier.start()
        try:
            await notifier.run_flush_loop(lambda: app.should_stop)
        finally:
            await notifier.stop()
            if bot is not None:
                await bot.close()

    if bot is not None and config.telegram.poll_updates:

        @app.task
        async def buttons() -> None:
            async for press in bot.presses():
                try:
                    await notifier.handle_press(press, bot)
                except Exception:  # noqa: BLE001 - one bad press must not stop the bot
                    log.exception("handling a button press failed")

    add_web_pages(app, redis_client, lambda: {"idle": notifier.idle()})

    log.info("notifier: %d receiver(s), %d route(s), group by %s within %.1f s",
             len(config.receivers), len(config.routes), ",".join(config.group_by) or "-",
             config.group_wait_s)
    return app
