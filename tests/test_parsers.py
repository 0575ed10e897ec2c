"""Tests for vigil.streams.parsers: every input format, its batch forms, and every bad input.

Bad input must never raise: it becomes a Reject whose reason says what was wrong and whose
``raw`` holds the offending bytes (the whole record, or just the bad item/line of a batch).
"""

from __future__ import annotations

import random

import orjson
import pytest

from vigil.series import series_id as canonical_series
from vigil.streams.parsers import (
    AutoParser,
    InfluxLineParser,
    InvalidInput,
    JsonParser,
    PrometheusAdapterParser,
    TimestampPolicy,
    make_parser,
)
from vigil.streams.records import ParseResult, Reject
from vigil.times import _normalise_iso

NOW = 1_714_564_800_000  # 2024-05-01T12:00:00Z, fixed so tests do not depend on the clock
NOW_S = NOW // 1000
NOW_NS = NOW * 1_000_000


def points(result: ParseResult) -> list[tuple[str, int, float]]:
    return list(zip(result.series, result.ts_ms, result.values, strict=True))


def only_reject(result: ParseResult) -> Reject:
    """The single reject of a result that has no points."""
    assert len(result) == 0, points(result)
    assert len(result.rejects) == 1, result.rejects
    return result.rejects[0]


def point(**fields: object) -> bytes:
    return orjson.dumps(fields)


def good(name: str = "up", value: object = 1, timestamp: object = NOW_S, **extra: object) -> dict:
    return {"name": name, "value": value, "timestamp": timestamp, **extra}


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (NOW_S, NOW),  # seconds
        (NOW, NOW),  # milliseconds
        (NOW * 1000 + 123, NOW),  # microseconds (sub-ms truncated)
        (NOW_NS + 999_999, NOW),  # nanoseconds (sub-ms truncated)
        (NOW_S + 0.25, NOW + 250),  # fractional seconds
    ],
)
def test_auto_unit_is_chosen_by_magnitude(epoch: float, expected: int) -> None:
    assert TimestampPolicy().to_ms(epoch, NOW) == expected


@pytest.mark.parametrize(
    ("unit", "epoch"),
    [("s", NOW_S), ("ms", NOW), ("us", NOW * 1000), ("ns", NOW_NS), ("s", NOW_S + 0.0)],
)
def test_explicit_unit_is_obeyed(unit: str, epoch: float) -> None:
    assert TimestampPolicy(unit=unit).to_ms(epoch, NOW) == NOW


def test_float_seconds_keep_milliseconds_exactly() -> None:
    # 1714564800.123 * 1000 is 1714564800122.9998 in binary floating point: must round, not cut.
    assert TimestampPolicy(unit="s").to_ms(1714564800.123, NOW) == NOW + 123


def test_numeric_strings_are_epochs() -> None:
    policy = TimestampPolicy()
    assert policy.to_ms(str(NOW_S), NOW) == NOW
    assert policy.to_ms(str(NOW), NOW) == NOW
    assert policy.to_ms(f"{NOW_S}.5", NOW) == NOW + 500
    assert policy.to_ms(str(NOW_NS), NOW) == NOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", NOW),
        ("2024-05-01T12:00:00z", NOW),
        ("2024-05-01T12:00:00+00:00", NOW),
        ("2024-05-01T14:00:00+02:00", NOW),
        ("2024-05-01T07:00:00-05:00", NOW),
        ("2024-05-01T14:00:00+0200", NOW),
        ("2024-05-01T12:00:00.5Z", NOW + 500),
        ("2024-05-01T12:00:00.123Z", NOW + 123),
        ("2024-05-01T12:00:00.123456789Z", NOW + 123),
        ("2024-05-01 12:00:00", NOW),  # space separator, naive = UTC
        ("2024-05-01T12:00:00", NOW),  # naive = UTC
        (" 2024-05-01T12:00:00Z ", NOW),
    ],
)
def test_iso_8601_forms_become_utc_ms(text: str, expected: int) -> None:
    assert TimestampPolicy().to_ms(text, NOW) == expected


