"""Raw Kafka message bytes into points: JSON, Prometheus-adapter JSON, Influx line protocol,
collectd (JSON and PUTVAL), Graphite plaintext and Telegraf's JSON.

Every parser has one method, ``parse(raw, now_ms) -> ParseResult``, and never raises on bad
input: whatever it cannot use becomes a :class:`~vigil.streams.records.Reject` with a short
reason meant for a person reading the dead-letter topic. In a batch record (a JSON list, a
``points``/``metrics`` envelope, NDJSON, several Influx lines) the good points are kept and
each bad point is rejected on its own, its reason prefixed with where it was
(``item 3: ...`` is a 0-based list index, ``line 2: ...`` a 1-based line number).

>>> parser = make_parser("auto")
>>> now = 1_714_564_800_000  # 2024-05-01T12:00:00Z
>>> result = parser.parse(b'cpu,host=db-1 usage_idle=97.5,usage_user=2i', now)
>>> list(zip(result.series, result.values))
[('cpu_usage_idle{host="db-1"}', 97.5), ('cpu_usage_user{host="db-1"}', 2.0)]
>>> parser.parse(b'{"name": "up", "value": "NaN", "timestamp": 1714564800}', now).rejects
[Reject(reason='value is NaN', raw=b'{"name": "up", "value": "NaN", "timestamp": 1714564800}')]
"""

from __future__ import annotations

import fnmatch
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from vigil.series import InvalidName, label_value, series_id
from vigil.streams.records import ParseResult, Reject
from vigil.times import iso_to_ms

__all__ = [
    "FORMATS",
    "AutoParser",
    "CollectdJsonParser",
    "GraphiteParser",
    "GraphiteTemplate",
    "PutvalParser",
    "TelegrafJsonParser",
    "InfluxLineParser",
    "InvalidInput",
    "JsonParser",
    "Parser",
    "PrometheusAdapterParser",
    "TimestampPolicy",
    "make_parser",
]


class InvalidInput(ValueError):
    """A value that cannot be used; the message is the reject reason shown to people."""


class Parser(Protocol):
    """What every parser looks like to the stream: bytes in, points and rejects out."""

    def parse(self, raw: bytes, now_ms: int) -> ParseResult: ...


def _show(value: object, limit: int = 40) -> str:
    """A short printable form of an offending value for a reject reason.

    >>> _show("abc"), _show(1.5), _show("x" * 50)
    ("'abc'", '1.5', "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...")
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _span(ms: float) -> str:
    """A rough human duration, used to say how far off a timestamp is.

    >>> _span(26_000 * 86_400_000), _span(3 * 3_600_000), _span(90_000), _span(1e300)
    ('26000 days', '3 hours', '90 seconds', 'over 1000000 days')
    """
    ms = abs(ms)
    if ms > 1_000_000 * 86_400_000:  # a garbage epoch would otherwise print 300 digits
        return "over 1000000 days"
    if ms >= 2 * 86_400_000:
        return f"{ms // 86_400_000:.0f} days"
    if ms >= 2 * 3_600_000:
        return f"{ms // 3_600_000:.0f} hours"
    if ms >= 2 * 60_000:
        return f"{ms // 60_000:.0f} minutes"
    return f"{ms / 1000:.0f} seconds"


# --------------------------------------------------------------------------- timestamps

_Y2K_MS = 946_684_800_000  # 2000-01-01T00:00:00Z; anything earlier is a unit mix-up or garbage
_UNIT_MS = {"s": 1000, "ms": 1, "us": 0.001, "ns": 0.000001}
_UNIT_WORD = {"s": "seconds", "ms": "ms", "us": "µs", "ns": "ns"}


def _guess_unit(magnitude: float) -> str:
    """The unit an epoch of this size is most likely in (valid for roughly 1973–5138).

    >>> [_guess_unit(x) for x in (1.7e9, 1.7e12, 1.7e15, 1.7e18)]
    ['s', 'ms', 'us', 'ns']
    """
    if magnitude < 1e11:
        return "s"
    if magnitude < 1e14:
        return "ms"
    if magnitude < 1e17:
        return "us"
    return "ns"


@dataclass(frozen=True)
class TimestampPolicy:
    """How to read timestamps and which ones to believe; shared by all parsers.

    ``unit`` says what a numeric epoch counts: ``"s"``, ``"ms"``, ``"us"``, ``"ns"`` or
    ``"auto"`` (by magnitude). Strings holding a number are epochs too; other strings are
    ISO-8601. Anything before 2000-01-01, more than ``max_past_s`` old or more than
    ``max_future_s`` ahead of ``now_ms`` is rejected.

    >>> policy = TimestampPolicy()
    >>> now = 1_714_564_800_000
    >>> [policy.to_ms(t, now) for t in (1714564800, 1714564800.25, "2024-05-01T12:00:00Z")]
    [1714564800000, 1714564800250, 1714564800000]
    >>> try:
    ...     TimestampPolicy(unit="ms").to_ms(1714564800, now)
    ... except InvalidInput as exc:
    ...     print(exc)
    timestamp 1714564800 is before 2000-01-01 (seconds given where ms expected?)
    """

    #: Clock skew allowed: a point from further ahead would move its series' watermark past
    #: every real point to come (they would all be dropped as late).
    max_future_s: float = 300
    max_past_s: float = 10 * 365 * 86_400
    unit: str = "auto"
    _future_ms: float = field(init=False, repr=False, compare=False)
    _past_ms: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unit != "auto" and self.unit not in _UNIT_MS:
            raise ValueError(f"unit must be one of auto, s, ms, us, ns; got {self.unit!r}")
        object.__setattr__(self, "_future_ms", self.max_future_s * 1000)
        object.__setattr__(self, "_past_ms", self.max_past_s * 1000)

    def with_unit(self, unit: str) -> TimestampPolicy:
        """The same limits, reading numeric epochs in another unit."""
        return TimestampPolicy(self.max_future_s, self.max_past_s, unit)

    def to_ms(self, value: object, now_ms: int) -> int:
        """``value`` (number, numeric string or ISO-8601 string) as checked UTC epoch ms.

        Raises :class:`InvalidInput` whose message is the reject reason.
        """
        kind = type(value)
        if kind is int or kind is float:
            return self.epoch_to_ms(value, now_ms)
        if kind is str:
            return self._str_to_ms(value, now_ms)
        if value is None:
            raise InvalidInput("timestamp is null")
        raise InvalidInput(f"unsupported timestamp type: {kind.__name__}")

    def epoch_to_ms(self, epoch: float, now_ms: int, shown: str | None = None) -> int:
        """A numeric epoch in this policy's unit as checked epoch ms (raises InvalidInput)."""
        if epoch != epoch:
            raise InvalidInput("timestamp is NaN")
        if epoch in (math.inf, -math.inf):
            raise InvalidInput("timestamp is infinite")
        unit = self.unit if self.unit != "auto" else _guess_unit(abs(epoch))
        if type(epoch) is int:
            # Integer maths keeps ns/µs epochs exact (a float has only ~16 digits).
            if unit == "s":
                ms = epoch * 1000
            elif unit == "ms":
                ms = epoch
            else:
                ms = epoch // (1000 if unit == "us" else 1_000_000)
        else:
            scaled = epoch * _UNIT_MS[unit]
            if scaled in (math.inf, -math.inf):  # e.g. 1e307 seconds overflows when scaled
                raise InvalidInput(f"timestamp {shown or repr(epoch)} is out of range")
            ms = round(scaled)
        return self.check(ms, now_ms, shown if shown is not None else repr(epoch), epoch)

    def check(self, ms: int, now_ms: int, shown: str, epoch: float | None = None) -> int:
        """Return ``ms`` if believable, else raise InvalidInput naming ``shown``."""
        if ms < _Y2K_MS:
            raise InvalidInput(f"timestamp {shown} is before 2000-01-01{self._hint(epoch)}")
        if ms > now_ms + self._future_ms:
            raise InvalidInput(
                f"timestamp {shown} is {_span(ms - now_ms)} in the future "
                f"(clock skew allowed: {_span(self._future_ms)}){self._hint(epoch)}"
            )
        if ms < now_ms - self._past_ms:
            raise InvalidInput(
                f"timestamp {shown} is {_span(now_ms - ms)} in the past "
                f"(max {_span(self._past_ms)})"
            )
        return ms

    def _hint(self, epoch: float | None) -> str:
        """A guess at the mistake when a fixed unit disagrees with the epoch's magnitude."""
        if epoch is None or self.unit == "auto":
            return ""
        likely = _guess_unit(abs(epoch))
        if likely == self.unit:
            return ""
        return f" ({_UNIT_WORD[likely]} given where {_UNIT_WORD[self.unit]} expected?)"

    def _str_to_ms(self, text: str, now_ms: int) -> int:
        stripped = text.strip()
        if not stripped:
            raise InvalidInput("timestamp is an empty string")
        # An ISO date has '-' at index 4 ("2024-..."); no epoch in a sane range does.
        if len(stripped) >= 10 and stripped[4] == "-":
            try:
                ms = iso_to_ms(stripped)
            except ValueError:
                raise InvalidInput(f"invalid ISO-8601 timestamp: {_show(text)}") from None
            return self.check(ms, now_ms, stripped)
        try:
            epoch: float = int(stripped)
        except ValueError:
            try:
                epoch = float(stripped)
            except ValueError:
                raise InvalidInput(
                    f"timestamp is neither an epoch nor ISO-8601: {_show(text)}"
                ) from None
        return self.epoch_to_ms(epoch, now_ms, stripped)


