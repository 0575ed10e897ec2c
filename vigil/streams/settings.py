"""One settings object for the whole worker, read from ``VIGIL_*`` environment variables.

Nested knobs use a double underscore: ``VIGIL_DETECTOR__Z_OPEN=7``,
``VIGIL_ALERTS__SMTP__PASSWORD=…``. Sources, strongest first: environment variables, a ``.env``
file in the working directory, then the YAML settings file named by ``VIGIL_CONFIG_FILE``
(default ``vigil.yaml`` if present) — where receivers and routes are easiest to write, while
secrets stay in the environment. Every field is documented in the README.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from vigil.detectors.online import DetectorParams
from vigil.sinks.alerts import AlertingConfig

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the worker, the CLI and the demo read; defaults suit a local setup."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    app_id: str = Field("vigil", description="Faust app id = Kafka consumer group.")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    input_topics: Annotated[list[str], NoDecode] = Field(
        ["metrics"], description="Metric topics to consume."
    )
    input_pattern: str | None = Field(
        None, description="Regex of metric topics; resolved to names at start (and re-checked)."
    )
    pattern_refresh_s: float = Field(
        60.0, description="How often the input pattern is resolved again."
    )
    input_format: Literal["auto", "json", "influx", "prometheus"] = "auto"
    json_name_field: str = "name"
    json_value_field: str = "value"
    json_timestamp_field: str = "timestamp"
    json_labels_field: str = "labels"
    json_label_fields: Annotated[list[str], NoDecode] = Field(
        [], description="Top-level JSON fields that become labels (e.g. host)."
    )
    max_future_s: float = Field(86_400, description="Reject timestamps further ahead than this.")
    max_past_s: float = Field(3_650 * 86_400, description="Reject timestamps older than this.")

    max_points_per_message: int = Field(
        5_000, description="Largest routed message on the internal topic, in points."
    )
    points_topic: str = "vigil-points"
    points_partitions: int = Field(8, ge=1, description="Partitions of the internal topic.")
    anomalies_topic: str = "vigil-anomalies"
    deadletter_topic: str = "vigil-deadletter"
    feedback_topic: str = Field(
        "vigil-feedback", description="Operators' button presses (acknowledge, mute, …)."
    )
    alerts_deadletter_topic: str = Field(
        "vigil-alerts-deadletter", description="Alerts that could not be delivered."
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field("vigil:", description="Prefix of every Redis key vigil writes.")
    max_cached_series: int = Field(
        500_000, description="Series states kept in worker memory before the cache is reset."
    )

    clickhouse_url: str = Field(
        "", description="clickhouse://user:password@host:9000/database — history storage "
        "(steps, events, incidents, feedback); empty = off."
    )
    clickhouse_batch_rows: int = Field(
        20_000, ge=1, description="Rows buffered before a ClickHouse insert is started."
    )
    clickhouse_flush_s: float = Field(
        2.0, gt=0, description="Longest time rows wait in the buffer before an insert."
    )
    clickhouse_buffer_max_rows: int = Field(
        1_000_000, ge=1, description="Rows kept while ClickHouse is slow or down; beyond "
        "this the oldest are dropped (and counted)."
    )
    retention_days: int = Field(
        90, ge=0, description="Drop ClickHouse monthly partitions older than this (0 = keep)."
    )

    ingest_batch: int = Field(2_000, description="Input messages per batch (Faust take).")
    detect_batch: int = Field(500, description="Routed messages per detection batch.")
    batch_window_s: float = Field(0.05, description="Longest wait to fill a batch.")
    fetch_max_wait_ms: int = Field(
        100, ge=1, description="Longest a consumer fetch waits at the broker for more data."
    )
    session_timeout_s: float = Field(
        6.0, description="Kafka consumer session timeout; a new member joins after half of it."
    )

    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    log_level: str = "info"

    chart_history_steps: int = Field(
        120, ge=0, description="Recent steps per series kept in worker memory for alert charts "
        "(24 bytes each; 0 = events carry no chart data)."
    )

    lstm_model: str | None = Field(
        None, description="The global LSTM model file (`vigil train --out`); None = the "
        "seasonal detector alone. A missing file is picked up when it appears."
    )
    lstm_device: str = Field("auto", description="auto (CUDA when present), cpu or cuda[:n].")
    lstm_batch: int = Field(256, ge=1, description="Windows per LSTM forward pass.")
    lstm_reload_s: float = Field(10.0, gt=0, description="How often the model file is checked.")
    lstm_threads: int = Field(
        1, ge=0, description="torch threads for the LSTM (0: torch's default, one per core). "
        "One leaves a core to the event loop and the detector; on a busy 2-core machine two "
        "spinning torch threads were 3–10× slower than one."
    )
    lstm_z_open: float = Field(
        24.0, gt=0, description="LSTM score from which it joins an event or opens an incident "
        "of its own (its scores are heavy-tailed on real data: see the README)."
    )

    notifier_app_id: str = Field("vigil-notifier", description="Consumer group of the notifier.")
    notifier_web_port: int = 6067
    alerts: AlertingConfig = Field(
        default_factory=AlertingConfig, description="Receivers, routes and noise control."
    )

    detector: DetectorParams = DetectorParams()
    directions: Annotated[dict[str, Literal["up", "down", "both"]], NoDecode] = Field(
        {},
        description="Metric-name globs whose anomalies count in one direction only, "
        "e.g. 'memory_used*=up,disk_used*=up' (first match wins; default both).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        named = os.environ.get("VIGIL_CONFIG_FILE")
        if named and not Path(named).is_file():
            raise FileNotFoundError(f"VIGIL_CONFIG_FILE names {named!r}, which does not exist")
        yaml_file = YamlConfigSettingsSource(settings_cls, yaml_file=named or "vigil.yaml")
        return init_settings, env_settings, dotenv_settings, yaml_file, file_secret_settings

    @field_validator("directions", mode="before")
    @classmethod
    def _parse_directions(cls, value):
        # From the environment: "glob=up,glob2=down" or a JSON object.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected glob=up|down|both, comma-separated")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @field_validator("input_topics", "json_label_fields", mode="before")
    @classmethod
    def _split_list(cls, value):
        # From the environment accept "a,b,c" as well as a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [t.strip() for t in text.split(",") if t.strip()]
        return value

    @property
    def broker_url(self) -> str:
        """The Faust broker URL (aiokafka transport; see docs/infrastructure)."""
        hosts = ";".join(f"kafka://{h.strip()}" for h in self.kafka_bootstrap.split(","))
        return hosts
