"""The alerts settings: the documented examples load, mistakes are refused, secrets stay
secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vigil.sinks.alerts import AlertingConfig, Matcher
from vigil.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _readme_alerts_yaml() -> dict:
    text = (ROOT / "docs" / "alerts.md").read_text()  # the alerts page (was in the README)
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("alerts:")]
    return yaml.safe_load(block)


def test_readme_and_example_file_configure_the_same_alerts(monkeypatch):
    monkeypatch.setenv("VIGIL_CONFIG_FILE", str(ROOT / "examples" / "vigil.yaml"))
    monkeypatch.setenv("VIGIL_ALERTS__TELEGRAM__TOKEN", "123:from-env")
    monkeypatch.setenv("VIGIL_WEBHOOK_SECRET", "hook-secret")
    from_file = Settings().alerts
    from_readme = AlertingConfig.model_validate(_readme_alerts_yaml()["alerts"])
    assert from_file.telegram.token.get_secret_value() == "123:from-env"
    from_file.telegram.token = None
    assert from_readme.model_dump() == from_file.model_dump()
    assert [r.name for r in from_file.receivers] == [
        "oncall", "dba", "ops-chat", "alertmanager", "automation"]
    assert from_file.receiver("automation").webhook.secret.get_secret_value() == "hook-secret"
    assert from_file.telegram_chats() == {-1001234567890, -1009876543210}


def test_environment_overrides_the_file_and_secrets_never_print(monkeypatch, tmp_path):
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({"alerts": {
        "receivers": [{"name": "mail", "email": {"to": ["a@example.com"]}}],
        "default_receivers": ["mail"],
        "smtp": {"host": "smtp.example.com", "port": 587, "password": "in-file"},
    }}))
    monkeypatch.setenv("VIGIL_CONFIG_FILE", str(config))
    monkeypatch.setenv("VIGIL_ALERTS__SMTP__PASSWORD", "from-env")
    monkeypatch.setenv("VIGIL_ALERTS__GROUP_WAIT_S", "3")
    settings = Settings()
    assert settings.alerts.smtp.host == "smtp.example.com"  # the file, deep-merged
    assert settings.alerts.smtp.password.get_secret_value() == "from-env"
    assert settings.alerts.group_wait_s == 3
    shown = repr(settings) + str(settings.alerts.model_dump()) + settings.model_dump_json()
    assert "from-env" not in shown and "in-file" not in shown


def test_a_named_settings_file_that_is_missing_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("VIGIL_CONFIG_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        ({"receivers": [{"name": "a", "email": {"to": ["x@y"]}}], "default_receivers": ["b"]},
         "unknown receivers: b"),
        ({"receivers": [{"name": "a"}]}, "has no destination"),
        ({"receivers": [{"name": "a", "email": {"to": ["x@y"]}}],
          "routes": [{"matchers": ["host~db"], "receivers": ["a"]}]}, "not a matcher"),
        ({"receivers": [{"name": "a", "email": {"to": ["x@y"]}}],
          "routes": [{"matchers": ['host=~"(db"'], "receivers": ["a"]}]}, "bad regex"),
        ({"silences": [{"matchers": [], "ends_ms": 1}]}, "at least one matcher"),
        ({"receivers": [{"name": "a", "email": {"to": ["x@y"]}}], "typo_field": 1},
         "typo_field"),
        ({"receivers": [{"name": "a", "webhook": {"url": "hooks.example.com/x"}}]},
         "not an http(s) URL"),
        ({"receivers": [{"name": "a", "alertmanager": {"urls": "http://am:9093",
                                                       "labels": {"team-x": "a"}}}]},
         "not label names: team-x"),
        ({"receivers": [{"name": "a", "alertmanager": {"urls": []}}]},
         "at least 1 item"),
        ({"receivers": [{"name": "a", "alertmanager": {"urls": "http://am:9093",
                                                       "username": "u"}}]},
         "needs both username and password"),
        ({"receivers": [{"name": "a", "webhook": {"url": "http://h/x",
                                                  "secret": {"env": "VIGIL_TEST_UNSET_42"}}}]},
         "VIGIL_TEST_UNSET_42 (a receiver's secret) is not set"),
    ],
)
def test_configuration_mistakes_are_refused_with_a_reason(alerts, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        AlertingConfig.model_validate(alerts)


def test_matchers_round_trip_as_text():
    for text in ('host="db-1"', '__name__=~"disk_.*"', 'severity!="warning"', 'a!~"x|y"'):
        assert str(Matcher.parse(text)) == text
    assert Matcher.parse("host = db-1") == Matcher("host", "=", "db-1")


def test_receiver_secrets_come_from_the_environment_or_a_file(monkeypatch, tmp_path):
    token = tmp_path / "am-token"
    token.write_text("tok-from-file\n")
    monkeypatch.setenv("HOOK_SECRET", "hook-from-env")
    config = AlertingConfig.model_validate({
        "receivers": [
            {"name": "am", "alertmanager": {"urls": ["http://am-1:9093", "http://am-2:9093/"],
                                            "bearer_token": {"file": str(token)}}},
            {"name": "hook", "webhook": {"url": "https://hooks.example.com/vigil",
                                         "secret": {"env": "HOOK_SECRET"}}},
        ],
        "default_receivers": ["am", "hook"],
    })
    am, hook = config.receivers
    assert am.alertmanager.urls == ["http://am-1:9093", "http://am-2:9093"]
    assert am.alertmanager.bearer_token.get_secret_value() == "tok-from-file"
    assert hook.webhook.secret.get_secret_value() == "hook-from-env"
    shown = repr(config) + str(config.model_dump()) + config.model_dump_json()
    assert "tok-from-file" not in shown and "hook-from-env" not in shown