def test_iso_normalisation_for_older_pythons() -> None:
    # Python 3.10's fromisoformat lacks "Z", "+HHMM" and 9 fraction digits; we rewrite them.
    assert _normalise_iso("2024-05-01T12:00:00.123456789Z") == "2024-05-01T12:00:00.123456+00:00"
    assert _normalise_iso("2024-05-01T12:00:00.5+0200") == "2024-05-01T12:00:00.500000+02:00"
    assert _normalise_iso("2024-05-01 12:00:00") == "2024-05-01 12:00:00"


def reason_of(value: object, policy: TimestampPolicy | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        (policy or TimestampPolicy()).to_ms(value, NOW)
    return str(caught.value)


def test_far_future_timestamp_is_rejected_with_distance() -> None:
    reason = reason_of("2099-01-01T00:00:00Z")
    assert reason.startswith("timestamp 2099-01-01T00:00:00Z is ")
    assert "days in the future (clock skew allowed: 5 minutes)" in reason


def test_slightly_future_timestamp_within_limit_is_accepted() -> None:
    assert TimestampPolicy().to_ms(NOW_S + 60, NOW) == NOW + 60_000
    assert TimestampPolicy(max_future_s=3600).to_ms(NOW_S + 3600, NOW) == NOW + 3_600_000


def test_a_point_23_hours_ahead_is_beyond_the_default_clock_skew() -> None:
    # It would move the series' watermark a day ahead and blind it (issue 18).
    assert "23 hours in the future" in reason_of(NOW_S + 23 * 3600)


def test_custom_future_limit_is_applied() -> None:
    policy = TimestampPolicy(max_future_s=60)
    assert policy.to_ms(NOW_S + 60, NOW) == NOW + 60_000
    assert "3 minutes in the future" in reason_of(NOW_S + 180, policy)


def test_far_past_timestamp_is_rejected() -> None:
    reason = reason_of("2010-01-01T00:00:00Z")
    assert "days in the past (max 3650 days)" in reason


def test_timestamp_before_2000_is_rejected() -> None:
    assert reason_of("1999-12-31T23:59:59Z") == (
        "timestamp 1999-12-31T23:59:59Z is before 2000-01-01"
    )
    assert "before 2000-01-01" in reason_of(0)


def test_seconds_given_where_ms_expected_is_hinted() -> None:
    reason = reason_of(NOW_S, TimestampPolicy(unit="ms"))
    assert reason == f"timestamp {NOW_S} is before 2000-01-01 (seconds given where ms expected?)"


def test_ns_given_where_ms_expected_is_hinted() -> None:
    reason = reason_of(NOW_NS, TimestampPolicy(unit="ms"))
    assert "in the future" in reason
    assert reason.endswith("(ns given where ms expected?)")


def test_absurd_timestamp_reason_stays_short() -> None:
    reason = reason_of(1e300, TimestampPolicy(unit="ms"))
    assert "over 1000000 days in the future" in reason
    assert len(reason) < 120


def test_overflowing_float_timestamp_is_rejected() -> None:
    assert "out of range" in reason_of(1e307, TimestampPolicy(unit="s"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([NOW_S], "unsupported timestamp type: list"),
        ({"s": NOW_S}, "unsupported timestamp type: dict"),
        (True, "unsupported timestamp type: bool"),
        (None, "timestamp is null"),
        ("", "timestamp is an empty string"),
        ("yesterday", "timestamp is neither an epoch nor ISO-8601: 'yesterday'"),
        ("2024-13-01T00:00:00Z", "invalid ISO-8601 timestamp: '2024-13-01T00:00:00Z'"),
        ("NaN", "timestamp is NaN"),
        ("inf", "timestamp is infinite"),
        (float("nan"), "timestamp is NaN"),
    ],
)
def test_unusable_timestamp_value_is_rejected(value: object, expected: str) -> None:
    assert reason_of(value) == expected


def test_unknown_timestamp_unit_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unit must be one of"):
        TimestampPolicy(unit="minutes")


# --------------------------------------------------------------------------- JSON: good input


def test_json_object_with_labels_gives_canonical_series() -> None:
    raw = point(name="node_load1", value=0.5, timestamp=NOW, labels={"role": "db", "host": "db-1"})
    result = JsonParser().parse(raw, NOW)
    assert points(result) == [('node_load1{host="db-1",role="db"}', NOW, 0.5)]
    assert result.rejects == []


def test_json_top_level_label_fields_become_labels() -> None:
    raw = point(name="node_load1", value=1.5, timestamp=NOW, host="db-1", ignored="x")
    result = JsonParser(label_fields=("host", "dc")).parse(raw, NOW)
    assert result.series == ['node_load1{host="db-1"}']
    assert result.series[0] == canonical_series("node_load1", {"host": "db-1"})


def test_json_without_labels_series_is_just_the_name() -> None:
    assert JsonParser().parse(point(**good("up")), NOW).series == ["up"]


def test_json_label_values_are_stringified_and_nulls_dropped() -> None:
    raw = point(**good("up", labels={"port": 8080, "tls": True, "gone": None}))
    assert JsonParser().parse(raw, NOW).series == ['up{port="8080",tls="true"}']


def test_json_dunder_name_label_is_dropped() -> None:
    raw = point(**good("up", labels={"__name__": "up", "job": "node"}))
    assert JsonParser().parse(raw, NOW).series == ['up{job="node"}']


def test_json_dunder_name_label_serves_as_missing_name() -> None:
    raw = point(value=1, timestamp=NOW_S, labels={"__name__": "up", "job": "node"})
    assert JsonParser().parse(raw, NOW).series == ['up{job="node"}']


def test_json_default_name_fills_missing_name() -> None:
    raw = point(value=1, timestamp=NOW_S)
    assert JsonParser(default_name="heartbeat").parse(raw, NOW).series == ["heartbeat"]


def test_json_custom_field_names() -> None:
    parser = JsonParser(
        name_field="metric", value_field="v", timestamp_field="ts", labels_field="tags"
    )
    raw = point(metric="cpu", v=3, ts="2024-05-01T12:00:00Z", tags={"host": "a"})
    assert points(parser.parse(raw, NOW)) == [('cpu{host="a"}', NOW, 3.0)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3.0), (-2.5, -2.5), ("1.5", 1.5), ("9876543210", 9876543210.0), ("-1e3", -1000.0)],
)
def test_json_numeric_values_and_numeric_strings(value: object, expected: float) -> None:
    assert JsonParser().parse(point(**good(value=value)), NOW).values == [expected]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (NOW_S, NOW),
        (NOW, NOW),
        (NOW_NS, NOW),
        (NOW_S + 0.5, NOW + 500),
        ("2024-05-01T12:00:00Z", NOW),
        (str(NOW), NOW),
    ],
)
def test_json_timestamp_forms(timestamp: object, expected: int) -> None:
    assert JsonParser().parse(point(**good(timestamp=timestamp)), NOW).ts_ms == [expected]


