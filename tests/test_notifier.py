"""The notify pipeline against real servers: aiosmtpd (SMTP), the local Bot API server over
HTTP (aiogram as in production) and Redis. Kafka comes in test_notifier_integration.py."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller

from vigil.devtools.botapi import BotAPIServer
from vigil.devtools.embedded import free_port
from vigil.events import AnomalyEvent, stable_id, verdict
from vigil.sinks.alerts import AlertingConfig, RateLimiter
from vigil.sinks.delivery import Notifier, NotifierStore, build_channels
from vigil.sinks.telegram import TelegramBot

pytestmark = pytest.mark.integration

STEP_MS = 60_000


def make_event(
    series: str = 'cpu_usage{host="db-1"}',
    kind: str = "open",
    severity: str = "warning",
    incident: str | None = None,
    ts_ms: int | None = None,
    context: bool = True,
) -> AnomalyEvent:
    """An anomaly event as the worker writes it (with a chart context of 2 hours)."""
    from vigil.series import parse_series

    name, labels = parse_series(series)
    ts_ms = ts_ms or (time.time_ns() // 1_000_000 // STEP_MS * STEP_MS)
    incident = incident or stable_id(series, ts_ms)
    ctx = None
    if context:
        n = 120
        ts = [ts_ms - (n - 1 - i) * STEP_MS for i in range(n)]
        value = [50.0 + (i % 7) for i in range(n)]
        value[-1] = 95.0
        ctx = {"ts_ms": ts, "value": value, "expected": [53.0] * n, "lower": [45.0] * n,
               "upper": [61.0] * n, "z": [0.5] * (n - 1) + [14.0]}
    return AnomalyEvent(
        event_id=stable_id(incident, kind, ts_ms), incident_id=incident, kind=kind,
        series=series, name=name, labels=labels,
        ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ms / 1000)), ts_ms=ts_ms,
        value=95.0, expected=53.0, lower=45.0, upper=61.0, score=0.999999,
        severity=severity, anomaly_type="point", detectors=["seasonal"],
        reason="value 95 is above the expected band [45, 61]", context=ctx,
    )


class SmtpSink:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, SmtpSink]]:
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()


@pytest.fixture
def botapi() -> Iterator[BotAPIServer]:
    server = BotAPIServer().start()
    try:
        yield server
    finally:
        server.stop()


class Harness:
    """A Notifier with real channels, its Redis records under a unique prefix."""

    def __init__(self, redis_url: str, config: dict, prefix: str | None = None,
                 cleanup: bool = True, sleep=asyncio.sleep):
        self.config = AlertingConfig.model_validate(config)
        self.client = aioredis.from_url(redis_url)
        self.prefix = prefix or f"vigil-test-{uuid.uuid4().hex[:8]}:"
        self.cleanup = cleanup  # False: the records stay for a restarted Harness
        self.store = NotifierStore(self.client, self.prefix)
        self.bot = None
        if any(r.telegram for r in self.config.receivers):
            self.bot = TelegramBot(self.config.telegram, self.config.telegram_chats())
        self.dead_letters: list = []
        self.feedback: list = []
        self.acked: list[str] = []

        async def dead_letter(record):
            self.dead_letters.append(record)

        async def feedback(record):
            self.feedback.append(record)

        self.notifier = Notifier(
            self.config, self.store, build_channels(self.config, self.bot, self.store),
            dead_letter, feedback, sleep=sleep,
        )
        self._flush: asyncio.Task | None = None

    async def __aenter__(self) -> Harness:
        self.notifier.start()
        self._flush = asyncio.create_task(self.notifier.run_flush_loop())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._flush is not None
        self._flush.cancel()
        await self.notifier.stop()
        if self.bot is not None:
            await self.bot.close()
        keys = [k async for k in self.client.scan_iter(f"{self.prefix}*")]
        if keys and self.cleanup:
            await self.client.delete(*keys)
        await self.client.aclose()

    async def send(self, *events: AnomalyEvent) -> None:
        for event in events:
            async def ack(event_id=event.event_id):
                self.acked.append(event_id)

            await self.notifier.accept(event, ack)

    async def settle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.notifier.idle():
            assert time.monotonic() < deadline, "the notifier did not become idle"
            await asyncio.sleep(0.05)


def email_config(port: int, **extra) -> dict:
    config = {
        "receivers": [{"name": "ops-mail", "email": {"to": ["oncall@example.com"]}}],
        "default_receivers": ["ops-mail"],
        "group_wait_s": 0.2,
        "retry_initial_s": 0.2,
        "retry_max_s": 0.5,
        "smtp": {"host": "127.0.0.1", "port": port, "sender": "vigil@example.com"},
    }
    config.update(extra)
    return config


def telegram_config(botapi: BotAPIServer, **extra) -> dict:
    config = {
        "receivers": [{"name": "ops-tg", "telegram": {"chat_ids": [1001]}}],
        "default_receivers": ["ops-tg"],
        "group_wait_s": 0.2,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.3,
        "telegram": {"token": "123:TEST", "api_url": botapi.url, "poll_timeout_s": 1,
                     "allowed_user_ids": [42]},
    }
    config.update(extra)
    return config


# --- email ------------------------------------------------------------------------------------


async def test_email_has_subject_text_html_and_inline_chart(redis_url, smtp):
    controller, sink = smtp
    async with Harness(redis_url, email_config(controller.port)) as h:
        event = make_event(severity="critical")
        await h.send(event)
        await h.settle()
    assert len(sink.messages) == 1
    message = sink.messages[0]
    assert message["Subject"] == "[vigil] CRITICAL db-1: cpu_usage (point)"
    assert sink.envelopes[0].rcpt_tos == ["oncall@example.com"]
    plain = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert 'cpu_usage{host="db-1"}' in plain and "expected 53" in plain
    images = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1
    png = images[0].get_content()
    assert png.startswith(b"\x89PNG")
    cid = images[0]["Content-ID"].strip("<>")
    assert f"cid:{cid}" in html  # inline, not a loose attachment
    assert h.acked == [event.event_id]


async def test_resolve_email_replies_to_the_alert(redis_url, smtp):
    controller, sink = smtp
    async with Harness(redis_url, email_config(controller.port)) as h:
        opened = make_event()
        await h.send(opened)
        await h.settle()
        resolve = make_event(kind="resolve", incident=opened.incident_id,
                             ts_ms=opened.ts_ms + 25 * STEP_MS, context=False)
        await h.send(resolve, resolve)  # a replayed resolve is not sent twice
        await h.settle()
    assert len(sink.messages) == 2
    alert, resolved = sink.messages
    assert resolved["In-Reply-To"] == alert["Message-ID"]
    assert resolved["Subject"] == "Re: " + alert["Subject"]
    assert "resolved after 25 min" in resolved.get_body(("plain",)).get_content()


async def test_smtp_down_then_back_is_retried_and_delivered_once(redis_url):
    port = free_port()
    sink = SmtpSink()
    config = email_config(port, retry_attempts=30)
    async with Harness(redis_url, config) as h:
        await h.send(make_event())
        await asyncio.sleep(1.5)  # a few attempts fail: nothing listens on the port
        assert sink.messages == [] and h.acked == []  # not acked while undelivered
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            await h.settle()
        finally:
            controller.stop()
    assert len(sink.messages) == 1
    assert h.dead_letters == []
    assert len(h.acked) == 1


class VirtualClock:
    """Stands in for the wall clock between delivery attempts: each wait adds its length to
    ``now_s`` and yields for a few milliseconds, so a 10-minute outage takes about a second
    and its length does not depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now_s += seconds
        await asyncio.sleep(0.002)