# --------------------------------------------------------------------------- values


def _to_value(raw: object) -> float:
    """A JSON value as a finite float: numbers and numeric strings; raises InvalidInput.

    >>> _to_value(3), _to_value("9876543210"), _to_value(" 1.5")
    (3.0, 9876543210.0, 1.5)
    >>> try:
    ...     _to_value(True)
    ... except InvalidInput as exc:
    ...     print(exc)
    value is a boolean, not a number: True
    """
    kind = type(raw)
    if kind is float:
        value: float = raw
    elif kind is int:
        value = float(raw)  # orjson only yields ints that fit 64 bits: no overflow possible
    elif kind is str:
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"value is not numeric: {_show(raw)}") from None
    elif kind is bool:
        raise InvalidInput(f"value is a boolean, not a number: {raw}")
    elif raw is None:
        raise InvalidInput("value is null")
    else:
        raise InvalidInput(f"value is not numeric: {kind.__name__} {_show(raw)}")
    # x - x is 0.0 for every finite float and NaN for NaN and ±inf: one cheap test.
    if value - value != 0.0:
        raise InvalidInput("value is NaN" if value != value else "value is infinite")
    return value


# --------------------------------------------------------------------------- JSON

_MISSING = object()


def _dumps(item: object) -> bytes:
    """One batch item back to bytes, for its own Reject (whatever the item)."""
    try:
        return orjson.dumps(item)
    except (TypeError, orjson.JSONEncodeError):
        try:
            return repr(item).encode()
        except (RecursionError, ValueError, MemoryError):
            return b"<item nested too deep to print>"


def _unexpected(exc: Exception) -> str:
    """The reason for an item or line the parser itself failed on (not bad input as such)."""
    return f"parser error: {type(exc).__name__}: {str(exc)[:200]}"


class _GuardedParser(ABC):
    """``parse`` for parsers that fill a result in ``_parse_into``: a parser bug (any
    unexpected exception) dead-letters the record instead of killing the stream."""

    def parse(self, raw: bytes, now_ms: int) -> ParseResult:
        result = ParseResult()
        try:
            self._parse_into(raw, now_ms, result)
        except Exception as exc:
            return _internal_error(raw, exc)
        return result

    @abstractmethod
    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        """Add the points and rejects of ``raw`` to ``result``."""


