"""docker-compose.yml agrees with the settings the code reads (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vigil.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _mounted(service: dict, target: str) -> Path:
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return ROOT / source
    raise AssertionError(f"nothing is mounted at {target}")


@pytest.mark.parametrize("name", ["vigil", "notifier"])
def test_every_vigil_variable_in_compose_is_a_setting_and_parses(name, monkeypatch):
    services = _compose()["services"]
    service = services[name]
    assert service.get("image") == "vigil:latest"
    env = service["environment"]
    fields = {f"VIGIL_{field.upper()}" for field in Settings.model_fields} | {"VIGIL_CONFIG_FILE"}
    unknown = [k for k in env if k.startswith("VIGIL_") and k not in fields]
    assert not unknown, unknown
    if "VIGIL_CONFIG_FILE" in env:
        # The settings file the service reads is in the repository, mounted where it looks.
        monkeypatch.setenv("VIGIL_CONFIG_FILE", str(_mounted(service, env["VIGIL_CONFIG_FILE"])))
    values = {k[len("VIGIL_"):].lower(): v for k, v in env.items() if k != "VIGIL_CONFIG_FILE"}
    settings = Settings(**values)
    assert settings.kafka_bootstrap == "kafka:29092"
    assert settings.redis_url.startswith("redis://redis:")
    if name == "notifier":
        assert settings.alerts.receivers, "the notifier needs a receiver"
        smtp = settings.alerts.smtp
        assert smtp.host in services, "the SMTP host is a compose service"
        assert any(p.endswith(f":{smtp.port}") for p in services[smtp.host]["ports"])
        port = env["VIGIL_NOTIFIER_WEB_PORT"]
        assert any(p.endswith(f":{port}") for p in service["ports"])


def test_compose_wiring_is_consistent():
    compose = _compose()
    services = compose["services"]
    vigil = services["vigil"]
    assert set(vigil["depends_on"]) == {"kafka", "redis"}
    # The worker reaches Kafka on the internal listener the broker advertises.
    kafka_env = services["kafka"]["environment"]
    assert "INTERNAL://kafka:29092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert vigil["environment"]["VIGIL_KAFKA_BOOTSTRAP"] == "kafka:29092"
    # The web port the worker binds is the one published.
    port = vigil["environment"]["VIGIL_WEB_PORT"]
    assert any(p.endswith(f":{port}") for p in vigil["ports"])
    # Every named volume is declared.
    used = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert used <= set(compose.get("volumes", {}))
    assert (ROOT / "Dockerfile").exists()