def hosts_in(messages) -> Counter:
    """How many emails named each host (a digest names every host it covers)."""
    return Counter(
        line.split('host="')[1].split('"')[0]
        for m in messages for line in m.get_body(("plain",)).get_content().splitlines()
        if line.startswith("• ") and 'host="' in line
    )


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.chaos
async def test_a_ten_minute_smtp_outage_loses_no_alert(redis_url, chaos):
    """The production retry settings (6 attempts, backoff 1 s doubling up to 30 s: a budget of
    at most 31 s per message) against a real SMTP server that is down for 10 minutes of the
    virtual clock: every one of 40 incidents is emailed once it is back, none twice."""
    port = free_port()
    sink = SmtpSink()
    clock = VirtualClock()
    config = email_config(port, retry_attempts=6, retry_initial_s=1, retry_max_s=30,
                          rate_limit_per_minute=10_000)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    async with Harness(redis_url, config, sleep=clock.sleep) as h:
        await h.send(make_event(series='cpu_usage{host="before"}'))
        await h.settle()
        assert len(sink.messages) == 1  # the server works
        controller.stop()  # the outage starts
        events = [make_event(series=f'cpu_usage{{host="node-{i:02d}"}}') for i in range(40)]
        await h.send(*events)
        # Until 10 minutes have passed, or (before the fix) every message was given up on.
        await wait_for(lambda: clock.now_s >= 600 or h.notifier.idle(), 120,
                       "10 minutes of the outage")
        assert len(h.dead_letters) == 0, f"{len(h.dead_letters)} of 40 dead-lettered"
        assert len(sink.messages) == 1
        assert len(h.acked) == 1  # nothing acked while undelivered
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()  # back on the same port
        try:
            # 40 messages with their charts: a generous bound for a busy machine (the
            # virtual clock makes no wait real).
            await h.settle(timeout=180)
        finally:
            controller.stop()
    told = hosts_in(sink.messages)
    wanted = {"before"} | {f"node-{i:02d}" for i in range(40)}
    chaos(unit="alerts", sent=41, expected=len(wanted), lost=len(wanted - set(told)),
          duplicated=sum(n - 1 for n in told.values()))
    assert set(told) == wanted
    assert set(told.values()) == {1}, f"told twice: {[k for k, n in told.items() if n > 1]}"
    assert h.dead_letters == [] and len(h.acked) == 41
    assert max(clock.waits) <= 30  # the backoff stays capped