def test_json_timestamp_unit_is_configurable() -> None:
    parser = JsonParser(timestamps=TimestampPolicy(unit="s"))
    assert parser.parse(point(**good(timestamp=NOW_S)), NOW).ts_ms == [NOW]


def test_json_list_batch() -> None:
    raw = orjson.dumps([good("a", 1), good("b", 2)])
    assert points(JsonParser().parse(raw, NOW)) == [("a", NOW, 1.0), ("b", NOW, 2.0)]


@pytest.mark.parametrize("key", ["points", "metrics"])
def test_json_envelope_batch(key: str) -> None:
    raw = orjson.dumps({key: [good("a", 1), good("b", 2)], "source": "agent"})
    assert JsonParser().parse(raw, NOW).series == ["a", "b"]


def test_json_newline_delimited_objects() -> None:
    raw = b"\n".join([point(**good("a")), b"", point(**good("b")), b""])
    assert JsonParser().parse(raw, NOW).series == ["a", "b"]


def test_json_pretty_printed_object_is_one_record() -> None:
    raw = orjson.dumps(good("a"), option=orjson.OPT_INDENT_2)
    assert b"\n" in raw
    assert JsonParser().parse(raw, NOW).series == ["a"]


# --------------------------------------------------------------------------- JSON: bad input


def test_json_malformed_record_is_one_reject_with_original_bytes() -> None:
    raw = b'{"name": "up", "value": '
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject.reason.startswith("invalid JSON: ")
    assert reject.raw == raw


