"""Secrets never printed (issue 18): a failed and a successful start of ``vigil worker`` and
``vigil notifier`` with recognisable secrets, every byte of their output searched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import Stack, wait_until
from vigil.devtools.embedded import free_port

TOKEN = "424242:TOKSECRETtoksecret"
SMTP_PASSWORD = "PWSECRET-smtp-xyz"
CLICKHOUSE_PASSWORD = "CHSECRETclickhouse"
DASHBOARD_TOKEN = "DASHSECRET-0123456789abcdef"
SECRETS = (TOKEN, "TOKSECRET", SMTP_PASSWORD, CLICKHOUSE_PASSWORD, DASHBOARD_TOKEN)


def _alerts(routes_to: str = "ops") -> dict:
    return {
        "receivers": [{"name": "ops", "email": {"to": ["oncall@example.com"]},
                       "telegram": {"chat_ids": [1001]}}],
        "routes": [{"receivers": [routes_to]}],
        "smtp": {"host": "127.0.0.1", "port": free_port(), "username": "vigil",
                 "password": SMTP_PASSWORD},
        "telegram": {"token": TOKEN, "api_url": f"http://127.0.0.1:{free_port()}",
                     "poll_timeout_s": 1},
    }


def _run(command: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", command], env={**os.environ, **env},
        capture_output=True, timeout=120, cwd=tmp_path,
    )


def _assert_clean(output: bytes) -> None:
    text = output.decode(errors="replace")
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} printed:\n{text[-3000:]}"


def test_a_configuration_error_names_the_problem_not_the_secrets(tmp_path: Path):
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({"alerts": _alerts(routes_to="nobody")}))
    done = _run("notifier", {"VIGIL_CONFIG_FILE": str(config)}, tmp_path)
    assert done.returncode != 0
    _assert_clean(done.stdout + done.stderr)
    assert b"unknown receivers: nobody" in done.stdout + done.stderr


def test_a_bad_clickhouse_url_is_reported_without_its_password(tmp_path: Path):
    url = f"tcp://default:{CLICKHOUSE_PASSWORD}@127.0.0.1:9000/vigil"
    done = _run("worker", {"VIGIL_CLICKHOUSE_URL": url, "VIGIL_INPUT_TOPICS": "metrics",
                           "VIGIL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}, tmp_path)
    assert done.returncode != 0
    _assert_clean(done.stdout + done.stderr)
    assert b"clickhouse_url" in done.stdout + done.stderr


@pytest.mark.integration
def test_a_running_worker_and_notifier_print_no_secret(stack: Stack, clickhouse_url: str):
    # A wrong ClickHouse password: the worker runs on and reports the failing inserts.
    rest = clickhouse_url.split("://", 1)[1]
    url = f"clickhouse://default:{CLICKHOUSE_PASSWORD}@{rest}"
    worker = stack.start_worker(VIGIL_CLICKHOUSE_URL=url, VIGIL_DASHBOARD_TOKEN=DASHBOARD_TOKEN)
    notifier = stack.start_notifier(_alerts())
    wait_until(lambda: all("Setting newly assigned partitions" in w.log_path.read_text()
                           for w in (worker, notifier)), 60, "both to start")
    time.sleep(3)  # the bot polls an API that is not there; the notifier retries
    assert worker.alive() and notifier.alive()
    worker.stop()
    notifier.stop()
    for process in (worker, notifier):
        _assert_clean(process.log_path.read_bytes())