async def test_a_receiver_that_is_down_holds_at_most_queue_max_messages_as_a_digest(redis_url):
    from prometheus_client import REGISTRY

    port = free_port()
    sink = SmtpSink()
    clock = VirtualClock()
    config = email_config(port, queue_max_messages=5, rate_limit_per_minute=10_000)
    async with Harness(redis_url, config, sleep=clock.sleep) as h:
        await h.send(*[make_event(series=f'cpu_usage{{host="node-{i:02d}"}}') for i in range(40)])
        await wait_for(lambda: clock.now_s >= 600, 120, "10 minutes of the outage")
        await wait_for(lambda: not h.notifier.grouper.pending, 30, "every group flushed")
        queued = h.notifier.queues["ops-mail"].qsize()
        depth = REGISTRY.get_sample_value("vigil_alert_queue_depth", {"receiver": "ops-mail"})
        waiting = REGISTRY.get_sample_value("vigil_alert_receiver_waiting",
                                            {"receiver": "ops-mail", "channel": "email"})
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            await h.settle()
        finally:
            controller.stop()
        after = REGISTRY.get_sample_value("vigil_alert_receiver_waiting",
                                          {"receiver": "ops-mail", "channel": "email"})
    assert 1 <= queued <= 5 and depth == queued and waiting == 1 and after == 0
    # The message under way, then at most the queue's worth: one of them a digest.
    assert len(sink.messages) <= 1 + 5
    assert any("anomalies" in m["Subject"] for m in sink.messages)
    told = hosts_in(sink.messages)
    assert set(told) == {f"node-{i:02d}" for i in range(40)} and set(told.values()) == {1}
    assert h.dead_letters == [] and len(h.acked) == 40