def test_json_broken_multiline_document_is_one_reject() -> None:
    raw = b'{\n  "name": "up",\n  "value": \n'
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject.reason.startswith("invalid JSON: ")
    assert reject.raw == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"42", "int"), (b'"up"', "str"), (b"null", "NoneType"), (b"true", "bool")],
)
def test_json_document_that_is_not_an_object_is_rejected(raw: bytes, expected: str) -> None:
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject.reason == f"not a JSON object or list: {expected}"
    assert reject.raw == raw


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"value": 1, "timestamp": NOW_S}, "missing field 'name'"),
        ({"name": "up", "timestamp": NOW_S}, "missing field 'value'"),
        ({"name": "up", "value": 1}, "missing field 'timestamp'"),
        ({"name": 7, "value": 1, "timestamp": NOW_S}, "name is not a non-empty string: 7"),
        ({"name": "", "value": 1, "timestamp": NOW_S}, "name is not a non-empty string: ''"),
        (good(labels=["host"]), "field 'labels' is not an object: list"),
    ],
)
def test_json_missing_or_wrong_field_is_rejected(fields: dict, expected: str) -> None:
    raw = orjson.dumps(fields)
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject.reason == expected
    assert reject.raw == raw


def test_json_missing_field_reason_names_configured_field() -> None:
    raw = point(metric="up", timestamp=NOW_S)
    reject = only_reject(JsonParser(name_field="metric", value_field="v").parse(raw, NOW))
    assert reject.reason == "missing field 'v'"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "value is not numeric: 'abc'"),
        ("", "value is not numeric: ''"),
        ([1], "value is not numeric: list [1]"),
        ({"v": 1}, "value is not numeric: dict {'v': 1}"),
        (True, "value is a boolean, not a number: True"),
        (False, "value is a boolean, not a number: False"),
        (None, "value is null"),
        ("NaN", "value is NaN"),
        ("nan", "value is NaN"),
        ("+Inf", "value is infinite"),
        ("-Infinity", "value is infinite"),
    ],
)
def test_json_unusable_value_is_rejected(value: object, expected: str) -> None:
    raw = point(**good(value=value))
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert expected in reject.reason
    assert reject.raw == raw


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400"])
def test_json_nan_and_infinite_number_literals_are_rejected(literal: bytes) -> None:
    # Not valid JSON (orjson refuses them), so they can never reach the value check as floats.
    raw = b'{"name": "up", "value": ' + literal + b', "timestamp": 1714564800}'
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject.reason.startswith("invalid JSON: ")
    assert reject.raw == raw


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2099-01-01T00:00:00Z", "timestamp 2099-01-01T00:00:00Z is "),
        ("2010-01-01T00:00:00Z", "in the past"),
        (946684799, "before 2000-01-01"),
        ([NOW_S], "unsupported timestamp type: list"),
        (None, "timestamp is null"),
    ],
)
def test_json_unusable_timestamp_is_rejected(timestamp: object, expected: str) -> None:
    raw = point(**good(timestamp=timestamp))
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert expected in reject.reason
    assert reject.raw == raw


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\r\n\t"])
def test_json_empty_record_is_rejected(raw: bytes) -> None:
    reject = only_reject(JsonParser().parse(raw, NOW))
    assert reject == Reject("empty record", raw)


@pytest.mark.parametrize("raw", [b"[]", b'{"points": []}', b'{"metrics": []}'])
def test_json_empty_batch_is_rejected(raw: bytes) -> None:
    assert only_reject(JsonParser().parse(raw, NOW)) == Reject("empty batch", raw)


def test_json_partly_bad_batch_keeps_good_points_and_rejects_each_bad_item() -> None:
    items = [
        good("a", 1),
        good("b", "NaN"),
        "not a point",
        good("d", 4),
        {"name": "e", "timestamp": NOW_S},
        good("f", 6, timestamp="2099-01-01T00:00:00Z"),
    ]
    result = JsonParser().parse(orjson.dumps(items), NOW)
    assert points(result) == [("a", NOW, 1.0), ("d", NOW, 4.0)]
    assert [r.reason for r in result.rejects] == [
        "item 1: value is NaN",
        "item 2: not a JSON object: str",
        "item 4: missing field 'value'",
        "item 5: timestamp 2099-01-01T00:00:00Z is 27272 days in the future "
            "(clock skew allowed: 5 minutes)",
    ]
    # Each reject carries only its own item, re-serialised.
    assert [r.raw for r in result.rejects] == [orjson.dumps(items[i]) for i in (1, 2, 4, 5)]


