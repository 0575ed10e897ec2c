"""``vigil notifier`` as a process on the real broker and Redis: the worker's events become
alerts, restarts send each incident once, failures and button presses reach their topics."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

import orjson
import pytest
from aiosmtpd.controller import Controller
from confluent_kafka import Producer
from typer.testing import CliRunner

from tests.conftest import Stack, wait_until
from tests.test_notifier import RefusingSink, hosts_in, make_event
from vigil.cli import app as cli
from vigil.devtools.botapi import BotAPIServer
from vigil.devtools.embedded import TopicCollector, free_port
from vigil.devtools.replay import replay
from vigil.lab.synthetic import generate_telemetry

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@pytest.fixture
def botapi():
    server = BotAPIServer().start()
    try:
        yield server
    finally:
        server.stop()


def telegram_alerts(botapi: BotAPIServer, **extra) -> dict:
    alerts = {
        "receivers": [{"name": "ops", "telegram": {"chat_ids": [1001]}}],
        "default_receivers": ["ops"],
        "group_wait_s": 0.3,
        "rate_limit_per_minute": 10_000,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        "telegram": {"token": "123:TEST", "api_url": botapi.url, "poll_timeout_s": 1,
                     "allowed_user_ids": [42]},
    }
    alerts.update(extra)
    return alerts


def produce(stack: Stack, events) -> None:
    producer = Producer({"bootstrap.servers": stack.broker, "linger.ms": 5})
    for event in events:
        producer.produce(stack.anomalies_topic, key=event.series.encode(), value=event.dumps())
    assert producer.flush(15) == 0


def hosts_told(botapi: BotAPIServer) -> Counter:
    return Counter(
        line.split('host="')[1].split('"')[0]
        for m in botapi.sent() for line in m.text.splitlines() if 'host="' in line
    )


def test_worker_events_become_alerts_once_per_incident(stack: Stack, botapi: BotAPIServer):
    now = time.time_ns() // 1_000_000
    start = now - 9 * DAY_MS
    start -= start % 60_000
    telemetry = generate_telemetry(hosts=2, metrics=["cpu_usage_percent", "http_latency_ms"],
                                   days=9, seed=11, start_ms=start)
    collector = TopicCollector(stack.broker, [stack.anomalies_topic])
    # The replayed history is days old: let the notifier send it all.
    notifier = stack.start_notifier(telegram_alerts(botapi, max_event_age_s=30 * 86_400))
    worker = stack.start_worker()
    try:
        sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)
        events = wait_until(
            lambda: [orjson.loads(v) for v in collector.values(stack.anomalies_topic)],
            30, "anomaly events",
        )
        time.sleep(1)
        events = [orjson.loads(v) for v in collector.values(stack.anomalies_topic)]
        opened = {e["incident_id"] for e in events if e["kind"] == "open"}
        assert opened

        def recorded() -> set[str]:
            keys = stack.redis.scan_iter(f"{stack.prefix}notify:incident:ops:*")
            return {k.decode().rsplit(":", 1)[1] for k in keys}

        wait_until(lambda: opened <= recorded(), 60,
                   f"alerts for all {len(opened)} incidents")
        assert notifier.alive(), notifier.log_tail()
    finally:
        collector.close()
    photos = [m for m in botapi.sent() if m.method == "sendPhoto"]
    assert photos and all(m.photo.startswith(b"\x89PNG") for m in photos)
    assert all(len(m.buttons) == 3 for m in photos)
    resolved = {e["incident_id"] for e in events if e["kind"] == "resolve"}
    for incident in resolved:
        record = orjson.loads(stack.redis.get(f"{stack.prefix}notify:incident:ops:{incident}"))
        assert record["resolved"]
    # A fast replay resolves incidents inside the group window: the alert says so instead
    # of a second message (live, resolves are replies: see test_notifier.py).
    assert resolved and any("already over (resolved after" in m.text for m in botapi.sent())


@pytest.mark.chaos
@pytest.mark.parametrize("stop", ["graceful", "kill"])
def test_restart_after_half_the_alerts_alerts_every_incident_once(
    stack: Stack, botapi: BotAPIServer, stop: str, chaos
):
    hosts = [f"node-{i:02d}" for i in range(40)]
    events = [make_event(series=f'cpu_usage{{host="{h}"}}') for h in hosts]
    alerts = telegram_alerts(botapi)
    notifier = stack.start_notifier(alerts)
    produce(stack, events)
    wait_until(lambda: len(botapi.sent()) >= 15, 60, "half the alerts")
    notifier.stop(kill=(stop == "kill"))
    half = len(botapi.sent())
    assert half < len(hosts), "all alerts went out before the stop; the test proves nothing"
    notifier = stack.start_notifier(alerts)
    wait_until(lambda: set(hosts_told(botapi)) == set(hosts), 60, "every incident alerted")
    time.sleep(2)  # room for a stray repeat to show up
    told = hosts_told(botapi)
    repeated = {h: n for h, n in told.items() if n > 1}
    chaos(unit="alerts", sent=len(events), expected=len(hosts),
          lost=len(set(hosts) - set(told)), duplicated=sum(n - 1 for n in told.values()))
    if stop == "graceful":
        assert not repeated, f"a graceful restart repeated alerts: {repeated}"
    else:
        # SIGKILL can land between a send and its record in Redis: at most the message under
        # way at that instant goes out again (at-least-once, never lost).
        assert len(repeated) <= 1 and all(n == 2 for n in repeated.values()), repeated
    assert notifier.alive(), notifier.log_tail()


@pytest.fixture
def refusing_smtp():
    """A real SMTP server that refuses every recipient (550) until its ``code`` is cleared."""
    sink = RefusingSink(550)
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    sink.port = controller.port
    try:
        yield sink
    finally:
        controller.stop()


def test_dead_letters_and_button_feedback_reach_their_topics(
    stack: Stack, botapi: BotAPIServer, refusing_smtp: RefusingSink
):
    smtp = refusing_smtp
    alerts = telegram_alerts(
        botapi,
        receivers=[
            {"name": "ops", "telegram": {"chat_ids": [1001]}},
            {"name": "mail", "email": {"to": ["oncall@example.com"]}},
        ],
        default_receivers=["ops", "mail"],
        smtp={"host": "127.0.0.1", "port": smtp.port},  # refuses the recipient: 550
    )
    collector = TopicCollector(stack.broker,
                               [stack.alerts_deadletter_topic, stack.feedback_topic])
    notifier = stack.start_notifier(alerts)
    try:
        event = make_event(series='cpu_usage{host="db-7"}', severity="critical")
        produce(stack, [event])
        wait_until(lambda: botapi.sent(), 30, "the Telegram alert")
        botapi.press(botapi.sent()[0], 0, username="carol")  # Acknowledge
        wait_until(lambda: collector.values(stack.feedback_topic), 30, "a feedback record")
        wait_until(lambda: collector.values(stack.alerts_deadletter_topic), 30,
                   "the undeliverable email on the dead-letter topic")
        feedback = orjson.loads(collector.values(stack.feedback_topic)[0])
        dead = orjson.loads(collector.values(stack.alerts_deadletter_topic)[0])
        assert notifier.alive(), notifier.log_tail()
        port = notifier.env["VIGIL_NOTIFIER_WEB_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            exposed = response.read().decode()
    finally:
        collector.close()
    for line in (
        'vigil_alerts_sent_total{channel="telegram",kind="firing",receiver="ops"} 1.0',
        'vigil_alerts_dead_lettered_total{channel="email",receiver="mail"} 1.0',
        'vigil_alert_attempts_failed_total{channel="email",receiver="mail"} 1.0',
        'vigil_feedback_total{action="acknowledge"} 1.0',
    ):
        assert line in exposed, line
    assert feedback["action"] == "acknowledge" and feedback["user_name"] == "carol"
    assert feedback["incident_id"] == event.incident_id and feedback["series"] == event.series
    assert dead["receiver"] == "mail" and dead["channel"] == "email" and dead["attempts"] == 1
    assert dead["incident_ids"] == [event.incident_id]
    assert any("Acknowledged by carol" in a["text"] for a in botapi.answers)


def test_redeliver_sends_each_dead_letter_once_when_the_mailbox_is_fixed(
    stack: Stack, refusing_smtp: RefusingSink
):
    """The mail server refuses the recipient (a permanent error: dead-lettered at once); once
    the mailbox is fixed, ``vigil alerts redeliver`` reads the dead letters from the topic and
    emails each alert once; a second run sends nothing."""
    alerts = {
        "receivers": [{"name": "mail", "email": {"to": ["oncall@example.com"]}}],
        "default_receivers": ["mail"], "group_wait_s": 0.3, "rate_limit_per_minute": 10_000,
        "smtp": {"host": "127.0.0.1", "port": refusing_smtp.port},
    }
    hosts = ["db-1", "db-2", "web-1"]
    collector = TopicCollector(stack.broker, [stack.alerts_deadletter_topic])
    notifier = stack.start_notifier(alerts)
    try:
        events = [make_event(series=f'cpu_usage{{host="{h}"}}') for h in hosts]
        produce(stack, events)
        wait_until(lambda: len(collector.values(stack.alerts_deadletter_topic)) >= 3, 60,
                   "three dead letters")
        assert refusing_smtp.messages == []
        notifier.stop()
    finally:
        collector.close()
    refusing_smtp.code = None  # the mailbox is fixed
    env = notifier.env
    dry = CliRunner().invoke(cli, ["alerts", "redeliver", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would send") == 3 and refusing_smtp.messages == []
    first = CliRunner().invoke(cli, ["alerts", "redeliver"], env=env)
    assert first.exit_code == 0, first.output
    assert "3 sent, 0 failed" in first.output
    assert hosts_in(refusing_smtp.messages) == Counter(hosts)
    again = CliRunner().invoke(cli, ["alerts", "redeliver"], env=env)
    assert again.exit_code == 0 and "0 sent, 0 failed (left for the next run), 3 skipped" in (
        again.output), again.output
    assert len(refusing_smtp.messages) == 3
    for event in events:  # recorded as sent: a replay of the event is a duplicate
        assert stack.redis.get(f"{stack.prefix}notify:incident:mail:{event.incident_id}")
