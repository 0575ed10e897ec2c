"""The input formats of issue 17 on records recorded from the real clients (tests/fixtures/,
made by ``python -m tests.record_fixtures``), plus property tests: no parser raises, and a
bad line never costs the good ones."""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.series import parse_series
from vigil.streams.input_health import InputHealth, reason_class
from vigil.streams.parsers import (
    AutoParser,
    CollectdJsonParser,
    GraphiteParser,
    PutvalParser,
    TelegrafJsonParser,
    load_types_db,
    make_parser,
)
from vigil.streams.pipeline import decode_points, route
from vigil.streams.rates import CounterRates
from vigil.streams.records import ParseResult
from vigil.streams.remote_write import (
    STALE_NAN_BITS,
    RemoteWriteError,
    decode_write_request,
    encode_write_request,
    to_messages,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = 1_796_396_000_000  # just after the fixtures were recorded
CPU_IDLE_0 = 'cpu{host="vigil-test",plugin_instance="0",type_instance="idle"}'


def records(name: str) -> list[bytes]:
    return [r.encode() for r in json.loads((FIXTURES / f"{name}.json").read_text())]


def parse_all(parser, raws: list[bytes]) -> ParseResult:
    total = ParseResult()
    for raw in raws:
        result = parser.parse(raw, NOW)
        for s, t, v in zip(result.series, result.ts_ms, result.values, strict=True):
            total.add(s, t, v)
        total.rejects += result.rejects
        total.counters |= result.counters
    return total


# --------------------------------------------------------------------------- collectd


@pytest.mark.parametrize("fixture", ["collectd-json", "collectd-json-raw", "collectd-graphite",
                                     "collectd-graphite-rates", "collectd-graphite-tags",
                                     "collectd-command"])
def test_every_collectd_record_parses_into_the_same_series(fixture: str) -> None:
    if fixture == "collectd-command" and not load_types_db():
        pytest.skip("no collectd types.db (collectd-core installs it)")
    result = parse_all(make_parser("auto"), records(fixture))
    assert result.rejects == []
    names = {parse_series(s)[0] for s in result.series}
    assert {"cpu", "memory", "load_shortterm", "interface_if_octets_rx"} <= names
    assert 'memory{host="vigil-test",type_instance="used"}' in result.series
    assert 'interface_if_octets_rx{host="vigil-test",plugin_instance="lo"}' in result.series


def test_collectd_json_takes_its_rates_and_skips_the_unknown_first_reading() -> None:
    # collectd 5.12's write_kafka sends derive as rates (StoreRates true) and null first.
    raws = records("collectd-json")
    assert any(b'"values":[null' in r for r in raws)
    result = parse_all(CollectdJsonParser(), raws)
    assert result.counters == set() and result.rejects == []
    idle = [v for s, v in zip(result.series, result.values, strict=True) if s == CPU_IDLE_0]
    assert idle and all(0 <= v <= 150 for v in idle)  # jiffies per second


def test_collectd_json_raw_counters_become_rates_after_routing() -> None:
    result = parse_all(CollectdJsonParser(store_rates=False), records("collectd-json-raw"))
    assert CPU_IDLE_0 in result.counters
    assert 'memory{host="vigil-test",type_instance="used"}' not in result.counters  # a gauge
    series, ts, values, _ = decode_points(
        [m for _, m in route([result], 1).messages], counters := set())
    assert CPU_IDLE_0 in counters
    out_s, out_t, out_v, held = CounterRates().apply(series, ts, values, counters)
    idle = [v for s, v in zip(out_s, out_v, strict=True) if s == CPU_IDLE_0]
    raw = [v for s, v in zip(series, values, strict=True) if s == CPU_IDLE_0]
    assert min(raw) > 1000 and len(idle) == len(raw) - 1 and held >= len(result.counters)
    assert all(0 <= v <= 150 for v in idle)


def test_collectd_graphite_and_tags_name_series_as_json_does() -> None:
    json_series = set(parse_all(CollectdJsonParser(), records("collectd-json-raw")).series)
    plain = set(parse_all(GraphiteParser(), records("collectd-graphite")).series)
    tagged = set(parse_all(GraphiteParser(), records("collectd-graphite-tags")).series)
    assert plain == tagged == json_series


def test_putval_marks_derive_sources_as_counters() -> None:
    types = {"cpu": [("value", "derive")], "load": [("shortterm", "gauge"),
                                                   ("midterm", "gauge"), ("longterm", "gauge")]}
    result = parse_all(PutvalParser(types=types), records("collectd-command"))
    assert result.rejects == [] and CPU_IDLE_0 in result.counters
    assert 'load_midterm{host="vigil-test"}' in result.series


def test_graphite_templates_and_plain_paths() -> None:
    parser = GraphiteParser(["servers.* .host.measurement.field", "app.* .measurement*"])
    result = parser.parse(b"servers.web1.cpu.idle 97 1796395000\n"
                          b"app.http.requests 5 1796395000\nother.thing 1\n", NOW)
    assert result.series == ['cpu_idle{host="web1"}', "http_requests", "other_thing"]
    assert result.ts_ms[2] == NOW  # no timestamp: now


# --------------------------------------------------------------------------- Telegraf JSON

TELEGRAF = (b'{"fields":{"usage_idle":97.5,"usage_user":2,"online":true,"state":"up"},'
            b'"name":"cpu","tags":{"cpu":"cpu-total","host":"db 1"},"timestamp":1796395000}')


def test_telegraf_json_serializer_one_series_per_numeric_field() -> None:
    result = AutoParser().parse(TELEGRAF, NOW)
    assert result.series == ['cpu_usage_idle{cpu="cpu-total",host="db 1"}',
                             'cpu_usage_user{cpu="cpu-total",host="db 1"}',
                             'cpu_online{cpu="cpu-total",host="db 1"}']
    assert result.values == [97.5, 2.0, 1.0] and result.ts_ms == [1_796_395_000_000] * 3


def test_telegraf_json_batch_keeps_good_metrics() -> None:
    batch = b'{"metrics":[' + TELEGRAF + b',{"name":"mem","fields":{},"timestamp":1}]}'
    result = TelegrafJsonParser().parse(batch, NOW)
    assert len(result) == 3 and [r.reason for r in result.rejects] == [
        "item 1: timestamp 1 is before 2000-01-01"]


def test_auto_detection_picks_each_format() -> None:
    auto = AutoParser()
    assert auto.pick(records("collectd-json")[0]) is auto.collectd_parser
    assert auto.pick(records("collectd-graphite")[0]) is auto.graphite_parser
    assert auto.pick(records("collectd-graphite-tags")[0]) is auto.graphite_parser
    assert isinstance(auto.pick(records("collectd-command")[0]), PutvalParser)
    assert auto.pick(TELEGRAF) is auto.telegraf_parser
    assert auto.pick(b"cpu,host=a usage=1 1796395000000000000") is auto.influx_parser
    assert auto.pick(b'{"name":"up","value":1,"timestamp":1796395000}') is auto.json_parser


def test_boolean_labels_are_true_false() -> None:
    raw = b'{"name":"up","value":1,"timestamp":1796395000,"labels":{"tls":true,"ha":false}}'
    assert make_parser("json").parse(raw, NOW).series == ['up{ha="false",tls="true"}']


# --------------------------------------------------------------------------- remote_write


def remote_write_fixture() -> list[bytes]:
    return [base64.b64decode(b) for b in json.loads(
        (FIXTURES / "prometheus-remote-write.json").read_text())]


def test_prometheus_remote_write_fixture_becomes_points_with_counters() -> None:
    known: dict[str, int] = {}
    parser = make_parser("auto")
    result = ParseResult()
    for body in remote_write_fixture():
        out = to_messages(decode_write_request(body, 1 << 24, 10_000), known_types=known)
        for message in out.messages:
            parsed = parser.parse(message, NOW)
            assert parsed.rejects == []
            result.series += parsed.series
            result.counters |= parsed.counters
    assert known.get("node_cpu_seconds_total") == 1  # COUNTER, from a metadata request
    assert known.get("node_load1") == 2  # GAUGE
    names = {parse_series(s)[0] for s in result.series}
    assert {"node_load1", "node_cpu_seconds_total", "node_memory_MemFree_bytes"} <= names
    counter_names = {parse_series(s)[0] for s in result.counters}
    assert "node_cpu_seconds_total" in counter_names and "node_load1" not in counter_names


def test_stale_markers_are_counted_not_sent() -> None:
    stale = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
    body = encode_write_request([({"__name__": "up"}, [(1.0, NOW), (stale, NOW + 15_000)]),
                                 ({"__name__": "x"}, [(math.nan, NOW)])])
    out = to_messages(decode_write_request(body, 1 << 20, 10))
    assert (out.samples, out.stale) == (2, 1)
    parsed = [make_parser("auto").parse(m, NOW + 20_000) for m in out.messages]
    assert [p.series for p in parsed] == [["up"], []] and [r.reason for r in parsed[1].rejects] == [
        "item 0: value is NaN"]  # a plain NaN is bad data: dead-lettered like any input


def test_metadata_decides_counters_before_suffixes() -> None:
    body = encode_write_request(
        [({"__name__": "a_total"}, [(1.0, NOW)]), ({"__name__": "g_total"}, [(1.0, NOW)]),
         ({"__name__": "h_bucket", "le": "1"}, [(1.0, NOW)]), ({"__name__": "c"}, [(1.0, NOW)])],
        counters={"g_total": 2, "h": 3, "c": 1})
    messages = to_messages(decode_write_request(body, 1 << 20, 10)).messages
    kinds = {p["name"]: p.get("type") for m in messages for p in orjson.loads(m)["points"]}
    assert kinds == {"a_total": "counter", "g_total": None, "h_bucket": "counter",
                     "c": "counter"}


def test_a_series_always_gets_the_same_key() -> None:
    def keys(order: list[int]) -> dict[str, bytes]:
        rows = [({"__name__": "m", "host": f"h{i}"}, [(1.0, NOW)]) for i in order]
        out = to_messages(decode_write_request(encode_write_request(rows), 1 << 20, 100))
        return {parse_series(s)[1]["host"]: key for key, m in zip(out.keys, out.messages,
                                                                 strict=True)
                for s in make_parser("json").parse(m, NOW).series}

    first, second = keys(list(range(50))), keys(list(range(49, -1, -1)))
    assert first == second and len(set(first.values())) > 10


def test_remote_write_bounds_and_garbage() -> None:
    body = encode_write_request([({"__name__": f"m{i}"}, [(1.0, NOW)]) for i in range(5)])
    with pytest.raises(RemoteWriteError, match="over the limit of 4") as exc:
        decode_write_request(body, 1 << 20, 4)
    assert exc.value.status == 400
    with pytest.raises(RemoteWriteError, match="over the limit") as exc:
        decode_write_request(body, 10, 100)
    assert exc.value.status == 413
    with pytest.raises(RemoteWriteError, match="not snappy") as exc:
        decode_write_request(b"\xff\xff\xff\xff\xffgarbage", 1 << 20, 100)
    assert exc.value.status == 400


# --------------------------------------------------------------------------- rates, health


def test_counter_reset_is_not_a_rate_spike() -> None:
    rates = CounterRates()
    t = np.arange(6, dtype=np.int64) * 10_000
    v = np.array([100.0, 200.0, 300.0, 5.0, 105.0, 205.0])  # the process restarted at step 3
    s, ts, out, held = rates.apply(["c"] * 6, t, v, {"c"})
    assert out.tolist() == [10.0, 10.0, 10.0, 10.0] and ts.tolist() == [
        10_000, 20_000, 40_000, 50_000]
    assert held == 2 and rates.resets == 1
    # The next batch continues from the previous sample; a replayed one is skipped.
    s, ts, out, held = rates.apply(["c", "c"], np.array([50_000, 60_000]),
                                   np.array([205.0, 305.0]), {"c"})
    assert out.tolist() == [10.0] and held == 1


def test_rate_metrics_patterns_mark_counters_by_name() -> None:
    rates = CounterRates(["*_octets*"])
    s, ts, out, held = rates.apply(['net_octets_rx{host="a"}'] * 2 + ["load"],
                                   np.array([0, 1000, 0]), np.array([0.0, 500.0, 1.0]))
    assert s == ["load", 'net_octets_rx{host="a"}'] and out.tolist() == [1.0, 500.0]


def test_mostly_dead_lettered_topic_is_degraded_and_logged_once(caplog) -> None:
    health = InputHealth("influx", window_s=60, min_records=10, log_every_s=60)
    for i in range(30):
        health.record("collectd", 0, ["item 0: missing field 'name'"], now_s=i * 0.1)
        health.record("good", 3, [], now_s=i * 0.1)
    with caplog.at_level(logging.ERROR, logger="vigil.inputs"):
        found = health.warn(now_s=5)
        health.warn(now_s=6)  # rate-limited: no second line
    assert set(found) == {"collectd"} and found["collectd"]["dead_lettered_ratio"] == 1.0
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "collectd" in line and "format influx" in line and "missing field (30)" in line
    assert health.degraded(now_s=100) == {}  # the window has moved on


def test_reason_classes_are_few() -> None:
    reasons = ["invalid JSON: unexpected character", "item 2: value is NaN",
               "line 3: timestamp 1 is before 2000-01-01", "parser error: KeyError: 'x'"]
    assert [reason_class(r) for r in reasons] == [
        "invalid JSON", "value NaN or infinite", "timestamp", "parser error"]


# --------------------------------------------------------------------------- properties

PARSERS = [CollectdJsonParser(), GraphiteParser(), PutvalParser(types={}),
           TelegrafJsonParser(), AutoParser()]


UTF8 = st.characters(codec="utf-8")


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(UTF8, max_size=200).map(str.encode))
def test_new_parsers_never_raise(raw: bytes) -> None:
    for parser in PARSERS:
        result = parser.parse(raw, NOW)
        assert len(result.series) == len(result.ts_ms) == len(result.values)
        # The guard turns a parser bug into a "parser error" reject: there must be none.
        assert not [r for r in result.rejects if r.reason.startswith("parser error")]


