"""docker-compose.yml agrees with the settings the code reads (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from vigil.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_vigil_variable_in_compose_is_a_setting_and_parses():
    services = _compose()["services"]
    env = services["vigil"]["environment"]
    fields = {f"VIGIL_{name.upper()}" for name in Settings.model_fields}
    unknown = [k for k in env if k.startswith("VIGIL_") and k not in fields]
    assert not unknown, unknown
    settings = Settings(**{k[len("VIGIL_"):].lower(): v for k, v in env.items()})
    assert settings.kafka_bootstrap == "kafka:29092"
    assert settings.redis_url.startswith("redis://redis:")


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
