"""One settings object for the whole worker, read from ``VIGIL_*`` environment variables.

Nested knobs use a double underscore: ``VIGIL_DETECTOR__Z_OPEN=7``,
``VIGIL_ALERTS__SMTP__PASSWORD=…``. Sources, strongest first: environment variables, a ``.env``
file in the working directory, then the YAML settings file named by ``VIGIL_CONFIG_FILE``
(default ``vigil.yaml`` if present) — where receivers and routes are easiest to write, while
secrets stay in the environment. Every field is listed in docs/configuration.md (generated
by :func:`settings_reference`).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from vigil.detectors.lstm import LSTM_Z_OPEN
from vigil.detectors.online import DetectorParams
from vigil.sinks.alerts import AlertingConfig

if TYPE_CHECKING:
    from vigil.streams.state import StateKeys

__all__ = ["Settings"]


#: Detector settings that were removed, and why: a deployment that still sets one is told at
#: start instead of silently running with another value.
REMOVED_DETECTOR_KNOBS = {
    **dict.fromkeys(
        ("hourly_scale_halflife_days", "daily_halflife_days", "seasonality_halflife_s",
         "recur_halflife_s", "burst_halflife_s"),
        "the memories of a series' routine share one half-life, "
        "VIGIL_DETECTOR__ROUTINE_HALFLIFE_DAYS (days; it was 3 days for each of them)"),
    "burst_min_hits": "it never decided anything (docs/lab-notebook.md, 2026-12-06)",
}


class Settings(BaseSettings):
    """Everything the worker, the CLI and the demo read; defaults suit a local setup."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    app_id: str = Field("vigil", description="Faust app id = Kafka consumer group.")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    # One Kafka client configuration: every client (Faust's, the dashboard's consumer, the
    # producers and admin clients) takes its security from these, through the kafka_* methods.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client reaches the brokers: PLAINTEXT, SSL "
        "(TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with a SASL_* protocol."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; set with VIGIL_KAFKA_SASL_PASSWORD."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="PEM file of the CA(s) that sign the brokers' certificates, with SSL "
        "or SASL_SSL (unset: the system's CAs)."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM), for brokers that require one (mutual TLS)."
    )
    kafka_ssl_keyfile: str | None = Field(
        None, description="The client certificate's private key (PEM)."
    )
    input_topics: Annotated[list[str], NoDecode] = Field(
        ["metrics"], description="Metric topics to consume."
    )
    input_pattern: str | None = Field(
        None, description="Regex of metric topics; resolved to names at start (and re-checked)."
    )
    pattern_refresh_s: float = Field(
        60.0, description="How often the input pattern is resolved again."
    )
    input_format: Literal[
        "auto", "json", "influx", "prometheus", "collectd", "putval", "graphite", "telegraf_json"
    ] = Field(
        "auto", description="Input format of the metric topics (docs/inputs.md); auto picks "
        "per record: collectd JSON, Telegraf JSON or vigil's JSON when it starts with { or [, "
        "collectd PUTVAL, Graphite plaintext ('path value time') or Influx line protocol."
    )
    graphite_templates: Annotated[list[str], NoDecode] = Field(
        ["collectd.* .host.measurement-plugin_instance.measurement-type_instance.field*"],
        description="Graphite templates, '[filter] part.part...' (comma-separated; the first "
        "whose filter matches the path wins): measurement, field, label names, a-b splits.",
    )
    collectd_store_rates: bool = Field(
        True, description="collectd's JSON carries derive/counter values as rates (write_kafka "
        "StoreRates true, its default); false: raw counters, which vigil turns into rates."
    )
    collectd_types_db: str | None = Field(
        None, description="collectd's types.db for PUTVAL data-source names and types "
        "(default /usr/share/collectd/types.db when it exists)."
    )
    rate_metrics: Annotated[list[str], NoDecode] = Field(
        [], description="Metric-name globs of cumulative counters to detect on as per-second "
        "rates, besides those their input marks (collectd derive/counter, Prometheus counters)."
    )
    remote_write_enabled: bool = Field(
        True, description="Serve Prometheus remote_write at POST /api/v1/write on the web port."
    )
    remote_write_topic: str | None = Field(
        None, description="Topic remote_write samples are produced to (default: the first "
        "input topic), as vigil JSON points."
    )
    remote_write_max_bytes: int = Field(
        10_000_000, ge=1, description="Largest remote_write body accepted, compressed or not "
        "(larger: 413)."
    )
    remote_write_max_series: int = Field(
        50_000, ge=1, description="Most time series in one remote_write request (more: 400)."
    )
    json_name_field: str = Field("name", description="JSON field holding the metric name.")
    json_value_field: str = Field("value", description="JSON field holding the value.")
    json_timestamp_field: str = Field(
        "timestamp", description="JSON field holding the timestamp (epoch s/ms/µs/ns or "
        "ISO-8601)."
    )
    json_labels_field: str = Field(
        "labels", description="JSON field holding the labels (an object)."
    )
    json_label_fields: Annotated[list[str], NoDecode] = Field(
        [], description="Top-level JSON fields that become labels (e.g. host)."
    )
    max_future_s: float = Field(
        300, ge=0, description="Clock skew allowed: points further ahead of the worker's "
        "clock than this are dead-lettered (they would move the series' watermark)."
    )
    max_past_s: float = Field(3_650 * 86_400, description="Reject timestamps older than this.")

    max_points_per_message: int = Field(
        5_000, description="Largest routed message on the internal topic, in points."
    )
    max_message_bytes: int = Field(
        900_000, ge=10_000, description="Largest message vigil produces (routed points, dead "
        "letters), in bytes: below the producer's 1,000,000-byte request limit."
    )
    deadletter_raw_bytes: int = Field(
        65_536, ge=0, description="Longest raw record kept in a dead letter; a longer one is "
        "cut to this prefix, with its size and SHA-256."
    )
    points_topic: str = Field(
        "vigil-points", description="Internal topic of parsed points, keyed by series id."
    )
    points_partitions: int = Field(8, ge=1, description="Partitions of the internal topic.")
    anomalies_topic: str = Field(
        "vigil-anomalies", description="Output topic of anomaly events (key = series id)."
    )
    deadletter_topic: str = Field(
        "vigil-deadletter", description="Records that could not be parsed, with the reason "
        "and the original bytes."
    )
    feedback_topic: str = Field(
        "vigil-feedback", description="Operators' button presses (acknowledge, mute, …)."
    )
    alerts_deadletter_topic: str = Field(
        "vigil-alerts-deadletter", description="Alerts that could not be delivered."
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding every series' state."
    )
    redis_prefix: str = Field("vigil:", description="Prefix of every Redis key vigil writes.")
    redis_cluster: bool = Field(
        False, description="VIGIL_REDIS_URL names one node of a Redis Cluster: the worker, the "
        "notifier and the CLI use a cluster client, and state keys carry a hash tag "
        "(docs/state.md#redis-cluster)."
    )
    redis_slot_groups: int = Field(
        16, ge=2, le=16384, description="On a Redis Cluster: the hash-tag groups the state "
        "keys fall into; a batch is one MGET and one transaction per group it touches."
    )
    max_cached_series: int = Field(
        500_000, description="Series states kept in worker memory before the cache is reset."
    )

    clickhouse_url: str = Field(
        "", description="clickhouse://user:password@host:9000/database — history storage "
        "(steps, events, incidents, feedback); empty = off."
    )
    postgres_url: str = Field(
        "", description="postgresql://user:password@host:5432/database?schema=vigil — history "
        "in PostgreSQL instead of ClickHouse (docs/storage.md); not with clickhouse_url. The "
        "clickhouse_batch_rows, _flush_s, _buffer_max_rows and retention_days settings apply "
        "to it too."
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

    allowed_lateness_steps: int = Field(
        0, ge=0, description="Points of a series up to this many detector steps out of order "
        "still join their step; each step is then scored this many steps later than it "
        "could be. A worker merges its own input partitions by event time already; set 3 "
        "for unkeyed producers (collectd, Telegraf without a key) when several workers "
        "share the input topic. Older points are dropped and counted; 0 (the default) = a "
        "step is scored as soon as a later point arrives."
    )
    input_idle_s: float = Field(
        2.0, gt=0, description="The ingest merges its input partitions by event time: points "
        "wait for partitions that still have older records to read. A partition that "
        "delivers nothing for this long stops holding the others back."
    )
    input_max_held_points: int = Field(
        200_000, ge=1, description="Most points waiting for lagging input partitions; beyond, "
        "the oldest go on to detection (counted in vigil_input_points_forced_total)."
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

    web_enabled: bool = Field(True, description="Serve /metrics, /health and /dashboard.")
    web_host: str = Field(
        "127.0.0.1", description="Address the web server listens on (bind to a trusted "
        "network: /metrics and /health need no token)."
    )
    web_port: int = Field(6066, description="Port of the worker's web server.")
    dashboard_token: SecretStr | None = Field(
        None, description="Token that opens the live dashboard at /dashboard (unset: no "
        "dashboard). /metrics and /health stay open."
    )
    dashboard_backlog: int = Field(
        100, ge=0, description="Recent anomaly events a newly opened dashboard is shown."
    )
    dashboard_client_queue: int = Field(
        500, ge=1, description="Events queued per dashboard client; a client that falls "
        "further behind is disconnected (its browser reconnects)."
    )
    lag_refresh_s: float = Field(
        5.0, gt=0, description="How often the consumer lag gauge is refreshed."
    )
    log_level: str = Field("info", description="Log level (debug, info, warning, error).")

    feedback_ttl_days: float = Field(
        30.0, gt=0, description="How long a pattern operators marked \"not an anomaly\" "
        "stays taught (in the data's time); marking it again renews it (docs/feedback.md)."
    )
    chart_history_steps: int = Field(
        120, ge=0, description="Recent steps per series kept in worker memory for alert charts "
        "(18 bytes each; 0 = events carry no chart data)."
    )

    # Stopped series (docs/stopped-series.md)
    nodata_check_s: float = Field(
        30.0, ge=0, description="How often the worker looks for series that stopped "
        "reporting (wall clock); 0 = no no_data incidents."
    )
    nodata_steps: float = Field(
        5.0, gt=0, description="A series is silent after this many of its usual intervals "
        "(at least the detector's step) without a point…"
    )
    nodata_min_s: float = Field(
        300.0, ge=0, description="…and at least this long without a point."
    )
    nodata_recent_s: float = Field(
        300.0, gt=0, description="A partition's series are judged only once its owner has "
        "seen data on it at most this old when it arrived (after a start or a rebalance): "
        "history replays and backlogs are not judged until they reach live data. Raise it "
        "for sources that deliver their points later than this."
    )
    max_series_per_worker: int = Field(
        500_000, ge=0, description="New series beyond this many on one worker are refused: "
        "their points are dead-lettered with the reason and counted (0 = no limit)."
    )
    max_series_per_metric: int = Field(
        100_000, ge=0, description="New series of one metric name beyond this many on one "
        "worker are refused, as above (0 = no limit): a label that takes endless values "
        "(a request id) cannot grow the state without bound."
    )
    idle_expiry_days: float = Field(
        30.0, ge=0, description="Series without a point for this long are dropped: their "
        "Redis state expires and their silence is no longer watched (0 = keep forever)."
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
        LSTM_Z_OPEN, gt=0, description="LSTM score from which it joins an event or opens an "
        "incident of its own (its scores are heavy-tailed on real data: see docs/lstm.md)."
    )

    notifier_app_id: str = Field("vigil-notifier", description="Consumer group of the notifier.")
    notifier_web_port: int = Field(
        6067, description="Port of the notifier's /metrics and /health."
    )
    alerts: AlertingConfig = Field(
        default_factory=AlertingConfig, description="Receivers, routes and noise control."
    )

    detector: DetectorParams = Field(
        DetectorParams(), description="The online detector's parameters (VIGIL_DETECTOR__*)."
    )
    directions: Annotated[dict[str, Literal["up", "down", "both"]], NoDecode] = Field(
        {},
        description="Metric-name globs whose anomalies count in one direction only, "
        "e.g. 'memory_used*=up,disk_used*=up' (first match wins; default both).",
    )
    forecast_limits: Annotated[dict[str, str], NoDecode] = Field(
        {"*_free_percent": "0", "*_available_percent": "0", "*_idle_percent": "0",
         "*_percent": "100"},
        description="Capacity forecasts (docs/forecasts.md): metric-name globs and their "
        "limits, first match wins, e.g. 'disk_used_percent*: 100, memory_used_bytes: label "
        "mem_total' — a number (approached from either side), 'LOW/HIGH', or 'label NAME' "
        "(the series' label's value); {} forecasts nothing. The default: percentages reach "
        "100, free, available and idle ones 0.",
    )
    forecast_warning_h: float = Field(
        24.0, gt=0, description="A forecast warning opens when the lower bound of the time "
        "to the limit falls under this many hours.")
    forecast_critical_h: float = Field(
        4.0, gt=0, description="... and is critical under this many hours.")

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

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_scheme(cls, url: str) -> str:
        from urllib.parse import urlsplit

        from vigil.redact import redact_url

        if url and urlsplit(url).scheme not in ("clickhouse", "clickhouses"):
            # The message never holds the URL's password (it is printed at startup).
            raise ValueError(f"must start with clickhouse:// or clickhouses:// (got "
                             f"{redact_url(url)!r})")
        return url

    @field_validator("postgres_url")
    @classmethod
    def _postgres_scheme(cls, url: str) -> str:
        from urllib.parse import urlsplit

        from vigil.redact import redact_url

        if url and urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must start with postgresql:// (got {redact_url(url)!r})")
        return url

    @field_validator("detector", mode="before")
    @classmethod
    def _no_removed_knob(cls, value: object) -> object:
        if isinstance(value, dict):
            for name in value:
                if str(name).lower() in REMOVED_DETECTOR_KNOBS:
                    raise ValueError(f"VIGIL_DETECTOR__{str(name).upper()} is no longer a "
                                     f"setting: {REMOVED_DETECTOR_KNOBS[str(name).lower()]}")
        return value

    @model_validator(mode="after")
    def _one_history_store(self) -> Settings:
        if self.postgres_url and self.clickhouse_url:
            raise ValueError("set VIGIL_POSTGRES_URL or VIGIL_CLICKHOUSE_URL, not both: "
                             "history is kept in one store")
        return self

    def state_keys(self) -> StateKeys:
        """The names of the series' Redis keys (hash-tagged on a Redis Cluster)."""
        from vigil.streams.state import StateKeys  # the state store imports no settings

        return StateKeys(self.redis_prefix, self.redis_slot_groups if self.redis_cluster else 1)

    @property
    def store_url(self) -> str:
        """The history store's URL (PostgreSQL or ClickHouse); empty = storage off."""
        return self.postgres_url or self.clickhouse_url

    def secrets(self) -> list[str]:
        """Every secret these settings hold (SecretStr fields at any depth, URL passwords),
        for :func:`vigil.redact.install_log_redaction`."""
        from urllib.parse import parse_qsl, unquote, urlsplit

        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif hasattr(value, "__pydantic_fields__"):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)

        walk(self)
        for url in (self.redis_url, self.clickhouse_url, self.postgres_url, self.broker_url):
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password)]
        # libpq also takes the password as a parameter: postgresql://u@h/db?password=…
        found += [v for k, v in parse_qsl(urlsplit(self.postgres_url).query) if k == "password"]
        return [s for s in found if s]

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

    @field_validator("forecast_limits", mode="before")
    @classmethod
    def _parse_forecast_limits(cls, value):
        # From the environment: "glob: limit, glob2: limit" or a JSON object.
        from vigil.detectors.forecast import LimitRule

        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                value = json.loads(text)
            else:
                pairs = [item.split(":", 1) for item in text.split(",") if item.strip()]
                if any(len(pair) != 2 for pair in pairs):
                    raise ValueError("expected 'glob: limit', comma-separated")
                value = {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            value = {str(k): str(v) for k, v in value.items()}
            for rule in value.values():
                LimitRule.parse(rule)  # a bad rule fails at start, with its reason
        return value

    @field_validator("input_topics", "json_label_fields", "graphite_templates", "rate_metrics",
                     mode="before")
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

    # --- the Kafka client configuration, in each client library's spelling ----------------

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs "
                             "kafka_sasl_username and kafka_sasl_password")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("kafka_ssl_keyfile needs kafka_ssl_certfile")
        return self

    def kafka_client_config(self, bootstrap: str | None = None) -> dict[str, str]:
        """confluent-kafka (librdkafka) configuration: the brokers (``bootstrap``, default
        ``kafka_bootstrap``) and the security settings; a client adds its own options."""
        protocol = self.kafka_security_protocol
        config = {
            "bootstrap.servers": bootstrap or self.kafka_bootstrap,
            "security.protocol": protocol,
        }
        if protocol.startswith("SASL_"):
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self._kafka_password()
        if protocol.endswith("SSL"):
            tls = {
                "ssl.ca.location": self.kafka_ssl_cafile,
                "ssl.certificate.location": self.kafka_ssl_certfile,
                "ssl.key.location": self.kafka_ssl_keyfile,
            }
            config.update({k: v for k, v in tls.items() if v})
        return config

    def kafka_aiokafka_security(self) -> dict:
        """The same settings as aiokafka client arguments (the dashboard's consumer)."""
        protocol = self.kafka_security_protocol
        config: dict = {"security_protocol": protocol}
        if protocol.startswith("SASL_"):
            config["sasl_mechanism"] = self.kafka_sasl_mechanism
            config["sasl_plain_username"] = self.kafka_sasl_username
            config["sasl_plain_password"] = self._kafka_password()
        if protocol.endswith("SSL"):
            config["ssl_context"] = self.kafka_ssl_context()
        return config

    def kafka_broker_credentials(self):
        """The same settings as Faust's ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        protocol = self.kafka_security_protocol
        context = self.kafka_ssl_context() if protocol.endswith("SSL") else None
        if protocol.startswith("SASL_"):
            return faust.SASLCredentials(
                username=self.kafka_sasl_username, password=self._kafka_password(),
                mechanism=self.kafka_sasl_mechanism, ssl_context=context,
            )
        return None if context is None else faust.SSLCredentials(context)

    def kafka_ssl_context(self) -> ssl.SSLContext:
        """A TLS context that checks the brokers against ``kafka_ssl_cafile`` (or the
        system's CAs) and presents the client certificate when one is set."""
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return context

    def _kafka_password(self) -> str:
        password = self.kafka_sasl_password
        return password.get_secret_value() if password is not None else ""


# --- the configuration reference (docs/configuration.md is this function's output) --------

_REFERENCE_INTRO = """\
# Configuration

<!-- Generated from vigil/streams/settings.py by `python -m vigil.streams.settings >
docs/configuration.md`; tests/test_docs.py checks that this page matches. Edit the field
descriptions in the code, not this page. -->

Every setting is an environment variable prefixed `VIGIL_`; nested ones use a double
underscore (`VIGIL_DETECTOR__Z_OPEN=7`, `VIGIL_ALERTS__SMTP__PASSWORD=…`). Sources, strongest
first: environment variables, a `.env` file in the working directory, then the YAML file named
by `VIGIL_CONFIG_FILE` (default `vigil.yaml` when present) with the lowercase field names —
the easiest place for receivers and routes, while secrets stay in the environment (secret
fields are never logged). Lists read from the environment are comma-separated (or JSON).
"""


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type_name(annotation) -> str:
    import types
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name = " \\| ".join(_type_name(a) for a in inner)
        return f"{name} (optional)" if len(inner) < len(args) else name
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[0])} → {_type_name(args[1])}" if args else "map"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(value) -> str:
    from pydantic_core import PydanticUndefined

    if value is None or value is PydanticUndefined:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{int(value)}`" if value.is_integer() and abs(value) < 1e15 else f"`{value!r}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "(empty)"
    if isinstance(value, (list, tuple)):
        return f"`{','.join(map(str, value))}`" if value else "(none)"
    if isinstance(value, dict):
        return "(none)" if not value else f"`{json.dumps(value)}`"
    return f"`{value}`"