GOOD = {
    "graphite": b"collectd.h.load.load.shortterm 0.5 1796395000",
    "putval": b"PUTVAL h/load/load interval=1 1796395000:0.5",
}


@settings(max_examples=100, deadline=None)
@given(junk=st.text(st.characters(blacklist_characters="\n\r", codec="utf-8"), max_size=60),
       fmt=st.sampled_from(sorted(GOOD)))
def test_a_bad_line_keeps_the_good_ones(junk: str, fmt: str) -> None:
    parser = make_parser(fmt)
    raw = GOOD[fmt] + b"\n" + junk.encode("utf-8", "surrogatepass") + b"\n" + GOOD[fmt]
    result = parser.parse(raw, NOW)
    assert len(result) >= 2  # the two good lines, whatever the middle one is


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                                 st.text(max_size=5), st.integers(-10, 10**12)),
                       min_size=1, max_size=4))
def test_collectd_bad_data_sources_keep_the_good_ones(values: list) -> None:
    good = {"values": [1.5], "dstypes": ["gauge"], "dsnames": ["value"], "time": 1796395000,
            "host": "h", "plugin": "load", "type": "load", "plugin_instance": "",
            "type_instance": ""}
    bad = {**good, "values": values, "dstypes": ["gauge"] * len(values),
           "dsnames": [f"d{i}" for i in range(len(values))]}
    raw = json.dumps([good, bad, good]).encode()
    result = CollectdJsonParser().parse(raw, NOW)
    assert result.series[:1] == ['load{host="h"}'] and result.series.count('load{host="h"}') == 2


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(UTF8, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(UTF8, max_size=6),
                                                                inner, max_size=3),
    max_leaves=8)
