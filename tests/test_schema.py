"""One anomaly-event schema: every consumer follows vigil.events.AnomalyEvent."""

from __future__ import annotations

from vigil.events import EVENT_FIELDS, AnomalyEvent, stable_id
from vigil.sinks.alerts import alert_labels
from vigil.sinks.clickhouse import TABLES, event_row

# Stored under another shape: labels as two arrays, the schema version as event_schema.
# The chart context (recent steps) is not history: the steps table holds it.
RENAMED = {"labels": ("label_keys", "label_values"), "schema_version": ("event_schema",)}
NOT_STORED = {"context"}


def _event(**over) -> AnomalyEvent:
    fields = dict(
        event_id=stable_id("e"), incident_id=stable_id("i"), kind="open",
        series='cpu{host="a"}', name="cpu", labels={"host": "a"}, ts="2024-01-01T00:00:00Z",
        ts_ms=1_704_067_200_000, value=9.0, expected=1.0, lower=0.0, upper=2.0, score=0.99,
        severity="warning", anomaly_type="point", detectors=["online"], reason="r",
    )
    fields.update(over)
    return AnomalyEvent(**fields)


def test_clickhouse_stores_every_field_of_the_event_schema():
    columns = set(TABLES["events"])
    for name in EVENT_FIELDS:
        if name in NOT_STORED:
            continue
        assert set(RENAMED.get(name, (name,))) <= columns, name
    row = dict(zip(TABLES["events"], event_row(_event()), strict=True))
    assert (row["label_keys"], row["label_values"]) == (["host"], ["a"])
    assert row["event_schema"] == _event().schema_version
    assert row["detectors"] == ["online"] and row["value"] == 9.0


def test_the_alert_stages_read_the_same_record():
    labels = alert_labels(_event())
    assert labels["__series__"] == 'cpu{host="a"}' and labels["host"] == "a"