def _table(rows: list[tuple[str, str, str, str]], first: str = "variable") -> list[str]:
    out = [f"| {first} | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{var}` | {typ} | {default} | {_md_cell(meaning)} |"
            for var, typ, default, meaning in rows]
    return out


# Meanings of the alerting models' fields that carry no description of their own
# (vigil/sinks/alerts.py); a field's own description, once it has one, wins.
_ALERT_FIELD_NOTES = {
    "AlertingConfig.retry_initial_s": "First retry delay in seconds; later ones grow "
    "exponentially, with jitter.",
    "AlertingConfig.retry_max_s": "Longest delay in seconds between two delivery attempts.",
    "AlertingConfig.send_resolved": "Tell receivers when an incident resolves.",
    "SmtpSettings.host": "SMTP server.",
    "SmtpSettings.port": "SMTP port.",
    "SmtpSettings.security": "none, starttls or ssl (implicit TLS).",
    "SmtpSettings.username": "SMTP login (unset: no login).",
    "SmtpSettings.sender": "From address of alert emails.",
    "SmtpSettings.timeout_s": "SMTP connection and command timeout in seconds.",
    "SmtpSettings.validate_certs": "Check the SMTP server's TLS certificate.",
    "TelegramSettings.poll_timeout_s": "Long-polling timeout of getUpdates in seconds.",
    "EmailReceiver.to": "Addresses every message of the receiver goes to.",
    "TelegramReceiver.chat_ids": "Chats (users or groups with the bot) every message goes to.",
}