class JsonParser(_GuardedParser):
    """JSON points: one object, a list of objects, ``{"points": [...]}``/``{"metrics": [...]}``,
    or newline-delimited objects.

    A point is ``{"name": ..., "value": ..., "timestamp": ..., "labels": {...}}`` (field names
    configurable); ``"type": "counter"`` marks a cumulative counter (turned into a rate
    before detection). Labels come from the ``labels_field`` object plus the top-level
    ``label_fields``; label values are turned into strings and null ones dropped. A
    ``__name__`` label is dropped, but serves as the name when the name field is missing.

    >>> parser = JsonParser(label_fields=("host",))
    >>> result = parser.parse(
    ...     b'{"name": "node_load1", "value": 0.5, "timestamp": 1714564800000, "host": "db-1"}',
    ...     now_ms=1_714_564_800_000,
    ... )
    >>> result.series, result.ts_ms, result.values
    (['node_load1{host="db-1"}'], [1714564800000], [0.5])
    """

    def __init__(
        self,
        name_field: str = "name",
        value_field: str = "value",
        timestamp_field: str = "timestamp",
        labels_field: str = "labels",
        label_fields: tuple[str, ...] = (),
        default_name: str | None = None,
        timestamps: TimestampPolicy | None = None,
    ) -> None:
        self.name_field = name_field
        self.value_field = value_field
        self.timestamp_field = timestamp_field
        self.labels_field = labels_field
        self.label_fields = tuple(label_fields)
        self.default_name = default_name
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy()
        self._series_ids: dict[tuple, str] = {}

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        if not raw or raw.isspace():
            result.rejects.append(Reject("empty record", bytes(raw)))
            return
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            lines = _ndjson_lines(raw)
            if lines is None:
                result.rejects.append(Reject(f"invalid JSON: {exc}", bytes(raw)))
                return
            for lineno, line in lines:
                try:
                    line_doc = orjson.loads(line)
                except orjson.JSONDecodeError as line_exc:
                    result.rejects.append(Reject(f"line {lineno}: invalid JSON: {line_exc}", line))
                    continue
                self._document(line_doc, line, f"line {lineno}: ", now_ms, result)
            return
        self._document(doc, bytes(raw), "", now_ms, result)

    def _document(
        self, doc: Any, raw: bytes, where: str, now_ms: int, result: ParseResult
    ) -> None:
        """One parsed JSON document: a point, a list of points or an envelope around a list."""
        if type(doc) is dict:
            items = doc.get("points")
            if items is None:
                items = doc.get("metrics")
            if type(items) is not list:
                try:
                    self._add(result, *self._point(doc, now_ms))
                except InvalidInput as exc:
                    result.rejects.append(Reject(f"{where}{exc}", raw))
                except Exception as exc:  # noqa: BLE001 - costs this document only
                    result.rejects.append(Reject(f"{where}{_unexpected(exc)}", raw))
                return
        elif type(doc) is list:
            items = doc
        else:
            result.rejects.append(
                Reject(f"{where}not a JSON object or list: {type(doc).__name__}", raw)
            )
            return
        if not items:
            result.rejects.append(Reject(f"{where}empty batch", raw))
            return
        point = self._point
        add = self._add
        for index, item in enumerate(items):
            try:
                add(result, *point(item, now_ms))
            except InvalidInput as exc:
                result.rejects.append(Reject(f"{where}item {index}: {exc}", _dumps(item)))
            except Exception as exc:  # noqa: BLE001 - one item's failure costs that item only
                result.rejects.append(
                    Reject(f"{where}item {index}: {_unexpected(exc)}", _dumps(item))
                )

    @staticmethod
    def _add(result: ParseResult, series: str, ts_ms: int, value: float, counter: bool) -> None:
        result.add(series, ts_ms, value)
        if counter:
            result.counters.add(series)

    def _point(self, item: Any, now_ms: int) -> tuple[str, int, float, bool]:
        """(series, ts_ms, value, is a counter) of one JSON object; raises InvalidInput."""
        if type(item) is not dict:
            raise InvalidInput(f"not a JSON object: {type(item).__name__}")
        labels: dict[str, str] = {}
        label_obj = item.get(self.labels_field)
        if label_obj is not None:
            if type(label_obj) is not dict:
                raise InvalidInput(
                    f"field '{self.labels_field}' is not an object: {type(label_obj).__name__}"
                )
            for key, val in label_obj.items():
                if val is not None and key != "__name__":
                    labels[key] = val if type(val) is str else label_value(val)
        for key in self.label_fields:
            val = item.get(key)
            if val is not None:
                labels[key] = val if type(val) is str else label_value(val)

        name = item.get(self.name_field)
        if name is None:
            name = label_obj.get("__name__") if label_obj else None
            if name is None:
                name = self.default_name
                if name is None:
                    raise InvalidInput(f"missing field '{self.name_field}'")
        if type(name) is not str or not name:
            raise InvalidInput(f"name is not a non-empty string: {_show(name)}")

        value = item.get(self.value_field, _MISSING)
        if value is _MISSING:
            raise InvalidInput(f"missing field '{self.value_field}'")
        stamp = item.get(self.timestamp_field, _MISSING)
        if stamp is _MISSING:
            raise InvalidInput(f"missing field '{self.timestamp_field}'")
        number = _to_value(value)
        ts_ms = self.timestamps.to_ms(stamp, now_ms)
        # The same few series arrive over and over: remember their canonical ids.
        key = (name, *labels.items()) if labels else name
        series = self._series_ids.get(key)
        if series is None:
            if len(self._series_ids) >= _SERIES_CACHE:
                self._series_ids.clear()
            series = self._series_ids[key] = _series_id(name, labels)
        kind = item.get("type")
        return series, ts_ms, number, kind == "counter"


