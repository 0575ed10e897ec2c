"""docker-compose.yml agrees with the settings the code reads (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from vigil.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


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
    values = {k[len("VIGIL_"):].lower(): _interpolate(v)
              for k, v in env.items() if k != "VIGIL_CONFIG_FILE"}
    settings = Settings(**values)
    assert settings.kafka_bootstrap == "kafka:29092"
    assert settings.redis_url.startswith("redis://redis:")
    if name == "vigil":
        # History goes to the compose ClickHouse, with the user, password and database it
        # creates; the dashboard is on (its token comes from the user's environment).
        url = urlsplit(settings.clickhouse_url)
        clickhouse = services["clickhouse"]["environment"]
        assert (url.hostname, url.port) == ("clickhouse", 9000)
        assert (url.username, url.password, url.path) == (
            clickhouse["CLICKHOUSE_USER"], clickhouse["CLICKHOUSE_PASSWORD"],
            "/" + clickhouse["CLICKHOUSE_DB"])
        # No default token: the dashboard stays off until the user sets one.
        assert env["VIGIL_DASHBOARD_TOKEN"] == "${VIGIL_DASHBOARD_TOKEN:-}"
        assert settings.feedback_topic == services["notifier"]["environment"][
            "VIGIL_FEEDBACK_TOPIC"]
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
    assert set(vigil["depends_on"]) == {"kafka", "redis", "clickhouse"}
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


def test_every_port_is_published_on_localhost_only_and_every_mount_exists():
    compose = _compose()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to all"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, not in the repo"
    assert set(compose["services"]) >= {
        "kafka", "redis", "clickhouse", "vigil", "notifier", "mailpit", "grafana"}


def _mount_target(service: dict, source: str) -> str:
    for volume in service["volumes"]:
        src, target = volume.split(":")[:2]
        if (ROOT / src).resolve() == (ROOT / source).resolve():
            return target
    raise AssertionError(f"{source} is not mounted")


def test_grafana_is_provisioned_with_the_clickhouse_source_and_the_dashboard():
    services = _compose()["services"]
    grafana, clickhouse = services["grafana"], services["clickhouse"]
    provisioning = _mount_target(grafana, "./deploy/grafana/provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    dashboards_dir = _mount_target(grafana, "./deploy/grafana/dashboards")

    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/clickhouse.yaml").read_text())["datasources"]
    assert source["type"] in grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")
    data = source["jsonData"]
    env = clickhouse["environment"]
    assert data["host"] == "clickhouse" and data["protocol"] == "native"
    assert data["port"] == 9000
    # The health check logs in as the user the worker and Grafana use.
    check = clickhouse["healthcheck"]["test"]
    assert check[check.index("--user") + 1] == clickhouse["environment"]["CLICKHOUSE_USER"]
    assert (data["username"], source["secureJsonData"]["password"], data["defaultDatabase"]) == (
        env["CLICKHOUSE_USER"], env["CLICKHOUSE_PASSWORD"], env["CLICKHOUSE_DB"])

    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/vigil.yaml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (GRAFANA / "dashboards" / home[len(dashboards_dir) + 1:]).is_file()

    dashboard = json.loads((GRAFANA / "dashboards/vigil-anomalies.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for wanted in ("Anomalies over time", "Top anomalous series", "expected band"):
        assert wanted in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and target["rawSql"]


# Words of the dashboard's SQL that are neither tables nor columns.
_SQL_WORDS = {
    "select", "from", "where", "group", "by", "order", "desc", "asc", "limit", "as", "and",
    "or", "not", "null", "is", "final", "in", "vigil",
}


def grafana_queries() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards/vigil-anomalies.json").read_text())
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def names_in(sql: str) -> tuple[set[str], set[str]]:
    """(tables, other identifiers) a query names: functions, Grafana macros and variables,
    string literals and the query's own aliases left out.

    >>> tables, words = names_in(
    ...     "SELECT $__timeInterval(ts) AS time, max(v) AS top FROM vigil.steps "
    ...     "WHERE series = ${series:sqlstring} AND $__timeFilter(ts) GROUP BY time")
    >>> sorted(tables), sorted(words)
    (['steps'], ['series', 'ts', 'v'])
    """
    text = re.sub(r"\$\{[^}]*\}", "''", sql)
    text = re.sub(r"\$__\w+", "", text)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    tables = set(re.findall(r"\bvigil\.(\w+)", text))
    aliases = {a.lower() for a in re.findall(r"\bAS\s+(\w+)", text, flags=re.I)}
    text = re.sub(r"\bvigil\.\w+", " ", text)
    words = {
        w for w in re.findall(r"\b([A-Za-z_]\w*)\b(?!\s*\()", text)
        if w.lower() not in _SQL_WORDS and w.lower() not in aliases
    }
    return tables, words


def test_grafana_sql_names_only_tables_and_columns_of_the_clickhouse_schema():
    from vigil.sinks.clickhouse import TABLES

    for sql in grafana_queries():
        tables, words = names_in(sql)
        assert tables and tables <= set(TABLES), (sql, tables)
        columns = set().union(*(TABLES[t] for t in tables))
        assert words <= columns, (sql, words - columns)


@pytest.mark.integration
def test_grafana_sql_runs_against_the_schema_vigil_creates(clickhouse_url: str):
    """Each panel's query, Grafana's macros expanded, runs on a real ClickHouse whose tables
    vigil's own schema code created."""
    import uuid

    from vigil.sinks.clickhouse import ClickHouseStore

    store = ClickHouseStore(clickhouse_url.rsplit("/", 1)[0] + f"/grafana_{uuid.uuid4().hex[:8]}")
    try:
        store.ensure_schema()
        for sql in grafana_queries():
            sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfMinute(\1)", sql)
            sql = re.sub(r"\$__timeFilter\((\w+)\)", r"(\1 >= toDateTime(0) AND \1 <= now())", sql)
            sql = sql.replace("${series:sqlstring}", "'cpu{host=\"a\"}'")
            assert "$" not in sql, sql
            store.execute(sql.replace("vigil.", "{db}."))
    finally:
        store.execute("DROP DATABASE IF EXISTS {db}")
        store.close()