def test_json_partly_bad_envelope_keeps_good_points() -> None:
    raw = orjson.dumps({"points": [good("a"), good("b", True)]})
    result = JsonParser().parse(raw, NOW)
    assert result.series == ["a"]
    assert result.rejects == [
        Reject("item 1: value is a boolean, not a number: True", orjson.dumps(good("b", True)))
    ]


def test_json_ndjson_bad_lines_are_rejected_individually() -> None:
    bad_value = point(**good("b", "abc"))
    raw = b"\n".join([point(**good("a")), bad_value, b"{oops", point(**good("d"))])
    result = JsonParser().parse(raw, NOW)
    assert result.series == ["a", "d"]
    assert [r.reason for r in result.rejects][0] == "line 2: value is not numeric: 'abc'"
    assert result.rejects[0].raw == bad_value
    assert result.rejects[1].reason.startswith("line 3: invalid JSON: ")
    assert result.rejects[1].raw == b"{oops"


def test_json_ndjson_line_holding_a_batch_names_line_and_item() -> None:
    raw = point(**good("a")) + b"\n" + orjson.dumps([good("b"), good("c", "x")])
    result = JsonParser().parse(raw, NOW)
    assert result.series == ["a", "b"]
    assert [r.reason for r in result.rejects] == ["line 2: item 1: value is not numeric: 'x'"]


# --------------------------------------------------------------------------- Prometheus adapter

ADAPTER_SAMPLE = {
    "timestamp": "2024-05-01T12:00:00Z",
    "value": "9876543210",
    "name": "up",
    "labels": {"__name__": "up", "label1": "value1"},
}


def test_prometheus_adapter_sample_is_parsed() -> None:
    result = PrometheusAdapterParser().parse(orjson.dumps(ADAPTER_SAMPLE), NOW)
    assert points(result) == [('up{label1="value1"}', NOW, 9876543210.0)]


def test_prometheus_adapter_list_and_newline_delimited_samples() -> None:
    second = {**ADAPTER_SAMPLE, "value": "0.5", "labels": {"__name__": "up", "label1": "v2"}}
    as_list = orjson.dumps([ADAPTER_SAMPLE, second])
    as_lines = orjson.dumps(ADAPTER_SAMPLE) + b"\n" + orjson.dumps(second) + b"\n"
    for raw in (as_list, as_lines):
        result = PrometheusAdapterParser().parse(raw, NOW)
        assert result.series == ['up{label1="value1"}', 'up{label1="v2"}']
        assert result.values == [9876543210.0, 0.5]


def test_prometheus_adapter_nan_sample_is_rejected() -> None:
    raw = orjson.dumps({**ADAPTER_SAMPLE, "value": "NaN"})
    assert only_reject(PrometheusAdapterParser().parse(raw, NOW)) == Reject("value is NaN", raw)


def test_prometheus_adapter_readme_epoch_zero_example_is_rejected_as_before_2000() -> None:
    raw = orjson.dumps({**ADAPTER_SAMPLE, "timestamp": "1970-01-01T00:00:00Z"})
    reject = only_reject(PrometheusAdapterParser().parse(raw, NOW))
    assert reject.reason == "timestamp 1970-01-01T00:00:00Z is before 2000-01-01"


def test_prometheus_adapter_json_works_through_auto_and_plain_json() -> None:
    raw = orjson.dumps(ADAPTER_SAMPLE)
    for parser in (AutoParser(), JsonParser(), make_parser("auto")):
        assert points(parser.parse(raw, NOW)) == [('up{label1="value1"}', NOW, 9876543210.0)]


# --------------------------------------------------------------------------- Influx: good input


def test_influx_line_with_tags_fields_and_ns_timestamp() -> None:
    raw = f"cpu,host=db-1,cpu=cpu0 usage_idle=97.5,usage_user=2.5 {NOW_NS}".encode()
    result = InfluxLineParser().parse(raw, NOW)
    assert points(result) == [
        ('cpu_usage_idle{cpu="cpu0",host="db-1"}', NOW, 97.5),
        ('cpu_usage_user{cpu="cpu0",host="db-1"}', NOW, 2.5),
    ]
    assert result.series[0] == canonical_series("cpu_usage_idle", {"host": "db-1", "cpu": "cpu0"})
    assert result.rejects == []