KEYS = ["values", "dstypes", "dsnames", "time", "interval", "host", "plugin", "plugin_instance",
        "type", "type_instance", "fields", "name", "tags", "timestamp", "metrics"]


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8), listed=st.booleans())
def test_json_shaped_garbage_is_rejected_cleanly(doc: dict, listed: bool) -> None:
    raw = json.dumps([doc] if listed else doc).encode()
    for parser in (CollectdJsonParser(), CollectdJsonParser(store_rates=False),
                   TelegrafJsonParser(), AutoParser()):
        result = parser.parse(raw, NOW)
        assert not [r for r in result.rejects if r.reason.startswith("parser error")], (
            result.rejects)


class _MemoryStore:
    """The state store's interface, in memory (states and held points)."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.held: dict[str, bytes | None] = {}

    async def load(self, series, resumed: bool = False):
        return [self.states.get(s) for s in series]

    async def load_held(self, series):
        return [self.held.get(s) for s in series]

    async def save(self, series, states, points: int = 0, held=None) -> None:
        self.states.update(zip(series, states, strict=True))
        if held is not None:
            self.held.update(zip(series, held, strict=True))


def _counter_steps(order: list[list[int]], lateness: int) -> tuple[list, list, int]:
    """Feed a counter growing 600 a minute (10/s) in batches of sample numbers ``order``:
    the steps' times and values the detector got, and the samples that gave no rate."""
    import asyncio

    from vigil.streams.pipeline import DetectionPipeline

    pipeline = DetectionPipeline(_MemoryStore(), lateness_steps=lateness, rates=CounterRates())
    t0 = 1_700_006_400_000
    times, values, held = [], [], 0

    async def run() -> None:
        nonlocal held
        for batch in order:
            ts = np.array([t0 + 60_000 * k for k in batch], np.int64)
            out = await pipeline.process(["c"] * len(batch), ts, 600.0 * np.array(batch, float),
                                         counters={"c"})
            await pipeline.save(out)
            times.extend(out.results.steps.ts_ms.tolist())
            values.extend(out.results.steps.value.tolist())
            held += out.counter_points_held

    asyncio.run(run())
    return times, values, held


def test_counter_samples_out_of_order_within_the_lateness_all_become_rates() -> None:
    """An unkeyed producer's counter: samples two steps out of order. Rates come after the
    hold-back, so every sample but the first gives a rate, as in time order."""
    in_order = [[k] for k in range(40)]
    shuffled = [[k + 1 - j] for k in range(0, 40, 2) for j in (0, 1)]  # pairs reversed
    times, values, held = _counter_steps(shuffled, lateness=3)
    assert (times, values, held) == _counter_steps(in_order, lateness=3)
    assert held == 1 and values == [10.0] * len(values) and len(values) >= 35
    # Without a lateness the reversed samples are skipped (their step has passed).
    _, _, held0 = _counter_steps(shuffled, lateness=0)
    assert held0 == 21  # the first sample, and the 20 that came after a later one
