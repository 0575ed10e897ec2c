"""``vigil alerts redeliver``: dead-lettered alerts sent again.

::

    vigil-alerts-deadletter ──read to its end──► latest record per (message, channel)
        ──► not yet redelivered (Redis)? ──► Notifier.redeliver ──► the channel that failed

The topic is read from its start up to its end as it was when the command started (no
consumer group: the records stay for other readers). What was sent again is marked in Redis
(``notify:redelivered:<notification id>:<channel>``), so a second run sends nothing twice; a
message whose receiver is still down is left for the next run. Run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from vigil.events import AlertDeadLetter
from vigil.sinks.delivery import Notifier, NotifierStore, build_channels
from vigil.sinks.telegram import TelegramBot
from vigil.streams.settings import Settings
from vigil.streams.state import connect
from vigil.streams.topic_reader import read_to_end

__all__ = ["RedeliveryReport", "read_dead_letters", "redeliver_dead_letters"]

log = logging.getLogger("vigil.notifier")


@dataclass
class RedeliveryReport:
    """What one run did, by (notification id, channel)."""

    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # still undeliverable: left for next run
    skipped: list[str] = field(default_factory=list)  # already redelivered, or not sendable


def read_dead_letters(settings: Settings, timeout_s: float = 30.0) -> list[AlertDeadLetter]:
    """Every record on the alerts' dead-letter topic, up to its end at the time of the call,
    oldest first (records that are not dead letters are logged and left out)."""
    topic = settings.alerts_deadletter_topic
    records: list[tuple[int, int, AlertDeadLetter]] = []
    for _, offset, value in read_to_end(settings, topic, timeout_s):
        record = _decode(value)
        if record is None:
            log.warning("skipping a record on %s that is not a dead letter: %r", topic,
                        value[:200])
            continue
        records.append((record.ts_ms, offset, record))
    return [r for _, _, r in sorted(records, key=lambda t: (t[0], t[1]))]


def _decode(raw: bytes | None) -> AlertDeadLetter | None:
    try:
        data = orjson.loads(raw or b"")
        data.pop("__faust", None)
        return AlertDeadLetter(**data)
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


async def redeliver_dead_letters(
    settings: Settings,
    receivers: list[str] | None = None,
    dry_run: bool = False,
    wait_s: float = 60.0,
    echo: Callable[[str], object] = print,
) -> RedeliveryReport:
    """Send the dead letters (of ``receivers``, default all) again, each message once.

    ``wait_s``: how long a receiver that is still down is retried (capped backoff) before its
    message is left for the next run."""
    records = await asyncio.to_thread(read_dead_letters, settings)
    latest: dict[tuple[str, str], AlertDeadLetter] = {}
    for record in records:  # a message dead-lettered twice is sent once
        if not receivers or record.receiver in receivers:
            latest[(record.notification_id, record.channel)] = record
    report = RedeliveryReport()
    config = settings.alerts.model_copy(update={"outage_max_s": wait_s})
    client = connect(settings.redis_url, settings.redis_cluster)
    store = NotifierStore(client, settings.redis_prefix)
    bot = None
    if not dry_run and any(r.channel == "telegram" for r in latest.values()):
        bot = TelegramBot(config.telegram, config.telegram_chats())

    async def no_new_dead_letter(record: AlertDeadLetter) -> None:
        """A failed redelivery stays as it was on the topic, for the next run."""

    async def no_feedback(record) -> None:
        raise RuntimeError("redeliver handles no button presses")

    notifier = Notifier(config, store, build_channels(config, bot, store), no_new_dead_letter,
                        no_feedback)
    try:
        for (notification_id, channel), record in latest.items():
            what = (f"{notification_id}  {record.receiver}/{channel}  {record.kind:8}  "
                    f"{record.subject}")
            key = f"{notification_id}/{channel}"
            if await store.redelivered(notification_id, channel):
                report.skipped.append(key)
                continue
            if dry_run:
                echo(f"would send  {what}")
                report.skipped.append(key)
                continue
            try:
                sent = await notifier.redeliver(record)
            except LookupError as exc:
                echo(f"cannot send {what}: {exc}")
                report.skipped.append(key)
                continue
            if sent:
                await store.mark_redelivered(notification_id, channel)
                report.sent.append(key)
                echo(f"sent        {what}")
            else:
                report.failed.append(key)
                echo(f"failed      {what} (left for the next run)")
    finally:
        await notifier.stop(grace_s=0)
        if bot is not None:
            await bot.close()
        await client.aclose()
    return report
