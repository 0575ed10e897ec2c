"""The notifier's delivery engine: from anomaly events to delivered (or dead-lettered) messages.

::

    event ──route──► silence ──dedupe──► group ──► per-receiver queue
                                                 rate limit / digest
                                                 chart ► send (retry) ──► channel
                                                   │ failed ► dead letter

The pure stages (router, silences, grouper, rate limiter) are in :mod:`vigil.sinks.alerts`;
the channels in :mod:`vigil.sinks.email` and :mod:`vigil.sinks.telegram`. This module holds
what runs them:

* :class:`Notifier` — places each event, flushes groups when due, and keeps one delivery
  loop per receiver: a receiver that is down (transient errors) keeps its messages and
  retries with capped backoff until it is back (bounded queue, the oldest merged into a
  digest when full); a permanent error is dead-lettered at once. ``redeliver`` sends a dead
  letter again.
* :class:`NotifierStore` — what was sent, per receiver and incident, and the silences, in
  Redis, so replays and restarts send nothing twice: an incident gets one alert, one
  escalation if it turns critical, and one resolve message.
* :class:`InOrderAcks` — an event's Kafka offset is acknowledged only after every message it
  contributed to was delivered or dead-lettered, in offset order, so a crash loses nothing.

It knows nothing of Faust: :mod:`vigil.streams.notifier` wires it to the topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiogram.exceptions import TelegramRetryAfter
from redis.asyncio.cluster import RedisCluster
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    wait_random_exponential,
)

from vigil.detectors.second_opinion import SecondOpinion, opening_features
from vigil.events import AlertDeadLetter, AnomalyEvent, Feedback, incident_pattern, stable_id
from vigil.retrying import STORE_OUTAGE, redis_retrying
from vigil.series import parse_series
from vigil.sinks import metrics
from vigil.sinks.alertmanager import AlertmanagerChannel
from vigil.sinks.alerts import (
    AlertingConfig,
    Grouper,
    IncidentAlert,
    Matcher,
    Notification,
    RateLimiter,
    Router,
    Silence,
    alert_labels,
    merge,
    severity_rank,
)
from vigil.sinks.charts import chart_process_pool, render_chart
from vigil.sinks.email import EmailChannel, is_permanent_smtp_error, is_transient_smtp_error
from vigil.sinks.telegram import (
    ButtonPress,
    TelegramBot,
    TelegramChannel,
    is_permanent_telegram_error,
    is_transient_telegram_error,
)
from vigil.sinks.webhook import WebhookChannel, is_permanent_http_error, is_transient_http_error
from vigil.times import iso as _iso
from vigil.times import now_ms as _now_ms

__all__ = [
    "Channel",
    "DeliveryInterrupted",
    "InOrderAcks",
    "Notifier",
    "NotifierStore",
    "build_channels",
    "notification_from_record",
    "notification_record",
]

log = logging.getLogger("vigil.notifier")

RECORD_TTL_S = 30 * 86_400
#: Series of one metric marked "not an anomaly" from which the whole metric is offered.
METRIC_OFFER_SERIES = 3
#: An operator's verdict as a label: acknowledged = a real anomaly.
VERDICTS = {"acknowledge": 1, "not_anomaly": 0}
#: Openings kept per series for the second opinion's features (a week and a day).
OPENINGS_KEPT_MS = 8 * 86_400_000
#: Operators' verdicts kept for `vigil train --feedback` (the oldest goes first).
MAX_VERDICTS = 10_000


def load_second_opinion(path: str | None) -> SecondOpinion | None:
    """The model of ``alerts.second_opinion_model`` (None when unset)."""
    if not path:
        return None
    with open(path, "rb") as f:
        model = SecondOpinion.from_dict(orjson.loads(f.read()))
    log.info("second opinion from %s (%d verdicts)", path, model.n_verdicts_)
    return model


def metric_offer_text(name: str, marked: int, incident_id: str) -> str:
    """The offer to teach a pattern to every series of a metric (message and dashboard)."""
    return (f"{marked} series of {name} have been marked not an anomaly: "
            f"`vigil feedback not-anomaly {incident_id} --metric` teaches every {name} series.")
MUTE_S = 3_600
SILENCE_KEEP_S = 7 * 86_400  # expired silences stay listable (`--all`) this long


class NotifierStore:
    """What the notifier remembers in Redis: sent incidents, notifications and silences.

    * ``notify:incident:<receiver>:<incident>`` — severity sent, message references for
      follow-ups, resolved flag (expires after 30 days);
    * ``notify:notification:<id>`` — the incidents a message covered (for its buttons);
    * ``notify:silences`` — a hash of active and expired silences;
    * ``notify:open:<receiver>`` — the alerts posted to an Alertmanager receiver and not yet
      ended (re-posted while open), by incident;
    * ``notify:redelivered:<notification>:<channel>`` — dead letters sent again by
      ``vigil alerts redeliver`` (so a second run sends nothing twice);
    * ``notify:marked:<metric name>`` — the series of that metric operators marked "not an
      anomaly" in the last 30 days (the offer to teach the whole metric);
    * ``notify:opens:<series>`` — the series' openings of the last 8 days (a sorted set), and
      ``notify:opening:<incident>`` the features of an opening (30 days), from which
      ``notify:verdicts`` (a hash by incident: features and the operator's 0/1 verdict, at
      most :data:`MAX_VERDICTS`) collects what ``vigil train --feedback`` learns from.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str = "vigil:",
                 durable: Any = None) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.prefix = f"{prefix}notify:"
        # With PostgreSQL configured (:class:`vigil.sinks.postgres.NotifierState`): silences
        # and incident records (acknowledgements) are written there too, and what Redis lost
        # is read back from it.
        self.durable = durable

    async def _durable(self, method: str, *args: Any, default: Any = None) -> Any:
        if self.durable is None:
            return default
        try:
            return await asyncio.to_thread(getattr(self.durable, method), *args)
        except Exception as exc:  # noqa: BLE001 - Redis stays the working copy
            log.warning("notifier state in PostgreSQL: %s failed (%s)", method, exc)
            return default

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        async for attempt in redis_retrying():
            with attempt:
                result = await fn()
        STORE_OUTAGE.recovered()
        return result

    async def get_incident(self, receiver: str, incident_id: str) -> dict | None:
        key = f"{self.prefix}incident:{receiver}:{incident_id}"
        raw = await self._call(lambda: self.client.get(key))
        if raw is None and self.durable is not None:
            raw = await self._durable("get", "incident", f"{receiver}:{incident_id}")
            if raw is not None:  # lost by Redis: put back
                await self._call(lambda: self.client.set(key, raw, ex=RECORD_TTL_S))
        return orjson.loads(raw) if raw else None

    async def put_incident(self, receiver: str, incident_id: str, record: dict) -> None:
        key = f"{self.prefix}incident:{receiver}:{incident_id}"
        value = orjson.dumps(record)
        await self._call(lambda: self.client.set(key, value, ex=RECORD_TTL_S))
        await self._durable("put", "incident", f"{receiver}:{incident_id}", value.decode())

    async def mark_not_anomaly(self, name: str, series: str) -> int:
        """Remember that ``series`` (of metric ``name``) was marked "not an anomaly"; how many
        series of that metric were, in the last 30 days."""
        key = f"{self.prefix}marked:{name}"

        async def mark() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, series).expire(key, RECORD_TTL_S).scard(key)
                return (await pipe.execute())[-1]

        return int(await self._call(mark))

    async def note_opening(self, series: str, incident_id: str, ts_ms: int,
                           features: list[float]) -> None:
        """Remember an opening: its time among the series' openings, and its features."""
        opens, key = f"{self.prefix}opens:{series}", f"{self.prefix}opening:{incident_id}"

        async def note() -> None:
            # One transaction on one Redis; on a Redis Cluster the two keys live in different
            # slots, so a pipeline (an opening without its features only lacks a verdict).
            async with self.client.pipeline(transaction=not self.cluster) as pipe:
                pipe.zadd(opens, {incident_id: ts_ms})
                pipe.zremrangebyscore(opens, "-inf", ts_ms - OPENINGS_KEPT_MS)
                pipe.expire(opens, OPENINGS_KEPT_MS // 1000)
                pipe.set(key, orjson.dumps({"ts_ms": ts_ms, "features": features}),
                         ex=RECORD_TTL_S)
                await pipe.execute()

        await self._call(note)

    async def previous_openings(self, series: str, before_ms: int) -> list[int]:
        """The series' openings in the 8 days before ``before_ms``, oldest first."""
        found = await self._call(lambda: self.client.zrangebyscore(
            f"{self.prefix}opens:{series}", before_ms - OPENINGS_KEPT_MS, f"({before_ms}",
            withscores=True))
        return [int(score) for _, score in found]

    async def add_verdict(self, incident_id: str, label: int) -> bool:
        """Keep an operator's verdict on an opening this notifier saw (False if unseen)."""
        raw = await self._call(lambda: self.client.get(f"{self.prefix}opening:{incident_id}"))
        if raw is None:
            return False
        record = {**orjson.loads(raw), "label": int(label)}
        key = f"{self.prefix}verdicts"

        async def add() -> None:
            await self.client.hset(key, incident_id, orjson.dumps(record))
            if await self.client.hlen(key) > MAX_VERDICTS:
                oldest = min(((k, orjson.loads(v)["ts_ms"])
                              for k, v in (await self.client.hgetall(key)).items()),
                             key=lambda kv: kv[1])[0]
                await self.client.hdel(key, oldest)

        await self._call(add)
        return True

    async def get_notification(self, notification_id: str) -> dict | None:
        raw = await self._call(
            lambda: self.client.get(f"{self.prefix}notification:{notification_id}")
        )
        return orjson.loads(raw) if raw else None

    async def put_notification(self, notification_id: str, record: dict) -> None:
        key = f"{self.prefix}notification:{notification_id}"
        await self._call(lambda: self.client.set(key, orjson.dumps(record), ex=RECORD_TTL_S))

    async def open_alerts(
        self, receiver: str, incident_ids: list[str] | None = None
    ) -> dict[str, dict]:
        """The receiver's posted alerts by incident: all, or those of ``incident_ids``."""
        key = f"{self.prefix}open:{receiver}"
        if incident_ids is not None:
            if not incident_ids:
                return {}
            values = await self._call(lambda: self.client.hmget(key, incident_ids))
            return {i: orjson.loads(v) for i, v in zip(incident_ids, values, strict=True) if v}
        raw = await self._call(lambda: self.client.hgetall(key))
        return {k.decode() if isinstance(k, bytes) else k: orjson.loads(v)
                for k, v in raw.items()}

    async def put_open_alerts(self, receiver: str, alerts: dict[str, dict]) -> None:
        """Remember (or replace) the posted alerts of ``alerts``' incidents."""
        key = f"{self.prefix}open:{receiver}"
        mapping = {incident_id: orjson.dumps(alert) for incident_id, alert in alerts.items()}
        if not mapping:
            return

        async def put() -> None:
            await self.client.hset(key, mapping=mapping)
            await self.client.expire(key, RECORD_TTL_S)

        await self._call(put)

    async def drop_open_alerts(self, receiver: str, incident_ids: list[str]) -> None:
        if incident_ids:
            key = f"{self.prefix}open:{receiver}"
            await self._call(lambda: self.client.hdel(key, *incident_ids))

    async def redelivered(self, notification_id: str, channel: str) -> bool:
        """Whether ``vigil alerts redeliver`` already sent this dead letter again."""
        key = f"{self.prefix}redelivered:{notification_id}:{channel}"
        return bool(await self._call(lambda: self.client.exists(key)))

    async def mark_redelivered(self, notification_id: str, channel: str) -> None:
        key = f"{self.prefix}redelivered:{notification_id}:{channel}"
        await self._call(lambda: self.client.set(key, _now_ms(), ex=RECORD_TTL_S))

    async def add_silence(self, silence: Silence) -> Silence:
        if not silence.id:
            silence.id = stable_id(*(str(m) for m in silence.matchers), silence.starts_ms)
        value = silence.model_dump_json(by_alias=True)
        await self._call(lambda: self.client.hset(f"{self.prefix}silences", silence.id, value))
        await self._durable("put", "silence", silence.id, value)
        return silence

    async def silences(self) -> list[Silence]:
        """Every stored silence; those expired more than a week ago are deleted."""
        key = f"{self.prefix}silences"
        raw = await self._call(lambda: self.client.hgetall(key))
        if self.durable is not None:
            known = {k.decode() if isinstance(k, bytes) else k for k in raw}
            lost = {k: v for k, v in (await self._durable("all", "silence", default={})).items()
                    if k not in known}
            if lost:  # lost by Redis: put back
                await self._call(lambda: self.client.hset(key, mapping=lost))
                raw = {**raw, **lost}
        out, old = [], []
        horizon = _now_ms() - SILENCE_KEEP_S * 1000
        for value in raw.values():
            try:
                silence = Silence.model_validate_json(value)
            except ValueError:
                log.warning("ignoring an unreadable silence in Redis: %r", value[:200])
                continue
            (old if silence.ends_ms < horizon else out).append(silence)
        if old:
            await self._call(lambda: self.client.hdel(key, *(s.id for s in old)))
            await self._durable("delete", "silence", [s.id for s in old])
        return sorted(out, key=lambda s: s.ends_ms)

    async def expire_silence(self, silence_id: str, now_ms: int | None = None) -> bool:
        """End a silence now; False if there is none with that id."""
        for silence in await self.silences():
            if silence.id == silence_id:
                silence.ends_ms = min(silence.ends_ms, now_ms or _now_ms())
                await self.add_silence(silence)
                return True
        return False


class Channel(Protocol):
    name: str

    async def send(
        self, notification: Notification, chart_png: bytes | None, previous: dict | None,
        progress: dict | None = None,
    ) -> dict: ...


class _Ack:
    """Acks one Kafka event once every message it joined is delivered or dead-lettered."""

    __slots__ = ("_callback", "_holders")

    def __init__(self, callback: Callable[[], Awaitable[Any]] | None) -> None:
        self._callback = callback
        self._holders = 1  # released by accept() when it has placed the event

    def hold(self) -> _Ack:
        self._holders += 1
        return self

    async def done(self) -> None:
        self._holders -= 1
        if self._holders == 0 and self._callback is not None:
            await self._callback()


class InOrderAcks:
    """Acks a partition's events in offset order, whatever order they finish in.

    An event waits in a group while later ones (duplicates, silenced) are done at once.
    faust-streaming commits the first run of consecutive acked offsets and does not always
    notice an unacked offset at the head of that run (an offset-by-one in its gap check, and
    no check before the first commit), so acking out of order could commit past an event
    still waiting — lost if the process then crashes. Here an event's ack is released only
    once every earlier event of its partition is done.

    >>> import asyncio
    >>> acked = []
    >>> async def demo():
    ...     acks = InOrderAcks(lambda e: acked.append(e) or asyncio.sleep(0))
    ...     first, second = acks.register(("t", 0), "e0"), acks.register(("t", 0), "e1")
    ...     await second()  # done first, acked only after e0
    ...     assert acked == []
    ...     await first()
    >>> asyncio.run(demo()); acked
    ['e0', 'e1']
    """

    def __init__(self, ack: Callable[[Any], Awaitable[Any]]) -> None:
        self._ack = ack
        self._pending: dict[Any, deque[list]] = {}  # partition → [event, done] in offset order

    def register(self, partition: Any, event: Any) -> Callable[[], Awaitable[None]]:
        """Note ``event`` (in consumption order); returns the callback that marks it done."""
        entry = [event, False]
        self._pending.setdefault(partition, deque()).append(entry)

        async def done() -> None:
            entry[1] = True
            queue = self._pending.get(partition)
            while queue and queue[0][1]:
                await self._ack(queue.popleft()[0])

        return done


def _permanent(exc: BaseException) -> bool:
    return (is_permanent_smtp_error(exc) or is_permanent_telegram_error(exc)
            or is_permanent_http_error(exc))


def _transient(exc: BaseException | None) -> bool:
    """The receiver is down or busy for now: its messages wait (up to ``outage_max_s``)."""
    return exc is not None and not _permanent(exc) and (
        is_transient_smtp_error(exc) or is_transient_telegram_error(exc)
        or is_transient_http_error(exc))


class DeliveryInterrupted(Exception):
    """The notifier stopped while a receiver was waiting out an outage: the message is
    neither dead-lettered nor acked, so Kafka hands its events over again after a restart."""


def notification_record(notification: Notification) -> dict:
    """The notification as JSON-ready data (its events without the chart context), kept in a
    dead letter so that ``vigil alerts redeliver`` can rebuild and send it."""
    incidents = []
    for alert in notification.incidents:
        event = alert.event.asdict()
        event.pop("context", None)
        incidents.append({"event": event, "events": alert.events, "escalation": alert.escalation,
                          "resolved_ms": alert.resolved_ms, "opened_ms": alert.opened_ms})
    return {"receiver": notification.receiver, "kind": notification.kind,
            "group": list(notification.group), "incidents": incidents}


def notification_from_record(record: dict) -> Notification:
    """The inverse of :func:`notification_record` (without acks, chart or id)."""
    incidents = [
        IncidentAlert(AnomalyEvent(**item["event"]), events=item["events"],
                      escalation=item["escalation"], resolved_ms=item["resolved_ms"],
                      opened_ms=item["opened_ms"])
        for item in record["incidents"]
    ]
    return Notification(record["receiver"], record["kind"], tuple(record["group"]), incidents)


class Notifier:
    """The notify pipeline of one process (Faust-independent, so tests and the bench can
    drive it directly).

    ``dead_letter`` and ``feedback`` publish records (to Kafka in the app).
    """

    def __init__(
        self,
        config: AlertingConfig,
        store: NotifierStore,
        channels: dict[str, list[Channel]],
        dead_letter: Callable[[AlertDeadLetter], Awaitable[Any]],
        feedback: Callable[[Feedback], Awaitable[Any]],
        z_marked: float = 6.0,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
    ) -> None:
        """``sleep`` waits between delivery attempts (default: real time, cut short by
        :meth:`stop`): tests pass one that advances a virtual clock, so an outage of minutes
        is waited out in milliseconds."""
        self.config = config
        self.store = store
        self.channels = channels
        self.publish_dead_letter = dead_letter
        self.publish_feedback = feedback
        self.z_marked = z_marked
        self.sleep = sleep or self._pause
        self._stop_event = asyncio.Event()
        self.router = Router(config)
        self.grouper = Grouper(config.group_by, config.group_wait_s)
        self.limiter = RateLimiter(config.rate_limit_per_minute)
        self.queues: dict[str, asyncio.Queue[Notification]] = {
            r.name: asyncio.Queue() for r in config.receivers
        }
        # Notifications handed to a receiver queue but not yet recorded in Redis.
        self.inflight: dict[tuple[str, str], dict] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._charts: dict[int, asyncio.Future] = {}  # notification → its chart being drawn
        self._chart_pool: ProcessPoolExecutor | None = None
        self._chart_pool_failed = False
        self._busy: dict[str, asyncio.Event] = {}  # receiver → set when its delivery is done
        self._silences: list[Silence] = []
        self._silences_read = -1.0
        self.opinion = load_second_opinion(config.second_opinion_model)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._chart_process()
        for name, queue in self.queues.items():
            self._tasks.append(asyncio.create_task(self._receiver_loop(name, queue),
                                                   name=f"receiver:{name}"))
        for name, channels in self.channels.items():
            for channel in channels:
                if isinstance(channel, AlertmanagerChannel):
                    self._tasks.append(asyncio.create_task(
                        self._repost_loop(name, channel), name=f"repost:{name}"))

    async def stop(self, grace_s: float = 15.0) -> None:
        """Let deliveries under way finish (so a graceful restart sends nothing twice), then
        stop. Notifications not yet sent stay unacked and are redelivered after a restart."""
        self._stopping = True
        self._stop_event.set()  # a receiver waiting out an outage gives up its wait
        if self._busy:
            await asyncio.wait([asyncio.ensure_future(e.wait()) for e in self._busy.values()],
                               timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for channel in (c for channels in self.channels.values() for c in channels):
            close = getattr(channel, "close", None)
            if close is not None:
                await close()
        if self._chart_pool is not None:
            self._chart_pool.shutdown(wait=False, cancel_futures=True)
            self._chart_pool = None

    async def run_flush_loop(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Send each group when its window closes (polls at most every 50 ms)."""
        while not stopped():
            await self.flush_due()
            next_due = self.grouper.next_due()
            delay = 0.05 if next_due is None else min(0.05, max(0.0, next_due - time.monotonic()))
            await asyncio.sleep(delay)

    async def _repost_loop(self, receiver: str, channel: AlertmanagerChannel) -> None:
        """Keep the receiver's open incidents active in Alertmanager: re-post them at start
        (after a restart) and every ``repeat_s``."""
        while not self._stopping:
            try:
                count = await channel.repost()
                if count:
                    metrics.ALERTS_REPOSTED.labels(receiver).inc(count)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                metrics.ALERT_ATTEMPTS_FAILED.labels(receiver, channel.name).inc()
                log.warning("re-posting the open alerts of %s failed: %s", receiver, exc)
            await asyncio.sleep(channel.repeat_s)

    async def _pause(self, seconds: float) -> None:
        """Wait between delivery attempts; a stop cuts the wait short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def idle(self) -> bool:
        """Nothing pending, queued or in flight (tests and the bench wait for this)."""
        return (
            not self.grouper.pending
            and not self.inflight
            and all(q.empty() for q in self.queues.values())
        )

    # --- stages 1–4: route, silence, dedupe, group ------------------------------------------

    async def active_silences(self, now_ms: int) -> list[Silence]:
        if time.monotonic() - self._silences_read > 1.0:
            self._silences = [*self.config.silences, *await self.store.silences()]
            self._silences_read = time.monotonic()
        active = [s for s in self._silences if s.active(now_ms)]
        metrics.ACTIVE_SILENCES.set(len(active))
        return active

    async def _silenced(self, event: Any, now_ms: int) -> bool:
        labels = alert_labels(event)
        return any(s.mutes(labels, now_ms) for s in await self.active_silences(now_ms))

    async def _sent(self, receiver: str, incident_id: str) -> dict | None:
        record = self.inflight.get((receiver, incident_id))
        if record is None:
            record = await self.store.get_incident(receiver, incident_id)
        return record

    async def accept(
        self, event: AnomalyEvent, ack: Callable[[], Awaitable[Any]] | None = None
    ) -> None:
        """Route one anomaly event into the pending groups (or drop it, with a reason)."""
        tracker = _Ack(ack)
        try:
            await self._place(event, tracker)
        finally:
            await tracker.done()

    async def _place(self, event: AnomalyEvent, tracker: _Ack) -> None:
        now_ms = _now_ms()
        if event.kind not in ("open", "update", "resolve"):
            metrics.EVENTS_SUPPRESSED.labels(reason="malformed").inc()
            return
        receivers = self.router.receivers(alert_labels(event))
        if not receivers:
            metrics.EVENTS_SUPPRESSED.labels(reason="unrouted").inc()
            return
        muted = None
        if now_ms - event.ts_ms > self.config.max_event_age_s * 1000:
            muted = "stale"
        elif await self._silenced(event, now_ms):
            muted = "silenced"
        if muted is not None:
            # An alert posted to Alertmanager must still end, whatever mutes the message.
            receivers = [r for r in receivers if event.kind == "resolve" and self._ends_alerts(r)]
            if not receivers:
                metrics.EVENTS_SUPPRESSED.labels(reason=muted).inc()
                return
        opinion = None
        if event.kind == "open" and not await self._sent_anywhere(receivers, event):
            opinion = await self._second_opinion(event)
            if opinion is not None and opinion[0] < self.config.second_opinion_hold_below:
                for receiver in receivers:  # held: this incident tells nothing from now on
                    await self.store.put_incident(receiver, event.incident_id, {
                        "severity_rank": 99, "resolved": True, "held": True,
                        "opened_ms": event.ts_ms, "series": event.series})
                metrics.EVENTS_SUPPRESSED.labels(reason="second_opinion").inc()
                return
        for receiver in receivers:
            if event.kind == "resolve":
                placed = await self._place_resolve(receiver, event, tracker)
            else:
                placed = await self._place_firing(receiver, event, tracker)
            if not placed:
                metrics.EVENTS_SUPPRESSED.labels(reason="duplicate").inc()
            elif opinion is not None:
                alert = self.grouper.find(receiver, "firing", event.incident_id)
                if alert is not None:
                    alert.opinion = opinion

    async def _sent_anywhere(self, receivers: list[str], event: AnomalyEvent) -> bool:
        """An opening already handled (a redelivered event): no second note of it."""
        for receiver in receivers:
            if (self.grouper.find(receiver, "firing", event.incident_id) is not None
                    or await self._sent(receiver, event.incident_id) is not None):
                return True
        return False

    async def _second_opinion(self, event: AnomalyEvent) -> tuple[float, int] | None:
        """Note the opening (its features, for operators' verdicts to train on) and, with a
        model, how likely operators would call it real: ``(probability, verdicts)``."""
        context = event.context or {}
        stamps = context.get("ts_ms") or []
        step_ms = int(np.median(np.diff(stamps))) if len(stamps) > 1 else 60_000
        previous = await self.store.previous_openings(event.series, event.ts_ms)
        features = opening_features(event.z, event.ts_ms, previous, max(step_ms, 1),
                                    context.get("value") or [])
        await self.store.note_opening(event.series, event.incident_id, event.ts_ms,
                                      features.tolist())
        if self.opinion is None:
            return None
        return float(self.opinion.probability(features)[0]), self.opinion.n_verdicts_

    async def _place_firing(self, receiver: str, event: AnomalyEvent, tracker: _Ack) -> bool:
        if self.grouper.find(receiver, "firing", event.incident_id) is not None:
            self.grouper.add(receiver, "firing", event, ack=tracker.hold())
            return True
        record = await self._sent(receiver, event.incident_id)
        # An update is told when the incident became more severe, or when it says that a
        # distinct anomaly happened inside it (its ``change``).
        told = severity_rank(event.severity) <= record["severity_rank"] if record else False
        if told and not event.change:
            return False
        if record and record.get("held"):
            return True  # held back by the second opinion: none of its events is told
        if record and record.get("acked_by"):
            # Someone took the incident on: no more escalations (its resolve is still told).
            metrics.EVENTS_SUPPRESSED.labels(reason="acknowledged").inc()
            return True
        self.grouper.add(
            receiver, "firing", event, ack=tracker.hold(), escalation=record is not None
        )
        return True

    def _ends_alerts(self, receiver: str) -> bool:
        """The receiver posts to Alertmanager: its alerts must end at the resolve even when
        resolve messages are off, the resolve is silenced or old."""
        return any(isinstance(c, AlertmanagerChannel) for c in self.channels.get(receiver, []))

    async def _place_resolve(self, receiver: str, event: AnomalyEvent, tracker: _Ack) -> bool:
        if not (self.config.send_resolved or self._ends_alerts(receiver)):
            return False
        pending = self.grouper.find(receiver, "firing", event.incident_id)
        if pending is not None and not pending.escalation:
            # Over before its alert went out: the alert says so instead of a second message.
            self.grouper.add(receiver, "firing", pending.event, ack=tracker.hold(),
                             resolved_ms=event.ts_ms)
            return True
        record = await self._sent(receiver, event.incident_id)
        if record is None or record.get("resolved"):
            return False
        self.grouper.add(receiver, "resolved", event, ack=tracker.hold(),
                         opened_ms=record.get("opened_ms"))
        return True

    async def flush_due(self) -> None:
        """Hand every group whose window closed to its receiver's queue."""
        due = self.grouper.due()
        # In flight from here on, before any await: an event of the same incident arriving
        # meanwhile must see it (dedupe), and so must idle().
        for notification in due:
            self._mark_inflight(notification)
        now_ms = _now_ms()
        for notification in due:
            # A silence set while the group waited (e.g. a Mute press) still applies.
            kept = []
            must_end = notification.kind == "resolved" and self._ends_alerts(
                notification.receiver)
            for alert in notification.incidents:
                if not must_end and await self._silenced(alert.event, now_ms):
                    metrics.EVENTS_SUPPRESSED.labels(reason="silenced").inc()
                    self.inflight.pop((notification.receiver, alert.event.incident_id), None)
                else:
                    kept.append(alert)
            notification.incidents = kept
            if not kept:
                for ack in notification.acks:
                    await ack.done()
                continue
            # Drawn while earlier messages are being sent.
            rendering = self._render(notification)
            if rendering is not None:
                self._charts[id(notification)] = rendering
            self._enqueue(notification)

    def _enqueue(self, notification: Notification) -> None:
        """Queue a message for its receiver. While the receiver cannot deliver, the queue is
        bounded: once full, the messages in it become one digest per kind."""
        receiver = notification.receiver
        queue = self.queues[receiver]
        if queue.qsize() >= self.config.queue_max_messages:
            held = [queue.get_nowait() for _ in range(queue.qsize())]
            digests = self._digests(receiver, held)
            for message in digests:
                queue.put_nowait(message)
            log.warning("receiver %s holds %d messages (queue_max_messages): merged into %d "
                        "digest(s)", receiver, len(held), len(digests))
        queue.put_nowait(notification)
        metrics.ALERT_QUEUE_DEPTH.labels(receiver).set(queue.qsize())

    def _digests(self, receiver: str, batch: list[Notification]) -> list[Notification]:
        """``batch`` as one message per kind, firing first: a digest where there are several
        (their charts are dropped: a digest has none)."""
        out = []
        for kind in ("firing", "resolved"):
            same = [n for n in batch if n.kind == kind]
            if len(same) > 1:
                fresh = sum(1 for n in same if n.group != ("digest",))
                metrics.ALERTS_DIGESTED.labels(receiver=receiver).inc(fresh)
                for part in same:
                    self._charts.pop(id(part), None)
                out.append(merge(same))
            elif same:
                out.append(same[0])
        return out

    def _render(self, notification: Notification) -> asyncio.Future | None:
        """Start drawing the chart of the notification's lead incident (in a thread)."""
        lead = notification.lead()
        context = getattr(lead.event, "context", None)
        if notification.kind != "firing" or not context or not context.get("ts_ms"):
            return None
        title = f"{lead.event.series} — {lead.event.severity}"
        forecast = getattr(lead.event, "forecast", None)
        return asyncio.ensure_future(self._draw(context, title, lead.event.ts_ms, forecast))

    async def _draw(self, context: dict, title: str, ts_ms: int,
                    forecast: dict | None = None) -> bytes | None:
        draw = functools.partial(render_chart, forecast=forecast)
        args = (draw, context, title, ts_ms, self.z_marked)
        try:
            pool = self._chart_process()
            if pool is not None:
                try:
                    return await asyncio.get_running_loop().run_in_executor(pool, *args)
                except BrokenProcessPool:
                    log.warning("the chart process died; drawing this chart in a thread")
                    self._chart_pool = None
            return await asyncio.to_thread(*args)
        except Exception:  # noqa: BLE001 - an alert without its chart beats no alert
            log.exception("drawing the chart failed; sending without it")
        return None

    def _chart_process(self) -> ProcessPoolExecutor | None:
        """The processes charts are drawn in (one per two cores, at most four), started on
        first use (None: draw in a thread).

        Drawing is CPU-bound Python: in a thread it holds the GIL against the event loop
        (measured: 80 ms alone, 200–400 ms beside a busy loop), so it gets its own process.
        """
        if self._chart_pool is None and not self._chart_pool_failed:
            try:
                workers = max(1, min(4, (os.cpu_count() or 2) // 2))
                self._chart_pool = chart_process_pool(workers)
            except (OSError, RuntimeError) as exc:
                log.warning("cannot start a chart process (%s); drawing in threads", exc)
                self._chart_pool, self._chart_pool_failed = None, True
        return self._chart_pool

    def _mark_inflight(self, notification: Notification) -> None:
        for alert in notification.incidents:
            key = (notification.receiver, alert.event.incident_id)
            if notification.kind == "firing":
                self.inflight[key] = {
                    "severity_rank": severity_rank(alert.severity),
                    "opened_ms": alert.opened_ms or alert.event.ts_ms,
                    "resolved": alert.resolved_ms is not None,
                }
            else:  # a resolve under way: a repeat of it is a duplicate
                self.inflight[key] = {"severity_rank": 99, "resolved": True}

    # --- stage 5–6: rate limit, send with retries -------------------------------------------

    async def _receiver_loop(self, receiver: str, queue: asyncio.Queue[Notification]) -> None:
        while not self._stopping:
            first = await queue.get()
            metrics.ALERT_QUEUE_DEPTH.labels(receiver).set(queue.qsize())
            if self._stopping:
                return
            done = self._busy[receiver] = asyncio.Event()
            try:
                # Shielded: a shutdown waits for the message under way instead of cutting it
                # between the send and its record (which would send it again after restart).
                await asyncio.shield(self._rate_limited(receiver, queue, first))
            finally:
                done.set()
                self._busy.pop(receiver, None)

    async def _rate_limited(
        self, receiver: str, queue: asyncio.Queue[Notification], first: Notification
    ) -> None:
        wait = self.limiter.wait_s(receiver)
        if wait > 0:
            await asyncio.sleep(wait)
            # Whatever queued meanwhile goes out as one digest per kind, not a backlog.
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            metrics.ALERT_QUEUE_DEPTH.labels(receiver).set(0)
            for message in self._digests(receiver, batch):
                await self._deliver(message)
            return
        await self._deliver(first)

    async def _deliver(self, notification: Notification) -> None:
        interrupted = False
        try:
            await self._deliver_once(notification)
        except DeliveryInterrupted as exc:
            interrupted = True
            log.warning("stopping with %s to %s undelivered (%s): its events stay unacked and "
                        "come again after the restart", notification.id, notification.receiver,
                        exc.__cause__)
        except Exception:  # noqa: BLE001 - never lose the receiver loop; the acks still run
            log.exception("delivering notification %s failed unexpectedly", notification.id)
        finally:
            for alert in notification.incidents:
                self.inflight.pop((notification.receiver, alert.event.incident_id), None)
            if not interrupted:
                for ack in notification.acks:
                    await ack.done()

    async def _deliver_once(self, notification: Notification) -> None:
        receiver = notification.receiver
        ids = sorted(f"{a.event.incident_id}/{a.event.event_id}" for a in notification.incidents)
        notification.id = stable_id(receiver, notification.kind, *ids)
        rendering = self._charts.pop(id(notification), None) or self._render(notification)
        chart = await rendering if rendering is not None else None
        previous_refs = await self._thread_refs(notification)
        refs: dict[str, dict] = {}
        for channel in self.channels.get(receiver, []):
            if (notification.kind == "resolved" and not self.config.send_resolved
                    and not isinstance(channel, AlertmanagerChannel)):
                continue
            refs_for = await self._send_with_retries(
                notification, channel, chart, previous_refs.get(channel.name)
            )
            if refs_for is not None:
                refs[channel.name] = refs_for
        if not refs:
            return  # every channel dead-lettered; nothing to remember
        await self._remember(notification, refs, previous_refs)

    async def _thread_refs(self, notification: Notification) -> dict:
        """Message references a follow-up replies to (resolves, escalations)."""
        if notification.kind == "resolved":
            candidates = notification.incidents
        else:
            candidates = [a for a in notification.incidents if a.escalation]
        for alert in candidates:
            record = await self.store.get_incident(notification.receiver, alert.event.incident_id)
            if record and record.get("refs"):
                return record["refs"]
        return {}

    async def _send_with_retries(
        self, notification: Notification, channel: Channel, chart: bytes | None,
        previous: dict | None,
    ) -> dict | None:
        """Send by one channel. A transient failure (the server down, a timeout, a 4xx mail
        answer, an HTTP 5xx) is retried with capped backoff for up to ``outage_max_s`` of
        waiting, holding the receiver's later messages in its queue; a permanent one is
        dead-lettered at once; any other error gets ``retry_attempts``. Returns the channel's
        references, or None when dead-lettered; raises :class:`DeliveryInterrupted` when the
        notifier stops first."""
        config = self.config
        receiver = notification.receiver
        backoff = wait_random_exponential(multiplier=config.retry_initial_s, max=config.retry_max_s)
        waiting = metrics.ALERT_RECEIVER_WAITING.labels(receiver, channel.name)

        def wait(state) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TelegramRetryAfter):
                return float(exc.retry_after)
            retry_after_s = getattr(exc, "retry_after_s", None)  # HTTP 429/503 Retry-After
            if retry_after_s is not None:
                return min(float(retry_after_s), 10 * config.retry_max_s)
            return backoff(state)

        def stop(state) -> bool:
            if self._stopping:
                return True
            if _transient(state.outcome.exception()):
                return state.idle_for >= config.outage_max_s
            return state.attempt_number >= config.retry_attempts

        def before_sleep(state) -> None:
            metrics.ALERT_ATTEMPTS_FAILED.labels(receiver, channel.name).inc()
            exc = state.outcome.exception()
            outage = _transient(exc)
            if outage:
                waiting.set(1)
            # An outage of hours retries thousands of times: log the first few, then some.
            n = state.attempt_number
            level = logging.WARNING if n <= 3 or n % 20 == 0 else logging.DEBUG
            log.log(level, "sending %s to %s by %s failed (attempt %d, %.0f s waited): %s; "
                    "%s in %.1f s", notification.id, receiver, channel.name, n, state.idle_for,
                    exc, "receiver down, its messages wait; retrying" if outage else "retrying",
                    state.next_action.sleep if state.next_action else 0.0)

        progress: dict = {}
        attempts = 0
        waited_s = 0.0
        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait,
                retry=retry_if_exception(lambda e: not _permanent(e)),
                before_sleep=before_sleep,
                sleep=self.sleep,
                reraise=True,
            ):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    waited_s = attempt.retry_state.idle_for
                    result = await channel.send(notification, chart, previous, progress)
        except Exception as exc:  # noqa: BLE001 - everything undeliverable is dead-lettered
            waiting.set(0)
            metrics.ALERT_ATTEMPTS_FAILED.labels(receiver, channel.name).inc()
            if self._stopping and not _permanent(exc):
                raise DeliveryInterrupted(f"{type(exc).__name__}: {exc}") from exc
            metrics.ALERTS_DEAD_LETTERED.labels(receiver, channel.name).inc()
            log.error("giving up on %s to %s by %s after %d attempt(s), %.0f s waited: %s",
                      notification.id, receiver, channel.name, attempts, waited_s, exc)
            await self.publish_dead_letter(AlertDeadLetter(
                notification_id=notification.id,
                receiver=receiver,
                channel=channel.name,
                kind=notification.kind,
                error=f"{type(exc).__name__}: {exc}",
                attempts=attempts,
                subject=notification.subject(),
                text=notification.text(self.config.dashboard_url),
                incident_ids=[a.event.incident_id for a in notification.incidents],
                event_ids=[a.event.event_id for a in notification.incidents],
                ts_ms=_now_ms(),
                notification=notification_record(notification),
            ))
            return None
        waiting.set(0)
        if attempts > 1:
            log.warning("%s to %s by %s delivered at attempt %d, after %.0f s waited",
                        notification.id, receiver, channel.name, attempts, waited_s)
        metrics.ALERTS_SENT.labels(receiver, channel.name, notification.kind).inc()
        return result

    async def redeliver(self, record: AlertDeadLetter) -> bool:
        """Send a dead-lettered notification again by the channel that failed (without its
        chart), and record it as sent, so follow-ups thread under it and a replay does not
        send it once more. False when it failed again: a new dead letter is published.
        Raises LookupError when the record cannot be sent (no message kept, or no such
        receiver or channel in the settings now)."""
        if not record.notification:
            raise LookupError("the record keeps no message (written before redelivery existed)")
        channel = next((c for c in self.channels.get(record.receiver, [])
                        if c.name == record.channel), None)
        if channel is None:
            raise LookupError(f"no {record.channel} channel for receiver {record.receiver!r} "
                              "in the settings")
        notification = notification_from_record(record.notification)
        notification.id = record.notification_id
        previous = await self._thread_refs(notification)
        refs = await self._send_with_retries(notification, channel, None,
                                             previous.get(channel.name))
        if refs is None:
            return False
        metrics.ALERTS_REDELIVERED.labels(record.receiver, record.channel).inc()
        await self._remember(notification, {channel.name: refs}, previous, redelivered=True)
        return True

    async def _remember(self, notification: Notification, refs: dict, previous: dict,
                        redelivered: bool = False) -> None:
        receiver = notification.receiver
        patterns = []
        for alert in notification.incidents:
            incident = alert.event.incident_id
            if notification.kind == "firing":
                # Only an escalation (or a redelivered dead letter: another channel may have
                # sent it, a later message may have followed) has an earlier record; dedupe and
                # in-flight ensure it.
                earlier = {}
                if alert.escalation or redelivered:
                    earlier = await self.store.get_incident(receiver, incident) or {}
                record = {
                    "severity_rank": max(severity_rank(alert.severity),
                                         earlier.get("severity_rank", 0)),
                    "opened_ms": earlier.get("opened_ms") or alert.opened_ms or alert.event.ts_ms,
                    "resolved": bool(earlier.get("resolved")) or alert.resolved_ms is not None,
                    "series": alert.event.series,
                    "notification_id": notification.id,
                    # Follow-ups thread under the first message of each channel.
                    "refs": {**refs, **(earlier.get("refs") or {})},
                    "pattern": incident_pattern([alert.event], earlier.get("pattern"),
                                                alert.opened_ms),
                    **{k: earlier[k] for k in ("acked_by", "acked_ms") if k in earlier},
                }
            else:
                record = await self.store.get_incident(receiver, incident) or {}
                record["resolved"] = True
            await self.store.put_incident(receiver, incident, record)
            patterns.append(record.get("pattern"))
        await self.store.put_notification(notification.id, {
            "receiver": receiver,
            "kind": notification.kind,
            "incidents": [
                {"incident_id": a.event.incident_id, "series": a.event.series, "pattern": p}
                for a, p in zip(notification.incidents, patterns, strict=True)
            ],
        })

    # --- feedback from Telegram buttons -----------------------------------------------------

    async def metric_offer(self, incidents: list[dict]) -> str:
        """After a "not an anomaly": where :data:`METRIC_OFFER_SERIES` or more series of one
        metric have been marked so, the command that teaches every series of the metric."""
        offers = []
        for incident in incidents:
            name = parse_series(incident["series"])[0]
            marked = await self.store.mark_not_anomaly(name, incident["series"])
            if marked >= METRIC_OFFER_SERIES:
                offers.append(metric_offer_text(name, marked, incident["incident_id"]))
        return "".join(f" {o}" for o in dict.fromkeys(offers))

    async def acknowledge(self, receiver: str, incident_id: str, who: str, now_ms: int) -> bool:
        """Record that ``who`` took the incident on: its escalations are no longer sent to
        ``receiver`` (its resolve still is). False when the incident is unknown or was
        acknowledged already."""
        record = await self.store.get_incident(receiver, incident_id)
        if record is None or record.get("acked_by"):
            return False
        record["acked_by"], record["acked_ms"] = who, now_ms
        await self.store.put_incident(receiver, incident_id, record)
        inflight = self.inflight.get((receiver, incident_id))
        if inflight is not None:
            inflight.update(acked_by=who, acked_ms=now_ms)
        return True

    async def apply_feedback(self, feedback: Feedback) -> None:
        """Feedback given elsewhere (``vigil feedback``, another notifier's button): an
        acknowledgement stops the incident's escalations for every receiver that told it."""
        if feedback.action in VERDICTS:
            # What `vigil train --feedback` learns from (openings this notifier saw).
            await self.store.add_verdict(feedback.incident_id, VERDICTS[feedback.action])
        if feedback.action != "acknowledge":
            return
        for receiver in self.channels:
            await self.acknowledge(receiver, feedback.incident_id, feedback.user_name,
                                   feedback.ts_ms)

    async def handle_press(self, press: ButtonPress, bot: TelegramBot) -> None:
        record = await self.store.get_notification(press.notification_id)
        if record is None:
            await bot.answer(press.callback_id, "This alert is unknown or too old.")
            return
        now_ms = _now_ms()
        for incident in record["incidents"]:
            if press.action == "acknowledge":
                await self.acknowledge(record["receiver"], incident["incident_id"],
                                       press.user_name, now_ms)
            await self.publish_feedback(Feedback(
                feedback_id=stable_id(press.callback_id, incident["incident_id"]),
                action=press.action,
                incident_id=incident["incident_id"],
                series=incident["series"],
                notification_id=press.notification_id,
                receiver=record["receiver"],
                user_id=press.user_id,
                user_name=press.user_name,
                chat_id=press.chat_id,
                ts_ms=now_ms,
                ts=_iso(now_ms),
                pattern=incident.get("pattern") if press.action == "not_anomaly" else None,
            ))
        metrics.FEEDBACK.labels(action=press.action).inc()
        series = sorted({i["series"] for i in record["incidents"]})
        if press.action == "mute":
            silence = Silence(
                matchers=[Matcher("__series__", "=~", "|".join(re.escape(s) for s in series))],
                starts_ms=now_ms,
                ends_ms=now_ms + MUTE_S * 1000,
                created_by=f"telegram:{press.user_name}",
                comment=f"Mute 1 h from alert {press.notification_id}",
            )
            await self.store.add_silence(silence)
            self._silences_read = -1.0  # in force for the very next event
            text = f"Muted {len(series)} series for 1 h (silence {silence.id})."
        elif press.action == "acknowledge":
            text = f"Acknowledged by {press.user_name}: no more escalations of this alert."
        else:
            text = ("Recorded as not an anomaly: vigil will not alert on this pattern of "
                    f"{', '.join(series)} again unless it is clearly larger "
                    "(`vigil feedback forget` undoes it).")
            text += await self.metric_offer(record["incidents"])
        log.info("%s pressed %s on %s", press.user_name, press.action, press.notification_id)
        await bot.answer(press.callback_id, text)


def build_channels(
    config: AlertingConfig, bot: TelegramBot | None, store: NotifierStore | None = None
) -> dict[str, list[Channel]]:
    """Each receiver's channels; ``store`` keeps the open alerts of Alertmanager receivers."""
    channels: dict[str, list[Channel]] = {}
    for receiver in config.receivers:
        out: list[Channel] = []
        if receiver.email is not None:
            out.append(EmailChannel(config.smtp, receiver.email, config.dashboard_url))
        if receiver.telegram is not None:
            if bot is None:
                raise ValueError(f"receiver {receiver.name!r} uses Telegram but no bot is set up")
            out.append(TelegramChannel(bot, receiver.telegram, config.dashboard_url))
        if receiver.alertmanager is not None:
            if store is None:
                raise ValueError(f"receiver {receiver.name!r} uses Alertmanager: "
                                 "build_channels needs the NotifierStore")
            out.append(AlertmanagerChannel(receiver.name, receiver.alertmanager, store,
                                           config.dashboard_url))
        if receiver.webhook is not None:
            out.append(WebhookChannel(receiver.webhook, config.group_by, config.dashboard_url))
        channels[receiver.name] = out
    return channels