def test_influx_canonical_series_matches_records_helper() -> None:
    result = InfluxLineParser().parse(b"node,host=db-1 load1=0.5", NOW)
    assert result.series == ['node_load1{host="db-1"}']


def test_influx_missing_timestamp_is_now() -> None:
    assert InfluxLineParser().parse(b"mem used=1", NOW).ts_ms == [NOW]


def test_influx_many_lines_with_blank_and_comment_lines() -> None:
    raw = (
        f"# written by telegraf\n\ncpu idle=1 {NOW_NS}\r\n"
        f"  mem used=2i {NOW_NS}\n# trailing comment\n"
    ).encode()
    result = InfluxLineParser().parse(raw, NOW)
    assert points(result) == [("cpu_idle", NOW, 1.0), ("mem_used", NOW, 2.0)]
    assert result.rejects == []


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("12i", 12.0),
        ("-12i", -12.0),
        ("12u", 12.0),
        ("1.5", 1.5),
        ("-1.5e3", -1500.0),
        ("7", 7.0),
        *[(t, 1.0) for t in ("t", "T", "true", "True", "TRUE")],
        *[(f, 0.0) for f in ("f", "F", "false", "False", "FALSE")],
    ],
)
def test_influx_numeric_and_boolean_field_values(token: str, expected: float) -> None:
    result = InfluxLineParser().parse(f"m x={token}".encode(), NOW)
    assert result.values == [expected]


def test_influx_string_fields_are_skipped() -> None:
    raw = b'procstat,exe=nginx pid=42i,cmd="nginx -g daemon off;",user="www",cpu=0.5'
    result = InfluxLineParser().parse(raw, NOW)
    assert points(result) == [
        ('procstat_pid{exe="nginx"}', NOW, 42.0),
        ('procstat_cpu{exe="nginx"}', NOW, 0.5),
    ]
    assert result.rejects == []


def test_influx_escaped_measurement_tags_and_field_keys() -> None:
    # An escaped backslash is one backslash; one before any other character is kept as is.
    raw = (
        rb"disk\ io\,x,path=C:\\Program\ Files,dir=a\b,mode\=x=r\,w "
        rb"read\ bytes=1i,we\=ird\,key=2 "
    ) + str(NOW_NS).encode()
    result = InfluxLineParser().parse(raw, NOW)
    labels = {"path": "C:\\Program Files", "dir": "a\\b", "mode=x": "r,w"}
    assert points(result) == [
        (canonical_series("disk io,x_read bytes", labels), NOW, 1.0),
        (canonical_series("disk io,x_we=ird,key", labels), NOW, 2.0),
    ]


def test_influx_quoted_string_field_with_escapes_spaces_and_separators() -> None:
    raw = b'log,app=web msg="said \\"hi\\", a=b c\\\\",level=3i,note="x" ' + str(NOW_NS).encode()
    result = InfluxLineParser().parse(raw, NOW)
    assert points(result) == [('log_level{app="web"}', NOW, 3.0)]


def test_influx_separator_is_configurable_within_the_naming_rule() -> None:
    assert InfluxLineParser(separator=":").parse(b"cpu idle=1", NOW).series == ["cpu:idle"]
    # A dot is not valid in a metric name: sanitised like any other character.
    assert InfluxLineParser(separator=".").parse(b"cpu idle=1", NOW).series == ["cpu_idle"]


def test_influx_prometheus_measurement_is_left_out_of_the_name() -> None:
    # Telegraf's prometheus input (metric_version = 2) writes measurement "prometheus".
    raw = b"prometheus,job=node go_goroutines=12,up=1"
    result = InfluxLineParser().parse(raw, NOW)
    assert result.series == ['go_goroutines{job="node"}', 'up{job="node"}']


@pytest.mark.parametrize(
    ("unit", "stamp"), [("s", NOW_S), ("ms", NOW), ("us", NOW * 1000), ("auto", NOW)]
)
def test_influx_timestamp_precision_is_configurable(unit: str, stamp: int) -> None:
    parser = InfluxLineParser(timestamps=TimestampPolicy(unit=unit))
    assert parser.parse(f"m x=1 {stamp}".encode(), NOW).ts_ms == [NOW]


