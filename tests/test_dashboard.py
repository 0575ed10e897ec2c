"""The live dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium) against a real worker, broker, Redis and ClickHouse.

Load the page with the token, see the series list, produce a new anomaly and watch it appear
in the feed without a reload, open its incident (with an operator's feedback) and its chart;
a request without the token is refused. The screenshot is saved as ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from tests.conftest import ARTIFACTS, Stack, wait_until
from vigil.devtools.replay import replay
from vigil.events import stable_id
from vigil.lab.synthetic import generate_telemetry

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DAY_MS = 86_400_000


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager never looks for (or downloads) a browser.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_dashboard_in_chromium_shows_series_live_events_incident_and_chart(
    stack: Stack, clickhouse_url: str
):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    database = f"dash_{uuid.uuid4().hex[:8]}"
    url = clickhouse_url.rsplit("/", 1)[0] + f"/{database}"
    token = secrets.token_urlsafe(24)
    worker = stack.start_worker(
        VIGIL_CLICKHOUSE_URL=url,
        VIGIL_CLICKHOUSE_FLUSH_S="0.3",
        VIGIL_DASHBOARD_TOKEN=token,
        VIGIL_FEEDBACK_TOPIC=stack.feedback_topic,
        # The planted spike (20 × the series' peak + 1,000) takes a CPU percentage past 100,
        # where a capacity forecast would warn too: one incident is counted here, not two.
        VIGIL_FORECAST_LIMITS="{}",
    )
    base = f"http://127.0.0.1:{worker.env['VIGIL_WEB_PORT']}"
    auth = {"Authorization": f"Bearer {token}"}

    # History: two series, a week to learn and a day and a half with labelled anomalies.
    now = time.time_ns() // 1_000_000
    start = now - 8 * DAY_MS - DAY_MS // 2
    start -= start % 60_000
    telemetry = generate_telemetry(hosts=2, metrics=["cpu_usage_percent"], days=8.5, seed=4,
                                   start_ms=start)
    sent = replay(telemetry, stack.broker, stack.input_topic, batch=100)
    stack.wait_processed(sent, worker)

    def series_listed():
        # The page's default window (24 h); settled: the same answer twice, a second apart.
        answers = []
        for _ in range(2):
            status, body = _get(f"{base}/dashboard/api/series?hours=24", auth)
            if status != 200:
                return None
            answers.append(orjson.loads(body)["series"])
            time.sleep(1)
        listed = answers[-1]
        return (answers[0] == listed and len(listed) == len(telemetry.series)
                and listed[0]["anomaly_count"] > 0 and listed)

    listed = wait_until(series_listed, 60, "both series stored in ClickHouse with incidents")

    # Without the token: refused, page, feed and chart alike.
    for path in ("/dashboard", "/dashboard/events", "/dashboard/api/series",
                 f"/dashboard/chart.png?series={listed[0]['series']}"):
        assert _get(base + path)[0] == 401, path
        assert _get(base + path, {"Authorization": "Bearer wrong"})[0] == 401, path
    # /metrics and /health stay open (Prometheus convention); the history buffer is there.
    status, body = _get(base + "/metrics")
    assert status == 200
    exposed = body.decode()
    assert "\nvigil_clickhouse_buffer_rows " in exposed
    written = [line for line in exposed.splitlines()
               if line.startswith('vigil_clickhouse_rows_written_total{table="steps"}')]
    assert written and float(written[0].split()[-1]) >= sent
    status, body = _get(base + "/health")
    assert status == 200 and orjson.loads(body)["clickhouse"] is True

    driver = _browser()
    try:
        driver.get(f"{base}/dashboard?token={token}")
        assert "token" not in driver.current_url  # swapped for an HttpOnly cookie
        assert driver.execute_script("return document.cookie") == ""  # not readable by JS

        def rows():
            found = driver.find_elements(By.CSS_SELECTOR, "tr.series-row")
            return len(found) == len(telemetry.series) and found

        rows_found = wait_until(rows, 30, "the series list in the page")
        shown = {r.get_attribute("data-series"): int(r.find_elements(By.TAG_NAME, "td")[1].text)
                 for r in rows_found}
        assert shown == {s["series"]: s["anomaly_count"] for s in listed}
        wait_until(lambda: driver.find_element(By.ID, "status").text == "live", 30,
                   "the live feed connected")
        before = {li.get_attribute("data-event-id")
                  for li in driver.find_elements(By.CSS_SELECTOR, "li.feed-item")}
        assert before, "the backlog of stored events is shown"
        driver.execute_script("window.__notReloaded = true")

        # A new anomaly: a spike well above everything this series has seen, after its end.
        series_id, series = next(iter(telemetry.series.items()))
        last_ts = int(series.ts_ms[-1])
        spike = float(series.values.max()) * 20 + 1000
        producer = Producer({"bootstrap.servers": stack.broker})
        points = [(last_ts + 60_000, spike), (last_ts + 120_000, spike),
                  (last_ts + 180_000, float(series.values[-1]))]
        for ts, value in points:
            producer.produce(stack.input_topic, orjson.dumps(
                {"name": series.name, "labels": series.labels, "timestamp": ts,
                 "value": value}))
        producer.flush(10)

        def new_item():
            for li in driver.find_elements(By.CSS_SELECTOR, "li.feed-item"):
                if (li.get_attribute("data-event-id") not in before
                        and li.get_attribute("data-series") == series_id):
                    return li
            return None

        item = wait_until(new_item, 60, "the new anomaly in the live feed")
        assert driver.execute_script("return window.__notReloaded === true"), "page reloaded"
        assert "open" in item.text and series_id in item.text
        incident_id = item.get_attribute("data-incident-id")

        # An operator's verdict on it, as the notifier publishes it.
        feedback = {"feedback_id": stable_id(incident_id, "ack"), "action": "acknowledge",
                    "incident_id": incident_id, "series": series_id, "notification_id": "n1",
                    "receiver": "ops", "user_id": 7, "user_name": "carol", "chat_id": 1,
                    "ts_ms": time.time_ns() // 1_000_000, "ts": "", "source": "telegram"}
        producer.produce(stack.feedback_topic, orjson.dumps(feedback),
                         key=incident_id.encode())
        producer.flush(10)

        def stored():
            status, body = _get(f"{base}/dashboard/api/incidents/{incident_id}", auth)
            return status == 200 and orjson.loads(body)["feedback"]

        wait_until(stored, 30, "the incident and its feedback in ClickHouse")

        item.click()
        wait_until(lambda: driver.find_element(By.ID, "incident").get_attribute(
            "data-incident") == incident_id, 30, "the incident view")
        incident_text = driver.find_element(By.ID, "incident").text
        assert "acknowledge by carol" in incident_text
        assert driver.find_elements(By.CSS_SELECTOR, "#incident-events tbody tr")

        # The series list counts the new incident, still without a reload.
        def counted() -> bool:
            try:
                row = driver.find_element(
                    By.CSS_SELECTOR, f'tr.series-row[data-series="{_css(series_id)}"]')
                return int(row.find_elements(By.TAG_NAME, "td")[1].text) == shown[series_id] + 1
            except StaleElementReferenceException:
                return False

        wait_until(counted, 30, "the new incident counted in the series list")

        def chart_drawn():
            return driver.execute_script(
                "const i = document.getElementById('chart');"
                "return i.complete && i.naturalWidth > 0 && i.dataset.loaded === arguments[0]"
                " ? [i.naturalWidth, i.naturalHeight] : null", series_id)

        width, height = wait_until(chart_drawn, 60, "the chart image")
        assert width >= 600 and height >= 200
        chart_url = driver.find_element(By.ID, "chart").get_attribute("src")
        status, png = _get(chart_url, auth)
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        # Another series from the list: its chart replaces the first.
        other = next(s for s in telemetry.series if s != series_id)
        def click_other() -> bool:
            try:  # the list is redrawn after each new incident: find the row afresh
                driver.find_element(
                    By.CSS_SELECTOR, f'tr.series-row[data-series="{_css(other)}"]').click()
                return True
            except StaleElementReferenceException:
                return False

        wait_until(click_other, 10, "a click on the other series")
        wait_until(lambda: driver.execute_script(
            "const i = document.getElementById('chart');"
            "return i.complete && i.naturalWidth > 0 && i.dataset.loaded === arguments[0]",
            other), 60, "the other series' chart")
    finally:
        driver.quit()
    assert worker.alive(), worker.log_tail()


def _css(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
