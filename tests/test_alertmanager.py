"""The Alertmanager receiver against a real Alertmanager (Debian's prometheus-alertmanager):
an incident's open shows up as an active alert with vigil's labels, its resolve ends it, and
Alertmanager's own notification (to a webhook it is configured with) carries both."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_notifier import STEP_MS, Harness, make_event
from vigil.devtools.embedded import free_port
from vigil.sinks.alertmanager import alertmanager_alert
from vigil.sinks.alerts import AlertmanagerReceiver, Matcher, Silence
from vigil.times import iso_to_ms, now_ms

pytestmark = pytest.mark.integration

BINARY = "prometheus-alertmanager"  # Debian's name; upstream's is "alertmanager"
# bcrypt (cost 4) of "vigil-pw", for Alertmanager's --web.config.file basic auth.
PASSWORD_HASH = "$2b$04$PP8O2ftxa.tiEtXTNpEUfujWvZdG1NHtSefWR1s3GsW.O9I0vVkO2"


class NotificationSink(http.server.ThreadingHTTPServer):
    """Where Alertmanager sends its notifications (its webhook_configs): keeps every body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N802, N805 - http.server's names
                length = int(handler.headers.get("Content-Length", 0))
                self.bodies.append(json.loads(handler.rfile.read(length)))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)

    def alerts(self, status: str) -> list[dict]:
        return [a for body in self.bodies for a in body["alerts"] if a["status"] == status]


class Alertmanager:
    """A real Alertmanager on its own port, with its own storage and no clustering."""

    def __init__(self, tmp_path: Path, sink_url: str, basic_auth: bool = False) -> None:
        binary = shutil.which(BINARY) or shutil.which("alertmanager")
        if binary is None:
            pytest.fail("prometheus-alertmanager is not installed (apt-get install -y "
                        "prometheus-alertmanager; .ci/run does)")
        config = {
            "route": {"receiver": "sink", "group_by": ["..."], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "sink", "webhook_configs": [
                {"url": sink_url, "send_resolved": True}]}],
        }
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / "alertmanager.log").open("wb")
        argv = [binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]
        self.headers: dict[str, str] = {}
        if basic_auth:
            web = tmp_path / "web.yml"
            web.write_text(yaml.safe_dump({"basic_auth_users": {"vigil": PASSWORD_HASH}}))
            argv.append(f"--web.config.file={web}")
            self.headers["Authorization"] = "Basic " + base64.b64encode(b"vigil:vigil-pw").decode()
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Alertmanager did not start: {self.log_tail(tmp_path)}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        request = urllib.request.Request(f"{self.url}/-/ready", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    @staticmethod
    def log_tail(tmp_path: Path) -> str:
        return (tmp_path / "alertmanager.log").read_text(errors="replace")[-2000:]

    def alerts(self, **labels: str) -> list[dict]:
        """``GET /api/v2/alerts`` (active ones: Alertmanager's API hides ended alerts),
        filtered by label equality."""
        query = urllib.parse.urlencode(
            [("filter", f'{k}="{v}"') for k, v in labels.items()], doseq=True
        )
        request = urllib.request.Request(f"{self.url}/api/v2/alerts?{query}",
                                         headers=self.headers)
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    server = NotificationSink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path, sink: NotificationSink) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path, f"http://127.0.0.1:{sink.server_address[1]}/")
    try:
        yield am
    finally:
        am.stop()


def am_config(am: Alertmanager, **extra) -> dict:
    settings = {"urls": [am.url], "repeat_s": 60}
    settings.update(extra)
    return {
        "receivers": [{"name": "am", "alertmanager": settings}],
        "default_receivers": ["am"],
        "group_wait_s": 0.1,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.3,
        "dashboard_url": "https://grafana.example.com/d/vigil",
    }