# --------------------------------------------------------------------------- Influx: bad input


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"cpu", "missing fields"),
        (b"cpu,host=a", "missing fields"),
        (b"cpu idle", "invalid field 'idle' (expected key=value)"),
        (b"cpu,host idle=1", "invalid tag 'host' (expected key=value)"),
        (b"cpu,host= idle=1", "empty tag key or value"),
        (b",host=a idle=1", "missing measurement"),
        (b"cpu =1", "empty field key"),
        (b"cpu idle=", "field 'idle' has no value"),
        (b"cpu idle=abc", "invalid field value idle='abc'"),
        (b"cpu idle=1.5i", "invalid integer field idle=1.5i"),
        (b"cpu idle=-1u", "negative unsigned field idle=-1u"),
        (b"cpu idle=NaN", "field 'idle' is NaN"),
        (b"cpu idle=inf", "field 'idle' is infinite"),
        (b"cpu idle=1,user=oops", "invalid field value user='oops'"),
        (b"cpu,host=a b idle=1 1", "4 space-separated parts"),
        (b"cpu idle=1 12:00", "invalid timestamp '12:00'"),
        (b'cpu msg="only text"', "no numeric field"),
        (b'cpu msg="unterminated', "unterminated string field"),
        (b'cpu msg="a"b,x=1', "unexpected text after string field 'msg'"),
        (b"cpu\\ x idle", "invalid field 'idle' (expected key=value)"),
        (b"cpu idle=1 17145648000", "before 2000-01-01 (seconds given where ns expected?)"),
        (b"cpu idle=1 4102444800000000000", "days in the future"),
        (b"cpu idle=1 1262304000000000000", "days in the past"),
        (b"cpu idle=1 \xff", "invalid UTF-8"),
    ],
)
def test_influx_bad_line_is_rejected_with_original_bytes(raw: bytes, expected: str) -> None:
    reject = only_reject(InfluxLineParser().parse(raw, NOW))
    assert expected in reject.reason
    assert reject.raw == raw


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"  ", b"# only a comment\n\n# another"])
def test_influx_empty_record_is_rejected(raw: bytes) -> None:
    assert only_reject(InfluxLineParser().parse(raw, NOW)) == Reject("empty record", raw)


def test_influx_bad_lines_are_rejected_individually_and_good_lines_kept() -> None:
    raw = b"\n".join(
        [
            b"cpu idle=1",
            b"cpu idle=abc",
            b"# comment",
            b'cpu,host=a msg="text only"',
            b"mem used=2i",
            b"bad\xfe line",
        ]
    )
    result = InfluxLineParser().parse(raw, NOW)
    assert points(result) == [("cpu_idle", NOW, 1.0), ("mem_used", NOW, 2.0)]
    assert result.rejects == [
        Reject("line 2: invalid field value idle='abc'", b"cpu idle=abc"),
        Reject("line 4: no numeric field", b'cpu,host=a msg="text only"'),
        Reject("line 6: invalid UTF-8", b"bad\xfe line"),
    ]


def test_influx_line_with_one_bad_field_adds_none_of_its_points() -> None:
    result = InfluxLineParser().parse(b"cpu a=1,b=2\ncpu c=3,d=x", NOW)
    assert result.series == ["cpu_a", "cpu_b"]
    assert [r.reason for r in result.rejects] == ["line 2: invalid field value d='x'"]


# --------------------------------------------------------------------------- auto + factory


def test_auto_routes_json_object_list_and_influx() -> None:
    parser = AutoParser()
    assert parser.parse(point(**good("a")), NOW).series == ["a"]
    assert parser.parse(b"\n  " + orjson.dumps([good("b")]), NOW).series == ["b"]
    assert parser.parse(b"cpu idle=1", NOW).series == ["cpu_idle"]


def test_auto_rejects_empty_record() -> None:
    assert only_reject(AutoParser().parse(b" \n", NOW)) == Reject("empty record", b" \n")