def _model_rows(
    model: type, prefix: str, skip: tuple[str, ...] = (), upper: bool = True
) -> list[tuple]:
    rows = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        meaning = info.description or _ALERT_FIELD_NOTES.get(f"{model.__name__}.{name}", "")
        key = info.alias or name
        rows.append((f"{prefix}{key.upper() if upper else key}", _type_name(info.annotation),
                     _default_text(default), meaning))
    return rows


def settings_reference() -> str:
    """The configuration reference in Markdown, from the fields of :class:`Settings` (and of
    :class:`DetectorParams` and the alerting models): name, variable, type, default and
    description. ``docs/configuration.md`` is its output; a test keeps the two equal.

    >>> text = settings_reference()
    >>> "| `VIGIL_KAFKA_BOOTSTRAP` | str | `127.0.0.1:9092` |" in text
    True
    >>> "`VIGIL_DETECTOR__Z_OPEN`" in text and "`VIGIL_ALERTS__SMTP__PASSWORD`" in text
    True
    """
    import dataclasses

    from vigil.sinks.alerts import (
        AlertmanagerReceiver,
        EmailReceiver,
        SmtpSettings,
        TelegramReceiver,
        TelegramSettings,
        WebhookReceiver,
    )

    lines = [_REFERENCE_INTRO, "## Worker, notifier and CLI", ""]
    lines += _table(_model_rows(Settings, "VIGIL_", skip=("alerts", "detector")))
    lines += [
        "",
        "## The detector (`VIGIL_DETECTOR__*`)",
        "",
        "The online detector's parameters (`DetectorParams` in `vigil/detectors/online.py`): "
        "one set for every series. A name carries its unit (`_s`, `_steps`, `_days`, "
        "`_weeks`; `z` for a score in σ). How they are used: [detection.md](detection.md).",
        "",
    ]
    rows = []
    for f in dataclasses.fields(DetectorParams):
        rows.append((f"VIGIL_DETECTOR__{f.name.upper()}", _type_name(f.type),
                     _default_text(f.default), f.metadata.get("description", "")))
    lines += _table(rows)
    lines += [
        "",
        "## Alerts (`VIGIL_ALERTS__*`)",
        "",
        "The notifier's `alerts:` section, easiest written in the YAML file: receivers, "
        "routes and silences are lists, described with a full example in "
        "[alerts.md](alerts.md). Its other fields:",
        "",
    ]
    lines += _table(_model_rows(AlertingConfig, "VIGIL_ALERTS__",
                                skip=("receivers", "routes", "silences", "smtp", "telegram")))
    for title, model, prefix in (
        ("Email (`VIGIL_ALERTS__SMTP__*`)", SmtpSettings, "VIGIL_ALERTS__SMTP__"),
        ("Telegram (`VIGIL_ALERTS__TELEGRAM__*`)", TelegramSettings, "VIGIL_ALERTS__TELEGRAM__"),
    ):
        lines += ["", f"### {title}", ""] + _table(_model_rows(model, prefix))
    lines += [
        "",
        "### Receivers (`receivers:` in the YAML file)",
        "",
        "Each receiver has a `name` and one or more channels; routes name receivers. "
        "How each channel behaves: [alerts.md](alerts.md) (email, Telegram, webhook) and "
        "[alertmanager.md](alertmanager.md).",
        "",
    ]
    rows = []
    for channel, model in (("email", EmailReceiver), ("telegram", TelegramReceiver),
                           ("alertmanager", AlertmanagerReceiver), ("webhook", WebhookReceiver)):
        rows += _model_rows(model, f"{channel}.", upper=False)
    lines += _table(rows, first="key")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_reference(), end="")