async def poll(predicate, what: str, timeout_s: float = 20.0):
    """Await until ``predicate()`` is truthy (blocking calls run in a thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_open_is_an_active_alert_and_resolve_ends_it(redis_url, alertmanager, sink):
    opened_ms = (time.time_ns() // 1_000_000 // STEP_MS - 30) * STEP_MS  # 30 min ago
    opened = make_event(series='cpu_usage{host="db-1",dc="fra"}', ts_ms=opened_ms)
    async with Harness(redis_url, am_config(alertmanager)) as h:
        await h.send(opened)
        await h.settle()
        (alert,) = await poll(lambda: alertmanager.alerts(host="db-1"), "the alert in AM")
        assert alert["labels"] == {
            "alertname": "VigilAnomaly", "host": "db-1", "dc": "fra", "metric": "cpu_usage",
            "severity": "warning", "anomaly_type": "point",
        }
        assert alert["status"]["state"] == "active"
        assert iso_to_ms(alert["startsAt"]) == opened_ms
        assert iso_to_ms(alert["endsAt"]) > time.time() * 1000 + 200_000  # held 4 × 60 s
        notes = alert["annotations"]
        assert notes["description"] == opened.reason
        assert notes["dashboard"] == "https://grafana.example.com/d/vigil"
        assert notes["series"] == opened.series and notes["incident_id"] == opened.incident_id
        assert alert["generatorURL"] == "https://grafana.example.com/d/vigil"
        assert await h.store.open_alerts("am") != {}

        resolved_ms = opened_ms + 25 * STEP_MS
        resolve = make_event(series=opened.series, kind="resolve", severity="none",
                             incident=opened.incident_id, ts_ms=resolved_ms, context=False)
        await h.send(resolve, resolve)  # a repeated resolve is one post
        await h.settle()
        await poll(lambda: not alertmanager.alerts(host="db-1"), "the alert to end")
        # Alertmanager's own notifications: the firing one, then the resolved one (endsAt at
        # the resolve, startsAt at the open, the labels of the firing alert).
        (ended,) = await poll(lambda: sink.alerts("resolved"), "AM's resolved notification")
        (firing,) = sink.alerts("firing")
        assert firing["labels"] == ended["labels"] == alert["labels"]
        assert iso_to_ms(ended["startsAt"]) == opened_ms
        assert iso_to_ms(ended["endsAt"]) == resolved_ms
        left = await h.store.open_alerts("am")
        assert left[opened.incident_id]["ended_ms"] == resolved_ms  # a tombstone, re-posted ended
    assert h.dead_letters == [] and len(h.acked) == 3


async def test_escalation_replaces_the_warning_alert_with_a_critical_one(
    redis_url, alertmanager
):
    opened = make_event(series='disk_used{host="web-2"}')
    async with Harness(redis_url, am_config(alertmanager, labels={"team": "web"})) as h:
        await h.send(opened)
        await h.settle()
        await poll(lambda: alertmanager.alerts(host="web-2"), "the warning alert")
        await h.send(make_event(series=opened.series, kind="update", severity="critical",
                                incident=opened.incident_id, ts_ms=opened.ts_ms))
        await h.settle()
        alerts = await poll(
            lambda: [a for a in alertmanager.alerts(host="web-2")
                     if a["labels"]["severity"] == "critical"]
            and alertmanager.alerts(host="web-2"),
            "the critical alert",
        )
    # The warning alert was ended by the same post: one active alert, the critical one.
    assert [a["labels"]["severity"] for a in alerts] == ["critical"]
    assert alerts[0]["labels"]["team"] == "web"
    assert iso_to_ms(alerts[0]["startsAt"]) == opened.ts_ms  # still the incident's opening


async def test_open_alerts_are_reposted_from_redis_after_a_restart(redis_url, alertmanager):
    opened = make_event(series='http_latency_ms{host="api-1"}')
    config = am_config(alertmanager)
    async with Harness(redis_url, config, cleanup=False) as first:
        await first.send(opened)
        await first.settle()
        (posted,) = await poll(lambda: alertmanager.alerts(host="api-1"), "the alert")
    # A new notifier process (same Redis records): it re-posts the open alert at start and
    # every repeat_s, pushing its endsAt ahead; nothing new was sent to it.
    async with Harness(redis_url, config, prefix=first.prefix) as second:
        (reposted,) = await poll(
            lambda: [a for a in alertmanager.alerts(host="api-1")
                     if iso_to_ms(a["endsAt"]) > iso_to_ms(posted["endsAt"])],
            "the re-posted alert",
        )
        assert second.acked == []
    assert reposted["labels"] == posted["labels"]
    assert reposted["startsAt"] == posted["startsAt"]


async def test_open_alerts_are_reposted_every_repeat_s(redis_url, alertmanager):
    async with Harness(redis_url, am_config(alertmanager, repeat_s=0.5)) as h:
        await h.send(make_event(series='cpu_usage{host="loop-1"}'))
        await h.settle()
        (first,) = await poll(lambda: alertmanager.alerts(host="loop-1"), "the alert")
        # Held 4 × 0.5 s: still active after several rounds, its endsAt moving on.
        for _ in range(3):
            ends_ms = iso_to_ms(first["endsAt"])
            (first,) = await poll(
                lambda ends_ms=ends_ms: [a for a in alertmanager.alerts(host="loop-1")
                                         if iso_to_ms(a["endsAt"]) > ends_ms],
                "a re-post")
        assert first["status"]["state"] == "active"


async def test_a_silenced_resolve_still_ends_the_alert(redis_url, alertmanager):
    opened = make_event(series='cpu_usage{host="db-5"}',
                        ts_ms=(time.time_ns() // 1_000_000 // STEP_MS - 10) * STEP_MS)
    config = am_config(alertmanager, repeat_s=1)
    async with Harness(redis_url, config) as h:
        await h.send(opened)
        await h.settle()
        await poll(lambda: alertmanager.alerts(host="db-5"), "the alert")
        # Muted in vigil after it was posted (a Mute press, `vigil silence add`): the
        # resolve still reaches Alertmanager, or the re-posts would keep it firing forever.
        await h.store.add_silence(Silence(matchers=[Matcher.parse('host="db-5"')],
                                          ends_ms=now_ms() + 3_600_000))
        h.notifier._silences_read = -1.0
        await h.send(make_event(series=opened.series, kind="resolve", severity="none",
                                incident=opened.incident_id, ts_ms=opened.ts_ms + STEP_MS,
                                context=False))
        await h.settle()
        await poll(lambda: not alertmanager.alerts(host="db-5"), "the alert to end")
        # The next muted event of the series is not posted.
        await h.send(make_event(series=opened.series, ts_ms=opened.ts_ms + 5 * STEP_MS))
        await h.settle()
        stored = await h.store.open_alerts("am")
    assert [a.get("ended_ms") for a in stored.values()] == [opened.ts_ms + STEP_MS]


def test_alert_payload_is_what_alertmanager_validates():
    """Unit: labels override the series' own ``severity``; empty label values are left out
    (Alertmanager treats them as absent anyway)."""
    event = make_event(series='cpu_usage{host="db-1",severity="low",rack=""}', context=False)
    event.labels["data-center"] = "fra"  # an invalid label name (series ids never have one)
    settings = AlertmanagerReceiver(urls="http://am:9093/", alertname="Anomaly",
                                    labels={"team": "dba"})
    alert = alertmanager_alert(event, settings, opened_ms=event.ts_ms)
    assert settings.urls == ["http://am:9093"]
    assert alert["labels"] == {"host": "db-1", "severity": "warning", "team": "dba",
                               "data_center": "fra",
                               "alertname": "Anomaly", "metric": "cpu_usage",
                               "anomaly_type": "point"}
    assert set(alert) == {"labels", "annotations", "startsAt"}  # no link without a dashboard
    assert alert["annotations"]["value"] == "95" and "45 … 61" in alert["annotations"]["expected"]


async def test_basic_auth_is_sent_and_a_refusal_is_dead_lettered(redis_url, tmp_path, sink):
    am = Alertmanager(tmp_path, f"http://127.0.0.1:{sink.server_address[1]}/", basic_auth=True)
    try:
        config = am_config(am, username="vigil", password="vigil-pw")
        config["receivers"].append({"name": "wrong", "alertmanager": {
            "urls": [am.url], "username": "vigil", "password": "guess"}})
        config["default_receivers"] = ["am", "wrong"]
        async with Harness(redis_url, config) as h:
            await h.send(make_event(series='cpu_usage{host="db-9"}'))
            await h.settle()
            (alert,) = await poll(lambda: am.alerts(host="db-9"), "the alert in AM")
    finally:
        am.stop()
    assert alert["labels"]["host"] == "db-9"
    (dead,) = h.dead_letters  # 401: not retried
    assert (dead.receiver, dead.channel, dead.attempts) == ("wrong", "alertmanager", 1)
    assert "401" in dead.error


def test_bearer_token_header():
    from vigil.sinks.alertmanager import AlertmanagerChannel

    settings = AlertmanagerReceiver(urls="http://am:9093", bearer_token="t0k")
    assert AlertmanagerChannel("am", settings, store=None)._headers() == {
        "Authorization": "Bearer t0k"}


def test_vigil_notifier_process_posts_to_alertmanager(stack, alertmanager, sink):
    """The whole app: an event on the anomalies topic becomes an Alertmanager alert."""
    from tests.test_notifier_integration import produce

    notifier = stack.start_notifier(am_config(alertmanager))
    produce(stack, [make_event(series='cpu_usage{host="kafka-1"}', severity="critical")])
    (alert,) = asyncio.run(poll(lambda: alertmanager.alerts(host="kafka-1"), "the alert", 60))
    assert alert["labels"]["severity"] == "critical", notifier.log_tail()
    assert notifier.alive(), notifier.log_tail()
    # Alertmanager routed it on to its own receiver, as it would to email or PagerDuty.
    asyncio.run(poll(lambda: sink.alerts("firing"), "Alertmanager's notification", 30))
    port = notifier.env["VIGIL_NOTIFIER_WEB_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        exposed = answer.read().decode()
    assert ('vigil_alerts_sent_total{channel="alertmanager",kind="firing",receiver="am"} 1.0'
            in exposed)


def _doc_yaml_blocks() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "alertmanager.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)


def test_the_documented_configurations_load(monkeypatch, tmp_path):
    """docs/alertmanager.md: vigil's block is a valid alerts section, Alertmanager's block
    passes ``amtool check-config``."""
    from vigil.sinks.alerts import AlertingConfig

    vigil_block, am_block = _doc_yaml_blocks()
    monkeypatch.setenv("VIGIL_ALERTMANAGER_PASSWORD", "pw")
    config = AlertingConfig.model_validate(yaml.safe_load(vigil_block)["alerts"])
    settings = config.receiver("alertmanager").alertmanager
    assert settings.password.get_secret_value() == "pw" and len(settings.urls) == 2
    (tmp_path / "alertmanager.yml").write_text(am_block)
    amtool = shutil.which("amtool")
    assert amtool, "amtool comes with prometheus-alertmanager"
    checked = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yml")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