def test_auto_malformed_json_is_reported_as_json() -> None:
    reject = only_reject(AutoParser().parse(b"{nope", NOW))
    assert reject.reason.startswith("invalid JSON: ")


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        ("json", JsonParser),
        ("prometheus", PrometheusAdapterParser),
        ("influx", InfluxLineParser),
        ("auto", AutoParser),
        (" JSON ", JsonParser),
    ],
)
def test_make_parser_builds_each_format(fmt: str, kind: type) -> None:
    assert isinstance(make_parser(fmt), kind)


def test_make_parser_passes_options() -> None:
    parser = make_parser("json", label_fields=("host",), timestamps={"unit": "s"})
    assert parser.label_fields == ("host",)
    assert parser.timestamps == TimestampPolicy(unit="s")


def test_make_parser_auto_splits_options_between_json_and_influx() -> None:
    parser = make_parser(
        "auto", separator=".", label_fields=("host",), timestamps={"max_past_s": 60}
    )
    assert parser.influx_parser.separator == "."
    assert parser.json_parser.label_fields == ("host",)
    # Influx keeps the JSON limits but reads nanosecond epochs, Telegraf's default precision.
    assert parser.influx_parser.timestamps == TimestampPolicy(max_past_s=60, unit="ns")
    custom = make_parser("auto", influx_timestamps={"unit": "s"})
    assert custom.influx_parser.timestamps == TimestampPolicy(unit="s")


def test_make_parser_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        make_parser("csv")


# --------------------------------------------------------------------------- robustness

SAMPLES = [
    orjson.dumps([good("a", labels={"h": "x"}), good("b", "2")]),
    orjson.dumps(ADAPTER_SAMPLE) + b"\n" + orjson.dumps(ADAPTER_SAMPLE),
    b'disk\\ io,path=C:\\\\x,m\\=o=r\\,w rb=1i,msg="q\\"uo te",ok=t ' + str(NOW_NS).encode(),
    b"cpu,host=a idle=1,user=2u\nmem used=3 " + str(NOW_NS).encode(),
]


@pytest.mark.parametrize("fmt", ["json", "prometheus", "influx", "auto"])
def test_truncated_and_random_input_never_raises(fmt: str) -> None:
    parser = make_parser(fmt)
    rng = random.Random(1234)
    inputs = [sample[:cut] for sample in SAMPLES for cut in range(len(sample) + 1)]
    inputs += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(40))) for _ in range(300)]
    inputs += [
        bytes(rng.choice(b'{}[]",:=\\ \n0123456789.eEtfinaINAxyz-') for _ in range(30))
        for _ in range(300)
    ]
    for raw in inputs:
        result = parser.parse(raw, NOW)  # must not raise
        assert len(result.series) == len(result.ts_ms) == len(result.values)
        for reject in result.rejects:
            assert reject.reason and not reject.reason.startswith("parser error")
            assert isinstance(reject.raw, bytes)


# --- whatever the parser hits on one line or item, the others are kept (issue 18) ---------


def test_an_influx_integer_too_large_for_a_float_costs_only_its_line() -> None:
    lines = [f"cpu,host=a usage=1 {NOW * 1_000_000}",
             f"cpu,host=b usage={'9' * 400}i {NOW * 1_000_000}",
             f"cpu,host=c usage=3 {NOW * 1_000_000}"]
    result = InfluxLineParser().parse("\n".join(lines).encode(), NOW)
    assert points(result) == [('cpu_usage{host="a"}', NOW, 1.0),
                              ('cpu_usage{host="c"}', NOW, 3.0)]
    assert len(result.rejects) == 1 and result.rejects[0].reason.startswith("line 2: ")


def _deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_a_json_label_nested_1000_deep_costs_only_its_item() -> None:
    items = [good("a", 1), {**good("b", 2), "labels": {"deep": _deep(1_000)}}, good("c", 3)]
    raw = b"[" + b",".join(orjson.dumps(i) if n != 1 else _dumps_deep(i)
                           for n, i in enumerate(items)) + b"]"
    result = JsonParser().parse(raw, NOW)
    assert points(result) == [("a", NOW, 1.0), ("c", NOW, 3.0)]
    assert len(result.rejects) == 1 and result.rejects[0].reason.startswith("item 1: ")


def _dumps_deep(item: dict) -> bytes:
    """orjson refuses to write more than 255 levels; json writes any depth."""
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.dumps(item).encode()
    finally:
        sys.setrecursionlimit(limit)