def _text_lines(raw: bytes, result: ParseResult) -> list[tuple[int, str]]:
    """The record's non-blank, non-comment lines with their 1-based numbers, stripped; an
    empty record is rejected in ``result``.

    >>> r = ParseResult(); _text_lines(b"# c\\n a 1 \\n\\nb 2", r), r.rejects
    ([(2, 'a 1'), (4, 'b 2')], [])
    """
    text = bytes(raw).decode("utf-8", errors="replace")
    lines = [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        result.rejects.append(Reject("empty record", bytes(raw)))
    return lines


def _series_id(name: str, labels: dict | None) -> str:
    """The canonical id (:func:`vigil.series.series_id`: names and keys sanitised)."""
    try:
        return series_id(name, labels)
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


_SERIES_CACHE = 100_000  # canonical ids a parser remembers before starting afresh


def _ndjson_lines(raw: bytes) -> list[tuple[int, bytes]] | None:
    """Numbered non-blank lines if ``raw`` looks like newline-delimited JSON, else None.

    It does when there are several non-blank lines and the first parses on its own; a single
    broken document spread over lines then stays one reject instead of one per line.
    """
    if b"\n" not in raw:
        return None
    lines = [(n, line.strip()) for n, line in enumerate(bytes(raw).split(b"\n"), 1)]
    lines = [(n, line) for n, line in lines if line]
    if len(lines) < 2:
        return None
    try:
        orjson.loads(lines[0][1])
    except orjson.JSONDecodeError:
        return None
    return lines


class PrometheusAdapterParser(JsonParser):
    """JSON as written by Telefonica's prometheus-kafka-adapter.

    ``{"timestamp": "2024-05-01T12:00:00Z", "value": "0.5", "name": "up",
    "labels": {"__name__": "up", "job": "node"}}`` — the value is a string (possibly ``"NaN"``,
    which is rejected); one sample per message, a list of them, or several newline-separated.
    These are exactly :class:`JsonParser`'s default field names, so this only pins them.

    >>> sample = (b'{"timestamp": "2024-05-01T12:00:00Z", "value": "9876543210", "name": "up",'
    ...           b' "labels": {"__name__": "up", "label1": "value1"}}')
    >>> result = PrometheusAdapterParser().parse(sample, now_ms=1_714_564_800_000)
    >>> result.series, result.ts_ms, result.values
    (['up{label1="value1"}'], [1714564800000], [9876543210.0])
    """

    def __init__(self, timestamps: TimestampPolicy | None = None) -> None:
        super().__init__(timestamps=timestamps)


# --------------------------------------------------------------------------- Influx

_INFLUX_BOOLS = {
    "t": 1.0, "T": 1.0, "true": 1.0, "True": 1.0, "TRUE": 1.0,
    "f": 0.0, "F": 0.0, "false": 0.0, "False": 0.0, "FALSE": 0.0,
}  # fmt: skip
# What a backslash escapes in measurement, tag and field keys/values. Before any other character
# it is a literal backslash, as in InfluxDB: `my\m` and `my\\m` both mean the name my\m.
_NAME_ESCAPES = ", =\\"
_STRING_FIELD = None  # marks a quoted string field among (key, token) pairs


class _LineScanner:
    """Character-level reader for lines with escapes or quoted strings (the rare, slow path)."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def read(self, stops: str) -> str:
        """Read up to an unescaped char in ``stops``; ``\\x`` is ``x`` for escapable ``x``."""
        text, pos, end = self.text, self.pos, len(self.text)
        out: list[str] = []
        while pos < end:
            char = text[pos]
            if char == "\\" and pos + 1 < end and text[pos + 1] in _NAME_ESCAPES:
                out.append(text[pos + 1])
                pos += 2
                continue
            if char in stops:
                break
            out.append(char)
            pos += 1
        self.pos = pos
        return "".join(out)

    def skip_quoted(self) -> None:
        """Step over a double-quoted string field (``\\"`` and ``\\\\`` inside)."""
        text, pos, end = self.text, self.pos + 1, len(self.text)
        while pos < end:
            char = text[pos]
            if char == "\\":
                pos += 2
            elif char == '"':
                self.pos = pos + 1
                return
            else:
                pos += 1
        raise InvalidInput("unterminated string field")

    def split_line(self) -> tuple[str, list[tuple[str, str]], list[tuple[str, str | None]], str]:
        """(measurement, tags, fields, timestamp) with escapes resolved."""
        measurement = self.read(", ")
        tags: list[tuple[str, str]] = []
        while self.peek() == ",":
            self.pos += 1
            key = self.read("=, ")
            if self.peek() != "=":
                raise InvalidInput(f"invalid tag {_show(key)} (expected key=value)")
            self.pos += 1
            tags.append((key, self.read(", ")))
        if self.peek() != " ":
            raise InvalidInput("missing fields")
        while self.peek() == " ":
            self.pos += 1
        fields: list[tuple[str, str | None]] = []
        while True:
            key = self.read("=, ")
            if self.peek() != "=":
                raise InvalidInput(f"invalid field {_show(key)} (expected key=value)")
            self.pos += 1
            if self.peek() == '"':
                self.skip_quoted()
                fields.append((key, _STRING_FIELD))
                if self.peek() not in ("", ",", " "):
                    raise InvalidInput(f"unexpected text after string field {_show(key)}")
            else:
                fields.append((key, self.read(", ")))
            if self.peek() != ",":
                break
            self.pos += 1
        return measurement, tags, fields, self.text[self.pos :].strip()


def _influx_number(key: str, token: str) -> float:
    """One unquoted Influx field value (float, ``12i``, ``12u`` or boolean) as a float.

    >>> [_influx_number("x", t) for t in ("1.5", "-12i", "12u", "true", "F", "1e3")]
    [1.5, -12.0, 12.0, 1.0, 0.0, 1000.0]
    """
    if not token:
        raise InvalidInput(f"field {_show(key)} has no value")
    last = token[-1]
    if last == "i" or last == "u":
        try:
            number = int(token[:-1])
        except ValueError:
            raise InvalidInput(f"invalid integer field {key}={token}") from None
        if last == "u" and number < 0:
            raise InvalidInput(f"negative unsigned field {key}={token}")
        return float(number)
    boolean = _INFLUX_BOOLS.get(token)
    if boolean is not None:
        return boolean
    try:
        value = float(token)
    except ValueError:
        raise InvalidInput(f"invalid field value {key}={_show(token)}") from None
    if value - value != 0.0:  # NaN and ±inf are not valid line protocol
        raise InvalidInput(f"field {_show(key)} is {'NaN' if value != value else 'infinite'}")
    return value


class InfluxLineParser(_GuardedParser):
    """InfluxDB line protocol, as Telegraf's Kafka output writes it.

    ``measurement[,tag=v...] field=value[,field2=value2] [timestamp]``, one or more lines per
    message; blank and ``#`` lines are ignored. Every numeric field (float, ``12i``, ``12u``,
    boolean as 1.0/0.0) becomes a point named ``measurement + separator + field`` with the tags
    as labels — Telegraf's Prometheus naming, including its special case that measurement
    ``prometheus`` (the prometheus input's ``metric_version = 2``) is left out of the name.
    String fields are skipped; a line with nothing but string fields is rejected. A missing
    timestamp means ``now_ms``.

    >>> result = InfluxLineParser().parse(
    ...     b'disk,path=/data\\\\ 1 used=12i,ro=false,label="x y" 1714564800000000000',
    ...     now_ms=1_714_564_800_000,
    ... )
    >>> list(zip(result.series, result.ts_ms, result.values))
    [('disk_used{path="/data 1"}', 1714564800000, 12.0), ('disk_ro{path="/data 1"}', 1714564800000, 0.0)]
    """  # noqa: E501 - a doctest's expected output cannot be wrapped

    def __init__(self, separator: str = "_", timestamps: TimestampPolicy | None = None) -> None:
        self.separator = separator
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy(unit="ns")

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        raw_lines: list[bytes] = []
        try:
            lines: list[str | None] = list(raw.decode("utf-8").split("\n"))
        except UnicodeDecodeError:
            # Decode line by line so one corrupt line costs only itself.
            raw_lines = bytes(raw).split(b"\n")
            lines = []
            for line_bytes in raw_lines:
                try:
                    lines.append(line_bytes.decode("utf-8"))
                except UnicodeDecodeError:
                    lines.append(None)
        failures: list[tuple[int, str, bytes]] = []
        data_lines = 0
        for lineno, line in enumerate(lines, 1):
            if line is None:
                data_lines += 1
                failures.append((lineno, "invalid UTF-8", raw_lines[lineno - 1].strip()))
                continue
            line = line.strip()
            if not line or line[0] == "#":
                continue
            data_lines += 1
            mark = len(result)
            try:
                self._line(line, now_ms, result)
            except InvalidInput as exc:
                failures.append((lineno, str(exc), line.encode()))
            except Exception as exc:  # noqa: BLE001 - one line's failure costs that line only
                del result.series[mark:], result.ts_ms[mark:], result.values[mark:]
                failures.append((lineno, _unexpected(exc), line.encode()))
        if data_lines == 0:
            result.rejects.append(Reject("empty record", bytes(raw)))
        elif data_lines == 1 and failures:
            # A one-line message is the record itself: keep its original bytes.
            result.rejects.append(Reject(failures[0][1], bytes(raw)))
        else:
            for lineno, reason, line_raw in failures:
                result.rejects.append(Reject(f"line {lineno}: {reason}", line_raw))

    def _line(self, line: str, now_ms: int, result: ParseResult) -> None:
        """Add the points of one line, all or none; raises InvalidInput."""
        if "\\" in line or '"' in line:
            measurement, tags, fields, stamp = _LineScanner(line).split_line()
        else:
            # Fast path, most Telegraf lines: nothing escaped, so plain splits are exact.
            parts = line.split()
            if len(parts) < 2:
                raise InvalidInput("missing fields")
            if len(parts) > 3:
                raise InvalidInput(
                    f"{len(parts)} space-separated parts, expected "
                    "'measurement[,tags] fields [timestamp]' (unescaped space?)"
                )
            measurement, *tag_items = parts[0].split(",")
            tags = []
            for item in tag_items:
                key, eq, val = item.partition("=")
                if not eq:
                    raise InvalidInput(f"invalid tag {_show(item)} (expected key=value)")
                tags.append((key, val))
            fields = []
            for item in parts[1].split(","):
                key, eq, val = item.partition("=")
                if not eq:
                    raise InvalidInput(f"invalid field {_show(item)} (expected key=value)")
                fields.append((key, val))
            stamp = parts[2] if len(parts) == 3 else ""

        if not measurement:
            raise InvalidInput("missing measurement")
        labels: dict[str, str] = {}
        for key, val in tags:
            if not key or not val:
                raise InvalidInput(f"empty tag key or value: {_show(key + '=' + val)}")
            labels[key] = val
        points: list[tuple[str, float]] = []
        for key, token in fields:
            if not key:
                raise InvalidInput("empty field key")
            if token is not _STRING_FIELD:
                points.append((key, _influx_number(key, token)))
        if not points:
            raise InvalidInput("no numeric field")

        if stamp:
            try:
                epoch = int(stamp)
            except ValueError:
                raise InvalidInput(f"invalid timestamp {_show(stamp)}") from None
            ts_ms = self.timestamps.epoch_to_ms(epoch, now_ms)
        else:
            ts_ms = now_ms

        prefix = "" if measurement == "prometheus" else measurement + self.separator
        # Every field shares the tags: render the label part once, not once per field.
        suffix = _series_id("_", labels)[1:]
        add = result.add
        for key, value in points:
            add(_series_id(prefix + key, None) + suffix, ts_ms, value)


# --------------------------------------------------------------------------- collectd


def collectd_name(plugin: str, type_: str, dsname: str) -> str:
    """The metric name of one collectd data source: ``plugin_type_dsname``, the type left out
    when it repeats the plugin and the data source name when it is collectd's ``value``.

    >>> collectd_name("interface", "if_errors", "rx"), collectd_name("memory", "memory", "value")
    ('interface_if_errors_rx', 'memory')
    """
    parts = [plugin] if not type_ or type_ == plugin else [plugin, type_]
    if dsname and dsname != "value":
        parts.append(dsname)
    return "_".join(parts)


def _collectd_labels(host: object, plugin_instance: object, type_instance: object) -> dict:
    labels = {}
    for key, val in (("host", host), ("plugin_instance", plugin_instance),
                     ("type_instance", type_instance)):
        if val not in (None, ""):
            labels[key] = val if type(val) is str else label_value(val)
    return labels


_COLLECTD_COUNTERS = ("derive", "counter")


class CollectdJsonParser(_GuardedParser):
    """collectd's JSON (``write_kafka``/``write_http`` ``Format JSON``): a list of value lists.

    Every data source is one series: name :func:`collectd_name` (plugin, type, dsname),
    labels ``host``, ``plugin_instance``, ``type_instance`` (when not empty). A ``null`` value
    is collectd's "unknown" (a rate's first reading, a NaN gauge): skipped, not an error.

    ``derive``/``counter``/``absolute`` data sources: collectd 5.12's ``write_kafka`` sends
    them as per-second rates by default (``StoreRates true``), so with ``store_rates`` (the
    default) they are taken as they come. With ``StoreRates false`` in collectd and
    ``store_rates=False`` here they are raw: ``derive`` and ``counter`` are marked as counters
    (rates before detection), ``absolute`` divided by the interval.

    >>> raw = (b'[{"values":[10,20],"dstypes":["derive","gauge"],"dsnames":["rx","tx"],'
    ...        b'"time":1714564800.5,"interval":5.0,"host":"h","plugin":"interface",'
    ...        b'"plugin_instance":"lo","type":"if_errors","type_instance":""}]')
    >>> result = CollectdJsonParser(store_rates=False).parse(raw, now_ms=1_714_564_800_000)
    >>> list(zip(result.series, result.ts_ms, result.values)), sorted(result.counters)
    ([('interface_if_errors_rx{host="h",plugin_instance="lo"}', 1714564800500, 10.0), \
('interface_if_errors_tx{host="h",plugin_instance="lo"}', 1714564800500, 20.0)], \
['interface_if_errors_rx{host="h",plugin_instance="lo"}'])
    """

    def __init__(self, timestamps: TimestampPolicy | None = None,
                 store_rates: bool = True) -> None:
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy(unit="s")
        self.store_rates = store_rates

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            result.rejects.append(Reject(f"invalid JSON: {exc}", bytes(raw)))
            return
        items = doc if type(doc) is list else [doc]
        for index, item in enumerate(items):
            where = f"item {index}: " if type(doc) is list else ""
            try:
                self._value_list(item, now_ms, result, where)
            except InvalidInput as exc:
                result.rejects.append(Reject(f"{where}{exc}", _dumps(item)))

    def _value_list(self, item: Any, now_ms: int, result: ParseResult, where: str) -> None:
        if type(item) is not dict:
            raise InvalidInput(f"not a collectd value list: {type(item).__name__}")
        values, dstypes, dsnames = item.get("values"), item.get("dstypes"), item.get("dsnames")
        if type(values) is not list or type(dstypes) is not list or type(dsnames) is not list:
            raise InvalidInput("missing 'values', 'dstypes' or 'dsnames' list")
        if not (len(values) == len(dstypes) == len(dsnames)) or not values:
            raise InvalidInput("'values', 'dstypes' and 'dsnames' differ in length or are empty")
        plugin, type_ = item.get("plugin"), item.get("type")
        if type(plugin) is not str or not plugin or type(type_) is not str:
            raise InvalidInput("missing 'plugin' or 'type'")
        ts_ms = self.timestamps.to_ms(item.get("time"), now_ms)
        labels = _collectd_labels(item.get("host"), item.get("plugin_instance"),
                                  item.get("type_instance"))
        for value, dstype, dsname in zip(values, dstypes, dsnames, strict=True):
            if value is None:
                continue  # collectd's unknown
            kind = "gauge" if self.store_rates else str(dstype).lower()
            try:
                series = _series_id(collectd_name(plugin, type_, str(dsname)), labels)
                number = _to_value(value)
                if kind == "absolute":
                    interval = item.get("interval")
                    if type(interval) not in (int, float) or not interval > 0:
                        raise InvalidInput("absolute value without a positive 'interval'")
                    number /= interval
            except InvalidInput as exc:
                result.rejects.append(Reject(f"{where}{dsname}: {exc}", _dumps(item)))
                continue
            result.add(series, ts_ms, number)
            if kind in _COLLECTD_COUNTERS:
                result.counters.add(series)


DEBIAN_TYPES_DB = "/usr/share/collectd/types.db"


def load_types_db(path: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """collectd's ``types.db``: type → [(dsname, dstype lower-case)]; empty if not found.

    >>> db = load_types_db()
    >>> db.get("if_octets", [("rx", "derive"), ("tx", "derive")])
    [('rx', 'derive'), ('tx', 'derive')]
    """
    if path is None and os.path.exists(DEBIAN_TYPES_DB):
        path = DEBIAN_TYPES_DB
    types: dict[str, list[tuple[str, str]]] = {}
    if not path:
        return types
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, rest = line.partition(" ")
            sources = []
            for spec in rest.replace("\t", " ").split(","):
                fields = spec.strip().split(":")
                if len(fields) >= 2:
                    sources.append((fields[0], fields[1].lower()))
            if sources:
                types[name] = sources
    return types


def _split_dash(text: str) -> tuple[str, str]:
    head, _, tail = text.partition("-")
    return head, tail


class PutvalParser(_GuardedParser):
    """collectd's plain-text protocol (``write_kafka`` ``Format Command``, ``exec``, unixsock):
    ``PUTVAL host/plugin[-instance]/type[-instance] [interval=5.000] epoch:v1[:v2...]``.

    Data source names and types come from collectd's ``types.db`` (Debian's, or ``types_db``);
    a type it does not know is a gauge named ``value`` (``value0``, ``value1``… for several).
    Series are named as :class:`CollectdJsonParser` names them; ``U`` (unknown) values are
    skipped and ``N`` (now) timestamps understood. PUTVAL values are raw: ``derive`` and
    ``counter`` data sources are marked as counters (rates before detection).

    >>> parser = PutvalParser(types={"if_errors": [("rx", "derive"), ("tx", "derive")]})
    >>> result = parser.parse(b'PUTVAL "h/interface-lo/if_errors" interval=5.000 '
    ...                       b'1714564800.000:3:U', now_ms=1_714_564_800_000)
    >>> result.series, result.values, result.rejects, sorted(result.counters)
    (['interface_if_errors_rx{host="h",plugin_instance="lo"}'], [3.0], [], \
['interface_if_errors_rx{host="h",plugin_instance="lo"}'])
    """

    def __init__(self, types: dict | None = None, types_db: str | None = None,
                 timestamps: TimestampPolicy | None = None) -> None:
        self.types = types if types is not None else load_types_db(types_db)
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy(unit="s")

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        lines = _text_lines(raw, result)
        for lineno, line in lines:
            try:
                self._line(line, lineno, now_ms, result)
            except InvalidInput as exc:
                result.rejects.append(Reject(f"line {lineno}: {exc}", line.encode()))

    def _line(self, line: str, lineno: int, now_ms: int, result: ParseResult) -> None:
        words = line.split()
        if len(words) < 3 or words[0].upper() != "PUTVAL":
            raise InvalidInput("not a PUTVAL command")
        ident = words[1].strip('"')
        parts = ident.split("/")
        if len(parts) != 3 or not all(parts[:2]):
            raise InvalidInput(f"identifier is not host/plugin/type: {_show(ident)}")
        host, (plugin, plugin_instance), (type_, type_instance) = (
            parts[0], _split_dash(parts[1]), _split_dash(parts[2]))
        labels = _collectd_labels(host, plugin_instance, type_instance)
        stamp, *fields = words[-1].split(":")
        if not fields:
            raise InvalidInput(f"values are not time:value[:value...]: {_show(words[-1])}")
        ts_ms = now_ms if stamp == "N" else self.timestamps.to_ms(stamp, now_ms)
        sources = self.types.get(type_)
        if sources is None or len(sources) != len(fields):
            names = ["value"] if len(fields) == 1 else [f"value{i}" for i in range(len(fields))]
            sources = [(n, "gauge") for n in names]
        for (dsname, dstype), field_text in zip(sources, fields, strict=True):
            try:
                if field_text == "U":
                    continue  # collectd's unknown
                series = _series_id(collectd_name(plugin, type_, dsname), labels)
                number = _to_value(field_text)
            except InvalidInput as exc:
                result.rejects.append(Reject(f"line {lineno}: {dsname}: {exc}", line.encode()))
                continue
            result.add(series, ts_ms, number)
            if dstype in _COLLECTD_COUNTERS:
                result.counters.add(series)


# --------------------------------------------------------------------------- Graphite

#: The default template: collectd's Graphite paths, named as its JSON is (CollectdJsonParser).
COLLECTD_TEMPLATE = "collectd.* .host.measurement-plugin_instance.measurement-type_instance.field*"


class GraphiteTemplate:
    """One Telegraf-style Graphite template: ``[filter] part.part.part...``.

    ``filter`` is a glob on the dotted path (no filter: every path). Each part of the
    template names what the path part at that position is: ``measurement`` (joined with
    ``_`` into the metric name; a part equal to the previous one is not repeated),
    ``field`` (appended to the name), ``measurement*``/``field*`` (this and all later parts),
    an empty part (skipped), ``a-b`` (the path part split at its first ``-``, each side read
    as its own part), anything else a label key. Parts past the template are appended to
    the name.

    >>> t = GraphiteTemplate(COLLECTD_TEMPLATE)
    >>> t.apply("collectd.h.interface-lo.if_octets.rx".split("."))
    ('interface_if_octets_rx', {'host': 'h', 'plugin_instance': 'lo'})
    >>> GraphiteTemplate("servers.* .host.measurement*").apply(["servers", "a", "cpu", "idle"])
    ('cpu_idle', {'host': 'a'})
    """

    def __init__(self, spec: str) -> None:
        words = spec.split()
        if len(words) > 2 or not words:
            raise ValueError(f"a Graphite template is '[filter] template': {spec!r}")
        self.filter = words[0] if len(words) == 2 else None
        self.parts = words[-1].split(".")
        self.spec = spec

    def matches(self, path: str) -> bool:
        return self.filter is None or fnmatch.fnmatchcase(path, self.filter)

    def apply(self, parts: list[str]) -> tuple[str, dict[str, str]]:
        name: list[str] = []
        labels: dict[str, str] = {}

        def take(role: str, text: str) -> None:
            if role in ("measurement", "field"):
                if text and not (role == "measurement" and name and name[-1] == text):
                    name.append(text)
            elif role and text:
                labels[role] = text

        for i, text in enumerate(parts):
            role = self.parts[i] if i < len(self.parts) else "field"
            if role.endswith("*"):
                name.extend(p for p in parts[i:] if p)
                break
            if "-" in role:
                first, second = role.split("-", 1)
                head, tail = _split_dash(text)
                take(first, head)
                take(second, tail)
            else:
                take(role, text)
        if not name:
            raise InvalidInput(f"template {self.spec!r} gives no metric name")
        return "_".join(name), labels


class GraphiteParser(_GuardedParser):
    """Graphite plaintext: ``path[;tag=value...] value [timestamp]``, one or more lines.

    The first template whose filter matches the path gives the name and labels; with none
    the whole path is the name (dots become ``_``). Graphite tags (``;tag=value``) become
    labels too; collectd's tagged series (``GraphiteUseTags true``: tags ``plugin``, ``type``,
    ``ds_name``…) are named as its JSON is. A ``nan`` value (collectd's unknown) is skipped.
    The default template reads collectd's paths
    (``collectd.<host>.<plugin>-<instance>.<type>-<type_instance>``) so that its Graphite
    output and its JSON make the same series.

    >>> result = GraphiteParser().parse(
    ...     b"collectd.h.memory.memory-cached 1747996672 1714564800\\n"
    ...     b"app.requests;env=prod 12 1714564800", now_ms=1_714_564_800_000)
    >>> result.series, result.values
    (['memory{host="h",type_instance="cached"}', 'app_requests{env="prod"}'], [1747996672.0, 12.0])
    """

    def __init__(self, templates: Sequence[str] | None = None,
                 timestamps: TimestampPolicy | None = None) -> None:
        specs = list(templates) if templates is not None else [COLLECTD_TEMPLATE]
        self.templates = [GraphiteTemplate(t) for t in specs]
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy(unit="s")

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        lines = _text_lines(raw, result)
        for lineno, line in lines:
            try:
                point = self._line(line, now_ms)
                if point is not None:
                    result.add(*point)
            except InvalidInput as exc:
                reason = str(exc) if len(lines) == 1 else f"line {lineno}: {exc}"
                result.rejects.append(Reject(reason, line.encode()))

    def _line(self, line: str, now_ms: int) -> tuple[str, int, float] | None:
        """(series, ts_ms, value) of one line, None for a NaN value; raises InvalidInput."""
        words = line.split()
        if len(words) not in (2, 3):
            raise InvalidInput(f"{len(words)} space-separated parts, expected 'path value [time]'")
        path, *tags = words[0].split(";")
        if not path:
            raise InvalidInput("empty metric path")
        labels: dict[str, str] = {}
        for tag in tags:
            key, eq, val = tag.partition("=")
            if not eq or not key or not val:
                raise InvalidInput(f"invalid tag {_show(tag)} (expected tag=value)")
            labels[key] = val
        template = next((t for t in self.templates if t.matches(path)), None)
        if "plugin" in labels and "type" in labels:
            # collectd's tagged series (GraphiteUseTags): named as its JSON is.
            name = collectd_name(labels.pop("plugin"), labels.pop("type"),
                                 labels.pop("ds_name", "value"))
            labels.pop("ds_type", None)
        elif template is None:
            name = path
        else:
            name, found = template.apply(path.split("."))
            labels = {**found, **labels}
        if words[1].lower() == "nan":
            return None  # collectd's unknown (a rate's first reading)
        value = _to_value(words[1])
        if len(words) == 3 and words[2] not in ("-1", "N"):
            ts_ms = self.timestamps.to_ms(words[2], now_ms)
        else:
            ts_ms = now_ms
        return _series_id(name, labels), ts_ms, value


# --------------------------------------------------------------------------- Telegraf JSON


class TelegrafJsonParser(_GuardedParser):
    """Telegraf's JSON serializer: ``{"fields": {...}, "name": ..., "tags": {...},
    "timestamp": ...}``, or its batch ``{"metrics": [...]}``.

    Every numeric field is one series named ``name_field`` (Telegraf's Prometheus naming, as
    :class:`InfluxLineParser`), booleans as 1/0, strings skipped; tags are labels. The
    timestamp's unit is guessed from its size (Telegraf's ``json_timestamp_units``).

    >>> raw = (b'{"fields":{"usage_idle":97.5,"ok":true,"state":"x"},"name":"cpu",'
    ...        b'"tags":{"cpu":"cpu0","host":"h"},"timestamp":1714564800}')
    >>> result = TelegrafJsonParser().parse(raw, now_ms=1_714_564_800_000)
    >>> list(zip(result.series, result.values))
    [('cpu_usage_idle{cpu="cpu0",host="h"}', 97.5), ('cpu_ok{cpu="cpu0",host="h"}', 1.0)]
    """

    def __init__(self, separator: str = "_", timestamps: TimestampPolicy | None = None) -> None:
        self.separator = separator
        self.timestamps = timestamps if timestamps is not None else TimestampPolicy()

    def _parse_into(self, raw: bytes, now_ms: int, result: ParseResult) -> None:
        docs: list[tuple[str, Any]] = []
        try:
            docs.append(("", orjson.loads(raw)))
        except orjson.JSONDecodeError as exc:
            lines = _ndjson_lines(raw)
            if lines is None:
                result.rejects.append(Reject(f"invalid JSON: {exc}", bytes(raw)))
                return
            for lineno, line in lines:
                try:
                    docs.append((f"line {lineno}: ", orjson.loads(line)))
                except orjson.JSONDecodeError as line_exc:
                    result.rejects.append(Reject(f"line {lineno}: invalid JSON: {line_exc}", line))
        for where, doc in docs:
            items = doc.get("metrics") if type(doc) is dict and "fields" not in doc else None
            if type(items) is not list:
                items, where_item = [doc], None
            else:
                where_item = where
            for index, item in enumerate(items):
                prefix = where if where_item is None else f"{where_item}item {index}: "
                try:
                    self._metric(item, now_ms, result)
                except InvalidInput as exc:
                    result.rejects.append(Reject(f"{prefix}{exc}", _dumps(item)))

    def _metric(self, item: Any, now_ms: int, result: ParseResult) -> None:
        if type(item) is not dict:
            raise InvalidInput(f"not a JSON object: {type(item).__name__}")
        name, fields, tags = item.get("name"), item.get("fields"), item.get("tags") or {}
        if type(name) is not str or not name:
            raise InvalidInput(f"name is not a non-empty string: {_show(name)}")
        if type(fields) is not dict:
            raise InvalidInput("missing 'fields' object")
        if type(tags) is not dict:
            raise InvalidInput("'tags' is not an object")
        ts_ms = self.timestamps.to_ms(item.get("timestamp"), now_ms)
        labels = {k: label_value(v) for k, v in tags.items() if v is not None and v != ""}
        suffix = _series_id("_", labels)[1:]
        prefix = "" if name == "prometheus" else name + self.separator
        points = []
        for key, val in fields.items():
            if type(val) is str:
                continue
            number = float(val) if type(val) is bool else _to_value(val)
            points.append((_series_id(prefix + key, None) + suffix, number))
        if not points:
            raise InvalidInput("no numeric field")
        for series, number in points:
            result.add(series, ts_ms, number)


# --------------------------------------------------------------------------- dispatch


class AutoParser:
    """Pick the format per message, from its first bytes.

    ``{`` or ``[`` first is JSON: collectd's when it has ``"dsnames"``, Telegraf's when it has
    a ``"fields"`` object, vigil's own (and Prometheus-adapter) JSON otherwise. ``PUTVAL``
    first is collectd's command format. Other text is Graphite when the first line's second
    word has no ``=`` (``path value [time]``), Influx line protocol otherwise.

    >>> parser = AutoParser()
    >>> now = 1_714_564_800_000
    >>> parser.parse(b'  [{"name": "up", "value": 1, "timestamp": 1714564800}]', now).series
    ['up']
    >>> parser.parse(b'mem used=1i', now).series
    ['mem_used']
    >>> parser.parse(b'servers.a.load 0.5 1714564800', now).series
    ['servers_a_load']
    """

    def __init__(
        self,
        json_parser: JsonParser | None = None,
        influx_parser: InfluxLineParser | None = None,
        collectd_parser: CollectdJsonParser | None = None,
        telegraf_parser: TelegrafJsonParser | None = None,
        graphite_parser: GraphiteParser | None = None,
        putval_parser: PutvalParser | None = None,
    ) -> None:
        self.json_parser = json_parser if json_parser is not None else JsonParser()
        self.influx_parser = influx_parser if influx_parser is not None else InfluxLineParser()
        self.collectd_parser = collectd_parser or CollectdJsonParser()
        self.telegraf_parser = telegraf_parser or TelegrafJsonParser()
        self.graphite_parser = graphite_parser or GraphiteParser()
        self._putval_parser = putval_parser

    @property
    def putval_parser(self) -> PutvalParser:
        if self._putval_parser is None:  # reads types.db: only when PUTVAL shows up
            self._putval_parser = PutvalParser()
        return self._putval_parser

    def pick(self, raw: bytes) -> Parser | None:
        """The parser for ``raw``, or None when it is blank."""
        text = raw.lstrip()
        head = text[:1]
        if not head:
            return None
        if head == b"{" or head == b"[":
            if b'"dsnames"' in raw:
                return self.collectd_parser
            if b'"fields":{' in raw or b'"fields": {' in raw:
                return self.telegraf_parser
            return self.json_parser
        if text[:6].upper() == b"PUTVAL":
            return self.putval_parser
        first = text.split(b"\n", 1)[0].split()
        if len(first) in (2, 3) and b"=" not in first[1]:
            return self.graphite_parser
        return self.influx_parser

    def parse(self, raw: bytes, now_ms: int) -> ParseResult:
        parser = self.pick(raw)
        if parser is None:
            result = ParseResult()
            result.rejects.append(Reject("empty record", bytes(raw)))
            return result
        return parser.parse(raw, now_ms)


FORMATS = ("auto", "json", "prometheus", "influx", "collectd", "putval", "graphite",
           "telegraf_json")


def make_parser(fmt: str, **options: Any) -> Parser:
    """A parser for ``fmt`` (one of :data:`FORMATS`), built from ``options``.

    Options are the parser's constructor arguments; ``timestamps`` may be a mapping of
    :class:`TimestampPolicy` arguments (handy from config files). For "auto", ``separator`` and
    ``influx_timestamps`` go to the Influx parser, ``graphite_templates`` to the Graphite one,
    ``types_db`` to the PUTVAL one, the rest to the JSON one; unless told otherwise Influx
    uses the JSON policy's limits with nanosecond epochs, the collectd and Graphite parsers
    with seconds. Options a single format does not take are ignored.

    >>> make_parser("influx", separator=":").parse(b"cpu idle=1", now_ms=1).series
    ['cpu:idle']
    >>> make_parser("json", timestamps={"unit": "ms"}).timestamps
    TimestampPolicy(max_future_s=300, max_past_s=315360000, unit='ms')
    """
    for key in ("timestamps", "influx_timestamps"):
        if isinstance(options.get(key), Mapping):
            options[key] = TimestampPolicy(**options[key])
    kind = fmt.strip().lower()
    if kind not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    influx_stamps = options.pop("influx_timestamps", None)
    templates = options.pop("graphite_templates", None) or None
    types_db = options.pop("types_db", None)
    store_rates = options.pop("collectd_store_rates", True)
    separator = options.pop("separator", "_")
    json_parser = JsonParser(**options)
    policy = json_parser.timestamps
    seconds = policy.with_unit("s")
    if kind == "json":
        return json_parser
    if kind == "prometheus":
        return PrometheusAdapterParser(timestamps=options.get("timestamps"))
    if kind == "influx":  # a policy given for the one format is its own, unit included
        return InfluxLineParser(separator, influx_stamps or options.get("timestamps"))
    influx = InfluxLineParser(separator, influx_stamps or policy.with_unit("ns"))
    collectd = CollectdJsonParser(seconds, store_rates)
    telegraf = TelegrafJsonParser(separator, policy)
    graphite = GraphiteParser(templates, seconds)
    putval = PutvalParser(types_db=types_db, timestamps=seconds) if kind == "putval" else None
    single = {"collectd": collectd, "telegraf_json": telegraf,
              "graphite": graphite, "putval": putval}
    if kind in single:
        return single[kind]
    return AutoParser(json_parser, influx, collectd, telegraf, graphite,
                      PutvalParser(types_db=types_db, timestamps=seconds) if types_db else None)


def _internal_error(raw: bytes, exc: Exception) -> ParseResult:
    """The whole record dead-lettered because the parser itself failed (a bug, not bad input)."""
    result = ParseResult()
    result.rejects.append(Reject(f"parser error: {type(exc).__name__}: {exc}", bytes(raw)))
    return result