class RefusingSink(SmtpSink):
    """Refuses every recipient with ``code`` until ``code`` is set to None."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code: int | None = code
        self.refused = 0

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if self.code is not None:
            self.refused += 1
            return f"{self.code} mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.mark.parametrize("code", [550, 450])
async def test_a_5xx_refusal_is_dead_lettered_at_once_and_a_4xx_waits(redis_url, code):
    sink = RefusingSink(code)
    clock = VirtualClock()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        async with Harness(redis_url, email_config(controller.port),
                           sleep=clock.sleep) as h:
            await h.send(make_event())
            if code == 450:  # greylisting: the server asks to come back later
                await wait_for(lambda: sink.refused >= 5, 60, "five refusals")
                assert h.dead_letters == [] and sink.messages == []
                sink.code = None
            await h.settle()
    finally:
        controller.stop()
    if code == 550:
        (dead,) = h.dead_letters
        assert dead.attempts == 1 and sink.refused == 1 and "550" in dead.error
        assert sink.messages == []
    else:
        assert h.dead_letters == [] and len(sink.messages) == 1
    assert len(h.acked) == 1


async def test_a_stop_during_an_outage_neither_dead_letters_nor_acks(redis_url):
    config = email_config(free_port(), retry_initial_s=60, retry_max_s=60)
    h = Harness(redis_url, config)
    async with h:
        await h.send(make_event())
        await wait_for(lambda: h.notifier._busy, 30, "the first attempt")
        started = time.monotonic()
    # The 60 s wait was cut short by the stop; the event comes again after a restart.
    assert time.monotonic() - started < 15
    assert h.dead_letters == [] and h.acked == []


async def test_a_receiver_down_longer_than_outage_max_s_dead_letters_with_the_message(
    redis_url, smtp
):
    controller, sink = smtp
    clock = VirtualClock()
    port = free_port()
    async with Harness(redis_url, email_config(port, outage_max_s=300),
                       sleep=clock.sleep) as h:
        event = make_event(severity="critical")
        await h.send(event)
        await h.settle()
    (dead,) = h.dead_letters
    assert 300 <= clock.now_s < 300 + 30 and dead.attempts > 6
    assert "Connect" in dead.error and h.acked == [event.event_id]
    assert dead.notification["incidents"][0]["event"]["event_id"] == event.event_id
    assert "context" not in dead.notification["incidents"][0]["event"]


async def test_a_newline_in_a_label_value_is_no_header_and_no_retry(redis_url, smtp):
    from vigil.series import series_id

    controller, sink = smtp
    series = series_id("cpu_usage", {"host": "db-1\r\nBcc: evil@example.com"})
    async with Harness(redis_url, email_config(controller.port)) as h:
        await h.send(make_event(series=series, severity="critical"))
        await h.settle()
    assert len(sink.messages) == 1 and h.dead_letters == []
    assert sink.envelopes[0].rcpt_tos == ["oncall@example.com"]
    assert "\n" not in sink.messages[0]["Subject"] and sink.messages[0]["Bcc"] is None


async def test_a_message_that_cannot_be_built_is_dead_lettered_at_once(redis_url, monkeypatch):
    import vigil.sinks.email

    def broken(*args, **kwargs):
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    monkeypatch.setattr(vigil.sinks.email, "build_email", broken)
    async with Harness(redis_url, email_config(free_port(), retry_attempts=6)) as h:
        await h.send(make_event())
        await h.settle()
    assert len(h.dead_letters) == 1
    assert h.dead_letters[0].attempts == 1  # another attempt builds the same message


async def test_smtp_login_with_password(redis_url):
    from aiosmtpd.smtp import AuthResult

    sink = SmtpSink()
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"vigil" and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        config = email_config(port)
        config["smtp"].update(username="vigil", password="s3cret")
        async with Harness(redis_url, config) as h:
            await h.send(make_event())
            await h.settle()
    finally:
        controller.stop()
    assert logins == [(b"vigil", b"s3cret")]
    assert len(sink.messages) == 1
    assert "s3cret" not in repr(h.config)  # secrets never show in logs or reprs


# --- grouping and deduplication ---------------------------------------------------------------


async def test_fifty_events_of_one_incident_make_one_message(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event()
        events = [opened] + [
            make_event(incident=opened.incident_id, kind="update", ts_ms=opened.ts_ms)
            for _ in range(48)
        ] + [make_event(incident=opened.incident_id, kind="update", severity="critical",
                        ts_ms=opened.ts_ms + STEP_MS)]
        await h.send(*events)
        await h.settle()
        await h.send(*events)  # the same events again (a replay): nothing more is sent
        await h.settle()
    sent = botapi.sent()
    assert len(sent) == 1
    assert "CRITICAL" in sent[0].text
    assert len(h.acked) == 100


async def test_one_host_ten_series_in_the_window_make_one_message(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi, group_wait_s=1.0)) as h:
        names = [f"metric_{i}" for i in range(10)]
        for name in names:
            await h.send(make_event(series=f'{name}{{host="web-3"}}'))
            await asyncio.sleep(0.05)
        await h.send(make_event(series='cpu_usage{host="web-4"}'))  # another host: its own
        await h.settle()
    sent = botapi.sent()
    assert len(sent) == 2
    grouped = next(m for m in sent if "web-3" in m.text)
    assert "10 anomalies" in grouped.text
    assert all(f'{name}{{host="web-3"}}' in grouped.text for name in names)


async def test_escalation_and_resolve_reply_in_the_thread(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event()
        await h.send(opened)
        await h.settle()
        await h.send(make_event(incident=opened.incident_id, kind="update", severity="critical",
                                ts_ms=opened.ts_ms + 3 * STEP_MS))
        await h.settle()
        await h.send(make_event(incident=opened.incident_id, kind="resolve",
                                ts_ms=opened.ts_ms + 40 * STEP_MS, context=False))
        await h.settle()
    first, escalation, resolved = botapi.sent()
    assert first.method == "sendPhoto" and first.reply_to is None
    assert escalation.reply_to == first.message_id and "escalated to critical" in escalation.text
    assert resolved.method == "sendMessage" and resolved.reply_to == first.message_id
    assert "resolved after 40 min" in resolved.text
    assert resolved.buttons == []


async def test_a_distinct_anomaly_inside_an_incident_is_told_in_the_thread(redis_url, botapi):
    # An update at the same severity says nothing new unless it tells a distinct anomaly.
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event()
        await h.send(opened)
        await h.settle()
        await h.send(make_event(incident=opened.incident_id, kind="update",
                                ts_ms=opened.ts_ms + 2 * STEP_MS))
        await h.settle()
        dip = make_event(incident=opened.incident_id, kind="update",
                         ts_ms=opened.ts_ms + 6 * STEP_MS)
        dip.change = "direction"
        await h.send(dip)
        await h.settle()
    first, told = botapi.sent()
    assert told.reply_to == first.message_id
    assert "new anomaly, the other way, warning" in told.text


async def test_rate_limit_turns_a_burst_into_a_digest(redis_url, botapi):
    config = telegram_config(botapi, group_wait_s=0.0, rate_limit_per_minute=30)
    async with Harness(redis_url, config) as h:
        # The bucket's clock stands still: no token refills while the burst goes out, however
        # slow the machine is, so exactly the burst goes out one by one.
        h.notifier.limiter = RateLimiter(30, clock=lambda: 0.0)
        for i in range(34):
            await h.send(make_event(series=f'cpu_usage{{host="node-{i}"}}'))
        await h.settle()
    sent = botapi.sent()
    # A burst of 30, then the rest as one digest — every incident told once, none dropped.
    assert len(sent) == 31
    assert "anomalies" in sent[-1].text and "digest" not in sent[0].text
    told = [f'host="node-{i}"' for i in range(34) for m in sent if f'host="node-{i}"' in m.text]
    assert len(told) == 34 and len(set(told)) == 34
    assert len(h.acked) == 34


# --- silences and routing ---------------------------------------------------------------------


async def test_routes_and_config_silences(redis_url, botapi, smtp):
    controller, sink = smtp
    config = telegram_config(
        botapi,
        receivers=[
            {"name": "ops-tg", "telegram": {"chat_ids": [1001]}},
            {"name": "db-mail", "email": {"to": ["dba@example.com"]}},
        ],
        routes=[{"matchers": ['host=~"db-.*"'], "receivers": ["db-mail"], "continue": True},
                {"matchers": ['severity="critical"'], "receivers": ["ops-tg"]}],
        default_receivers=[],
        silences=[{"matchers": ['__name__="disk_used_percent"'],
                   "ends_ms": "2099-01-01T00:00:00Z"}],
        smtp={"host": "127.0.0.1", "port": controller.port},
    )
    async with Harness(redis_url, config) as h:
        await h.send(
            make_event(series='cpu_usage{host="db-1"}'),  # db-mail only (warning)
            make_event(series='cpu_usage{host="web-1"}', severity="critical"),  # ops-tg
            make_event(series='cpu_usage{host="web-2"}'),  # no route, no default: dropped
            make_event(series='disk_used_percent{host="db-2"}', severity="critical"),  # muted
        )
        await h.settle()
    assert [m["Subject"] for m in sink.messages] == ["[vigil] WARNING db-1: cpu_usage (point)"]
    assert [("web-1" in m.text) for m in botapi.sent()] == [True]
    assert len(h.acked) == 4


# --- Telegram buttons -------------------------------------------------------------------------


async def test_buttons_publish_feedback_and_mute_silences(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event(series='cpu_usage{host="db-1"}')
        opened.z = 8.5
        await h.send(opened)
        await h.settle()
        (alert,) = botapi.sent()
        assert alert.method == "sendPhoto" and alert.photo.startswith(b"\x89PNG")
        assert [b["text"] for b in alert.buttons] == [
            "✅ Acknowledge", "🔕 Mute 1 h", "🙅 Not an anomaly"
        ]
        presses = h.bot.presses()
        botapi.press(alert, 1, username="alice")  # Mute 1 h
        botapi.press(alert, 0, username="eve", chat_id=666)  # a chat not on the allow-list
        botapi.press(alert, 2, username="bob")  # Not an anomaly
        for _ in range(2):
            press = await asyncio.wait_for(anext(presses), 10)
            await h.notifier.handle_press(press, h.bot)
        await presses.aclose()
        # The mute holds for a new incident of the same series, not for other series.
        await h.send(make_event(series='cpu_usage{host="db-1"}', severity="critical",
                                ts_ms=opened.ts_ms + 10 * STEP_MS))
        await h.send(make_event(series='cpu_usage{host="db-2"}'))
        await h.settle()
        silences = await h.store.silences()
    assert [(f.action, f.user_name, f.incident_id) for f in h.feedback] == [
        ("mute", "alice", opened.incident_id), ("not_anomaly", "bob", opened.incident_id),
    ]
    # "Not an anomaly" carries what the worker teaches the series: the incident's pattern.
    assert h.feedback[0].pattern is None
    assert h.feedback[1].pattern == {
        "anomaly_type": opened.anomaly_type, "direction": 1 if opened.value > opened.expected
        else -1, "peak_score": 8.5, "opened_ms": opened.ts_ms}
    assert len(silences) == 1 and silences[0].created_by == "telegram:alice"
    assert 3_590_000 < silences[0].ends_ms - silences[0].starts_ms <= 3_600_000
    answers = [a["text"] for a in botapi.answers]
    assert answers[0].startswith("Muted 1 series for 1 h")
    assert "may not act" in answers[1]
    assert "not an anomaly" in answers[2]
    later = botapi.sent()[1:]
    assert len(later) == 1 and "db-2" in later[0].text


async def test_the_third_series_of_a_metric_marked_offers_to_teach_the_metric(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        alerts = []
        for host in ("db-1", "db-2", "db-3"):
            await h.send(make_event(series=f'disk_io{{host="{host}"}}'))
            await h.settle()
            alerts.append(botapi.sent()[-1])
        presses = h.bot.presses()
        for alert in alerts:
            botapi.press(alert, 2, username="bob")  # Not an anomaly
            await h.notifier.handle_press(await asyncio.wait_for(anext(presses), 10), h.bot)
        await presses.aclose()
    answers = [a["text"] for a in botapi.answers]
    assert ["--metric" in a for a in answers] == [False, False, True]
    assert "3 series of disk_io have been marked" in answers[2]


async def test_acknowledge_stops_escalations_but_not_the_resolve(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event()
        await h.send(opened)
        await h.settle()
        (alert,) = botapi.sent()
        presses = h.bot.presses()
        botapi.press(alert, 0, username="carol")  # Acknowledge
        await h.notifier.handle_press(await asyncio.wait_for(anext(presses), 10), h.bot)
        await presses.aclose()
        await h.send(make_event(incident=opened.incident_id, kind="update", severity="critical",
                                ts_ms=opened.ts_ms + 3 * STEP_MS))
        await h.settle()
        escalations = botapi.sent()[1:]
        await h.send(make_event(incident=opened.incident_id, kind="resolve",
                                ts_ms=opened.ts_ms + 40 * STEP_MS, context=False))
        await h.settle()
        record = await h.store.get_incident("ops-tg", opened.incident_id)
    assert escalations == []
    (resolved,) = botapi.sent()[1:]
    assert "resolved" in resolved.text and resolved.reply_to == alert.message_id
    assert record["acked_by"] == "carol" and record["acked_ms"] > 0
    assert [(f.action, f.user_name) for f in h.feedback] == [("acknowledge", "carol")]
    assert "no more escalations" in botapi.answers[0]["text"]


async def test_an_acknowledgement_from_the_command_line_stops_escalations(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi)) as h:
        opened = make_event()
        await h.send(opened)
        await h.settle()
        record = verdict("acknowledge", [opened], "dave")
        await h.notifier.apply_feedback(record)
        await h.notifier.apply_feedback(record)  # twice: the first acknowledgement stays
        await h.send(make_event(incident=opened.incident_id, kind="update", severity="critical",
                                ts_ms=opened.ts_ms + 3 * STEP_MS))
        await h.settle()
        stored = await h.store.get_incident("ops-tg", opened.incident_id)
    assert len(botapi.sent()) == 1
    assert stored["acked_by"] == "dave"


# --- the second opinion (docs/feedback.md) -----------------------------------------------------


def _model_file(tmp_path, z_middle: float) -> str:
    """A hand-written model (no training): P(real) rises with z, 0.5 at ``z_middle``."""
    from vigil.detectors.second_opinion import FEATURES

    n = len(FEATURES)
    data = {"kind": "logistic", "version": 1, "features": list(FEATURES), "mean": [0.0] * n,
            "scale": [1.0] * n, "coef": [2.0] + [0.0] * (n - 1), "intercept": -2.0 * z_middle,
            "l2": 1.0, "n_verdicts": 40}
    path = tmp_path / "second-opinion.json"
    path.write_bytes(orjson.dumps(data))
    return str(path)


async def test_the_notifier_keeps_verdicts_and_a_model_holds_back_confident_false_openings(
        redis_url, botapi, tmp_path):
    config = telegram_config(botapi, second_opinion_model=_model_file(tmp_path, 10.0),
                             second_opinion_hold_below=0.2)
    async with Harness(redis_url, config) as h:
        weak = make_event(series='jobs{host="a"}')
        weak.z = 7.0  # P(real) = 0.0025: held back with the rest of its incident
        strong = make_event(series='jobs{host="b"}')
        strong.z = 12.0  # 0.98: told, with the opinion
        await h.send(weak, strong)
        await h.settle()
        await h.send(make_event(series='jobs{host="a"}', incident=weak.incident_id,
                                kind="update", severity="critical",
                                ts_ms=weak.ts_ms + 2 * STEP_MS))
        await h.send(make_event(series='jobs{host="a"}', incident=weak.incident_id,
                                kind="resolve", ts_ms=weak.ts_ms + 40 * STEP_MS, context=False))
        await h.settle()
        # Operators' verdicts on what the notifier saw become training rows.
        for incident, action in ((weak.incident_id, "not_anomaly"),
                                 (strong.incident_id, "acknowledge")):
            record = verdict(action, [strong if incident == strong.incident_id else weak], "op")
            await h.notifier.apply_feedback(record)
        rows = {k.decode(): orjson.loads(v) for k, v in
                (await h.client.hgetall(f"{h.prefix}notify:verdicts")).items()}
    (sent,) = botapi.sent()
    assert 'jobs{host="b"}' in sent.text and 'jobs{host="a"}' not in sent.text
    assert "second opinion: 98 % likely a real anomaly (learned from 40" in sent.text
    assert {k: r["label"] for k, r in rows.items()} == {weak.incident_id: 0,
                                                      strong.incident_id: 1}
    assert rows[weak.incident_id]["features"][0] == 7.0


async def test_telegram_errors_retry_then_dead_letter(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi, retry_attempts=4)) as h:
        botapi.fail_next(2, status=500)
        await h.send(make_event(series='cpu_usage{host="a"}'))
        await h.settle()
        assert len(botapi.sent()) == 1 and h.dead_letters == []
        botapi.fail_next(1, status=429, retry_after=1)
        started = time.monotonic()
        await h.send(make_event(series='cpu_usage{host="b"}'))
        await h.settle()
        assert len(botapi.sent()) == 2 and time.monotonic() - started >= 1.0  # honoured
        botapi.fail_next(1, status=400)  # a bad request is not retried
        await h.send(make_event(series='cpu_usage{host="c"}'))
        await h.settle()
    assert len(botapi.sent()) == 2
    (dead,) = h.dead_letters
    assert dead.attempts == 1 and dead.channel == "telegram" and "TelegramBadRequest" in dead.error


async def test_resolve_counts_from_the_open_even_when_an_update_was_merged(redis_url, botapi):
    async with Harness(redis_url, telegram_config(botapi, group_wait_s=0.5)) as h:
        opened = make_event()
        update = make_event(incident=opened.incident_id, kind="update", severity="critical",
                            ts_ms=opened.ts_ms + 3 * STEP_MS)
        await h.send(opened, update)  # one message, showing the critical event
        await h.settle()
        await h.send(make_event(incident=opened.incident_id, kind="resolve",
                                ts_ms=opened.ts_ms + 25 * STEP_MS, context=False))
        await h.settle()
    first, resolved = botapi.sent()
    assert "CRITICAL" in first.text
    assert "resolved after 25 min" in resolved.text


async def test_a_button_press_needs_an_allowed_user_as_well_as_an_allowed_chat():
    from types import SimpleNamespace as NS

    from vigil.sinks.alerts import TelegramSettings
    from vigil.sinks.telegram import TelegramBot

    settings = TelegramSettings(token="1:T", api_url="http://127.0.0.1:9",
                                allowed_user_ids=[42])
    bot = TelegramBot(settings, allowed_chats={1001})
    answers = []

    async def answer(callback_id, text):
        answers.append(text)

    bot.answer = answer

    def query(chat: int, user: int):
        return NS(id="cb1", data="ack:n1", message=NS(chat=NS(id=chat), message_id=5),
                  from_user=NS(id=user, username="u", full_name="U"))

    try:
        assert (await bot._press(query(1001, 42))).user_id == 42
        assert await bot._press(query(1001, 7)) is None  # a member of the group, not allowed
        assert await bot._press(query(2002, 42)) is None  # an allowed user, another chat
        assert len(answers) == 2
        # No user allow-list: nobody's press is accepted.
        open_bot = TelegramBot(TelegramSettings(token="1:T", api_url="http://127.0.0.1:9"),
                               allowed_chats={1001})
        open_bot.answer = answer
        assert await open_bot._press(query(1001, 42)) is None
        await open_bot.close()
    finally:
        await bot.close()
