"""The series id: one format, names and label keys by Prometheus' rules, never ambiguous."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.series import InvalidName, parse_series, sanitise_label_key, sanitise_name, series_id

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

names = st.text(min_size=1, max_size=20)
labels = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=4)


def _sanitised_or_none(fn, text):
    try:
        return fn(text)
    except InvalidName:
        return None


@settings(max_examples=500)
@given(names, labels)
def test_any_input_gives_a_valid_id_that_parses_back_to_its_sanitised_parts(name, pairs):
    clean_name = _sanitised_or_none(sanitise_name, name)
    keys = {k: _sanitised_or_none(sanitise_label_key, k) for k in pairs}
    if clean_name is None or None in keys.values():
        with pytest.raises(InvalidName):
            series_id(name, pairs)
        return
    sid = series_id(name, pairs)
    got_name, got_labels = parse_series(sid)
    assert NAME.fullmatch(got_name) and got_name == clean_name
    assert all(LABEL_KEY.fullmatch(k) for k in got_labels)
    expected: dict[str, str] = {}
    for key, value in pairs.items():
        expected[keys[key]] = value
    assert got_labels == expected
    assert series_id(got_name, got_labels) == sid  # the format is canonical


@given(names, labels, names, labels)
def test_two_series_share_an_id_only_when_their_sanitised_parts_are_equal(n1, l1, n2, l2):
    try:
        a, b = series_id(n1, l1), series_id(n2, l2)
    except InvalidName:
        return
    assert (a == b) == (parse_series(a) == parse_series(b))


def test_a_name_that_looks_like_a_series_id_gets_its_own_id():
    # `{"name": "cpu{host=\"db-1\"}"}` once got the id of cpu with the label host=db-1.
    assert series_id('cpu{host="db-1"}') != series_id("cpu", {"host": "db-1"})
    assert series_id('cpu{host="db-1"}') == "cpu_host__db_1"


@pytest.mark.parametrize(("raw", "clean"), [
    ("cpu.stats_idle", "cpu_stats_idle"),            # Telegraf: dots become _
    ("my measurement_value", "my_measurement_value"),  # spaces become _
    ("docker_container_cpu_cpu usage", "docker_container_cpu_cpu_usage"),
    ("5xx_rate", "xx_rate"),                          # an invalid first character is dropped
    ("-up-", "up"),                                   # leading/trailing _ trimmed
    ("node:load1", "node:load1"),                     # colons are valid in names
])
def test_names_are_sanitised_as_telegrafs_prometheus_serializer_does(raw, clean):
    assert sanitise_name(raw) == clean


def test_label_keys_may_not_hold_colons_and_nothing_left_is_an_error():
    assert sanitise_label_key("a:b") == "a_b"
    with pytest.raises(InvalidName):
        sanitise_name("...")


def test_label_values_keep_any_text():
    value = 'C:\\temp\\"x"\ntwo'
    assert parse_series(series_id("up", {"path": value})) == ("up", {"path": value})
