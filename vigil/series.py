"""The series id: one format, one parser, one rule for valid names.

A *series* is a metric name plus its labels, Prometheus style. Its id is the canonical
string with the labels sorted by key::

    node_load1{host="db-1",role="primary"}

That string is the series id everywhere: the Kafka key of internal messages, Redis keys,
routing, anomaly events, storage.

Names and label keys follow Prometheus' rules — names ``[a-zA-Z_:][a-zA-Z0-9_:]*``, label
keys ``[a-zA-Z_][a-zA-Z0-9_]*`` — and anything else is sanitised the way Telegraf's
Prometheus serializer does it (``plugins/serializers/prometheus/convert.go``): invalid
characters before the first one that may start a name are dropped, every later invalid
character becomes ``_``, and leading or trailing ``_`` are trimmed. So ``cpu.stats idle``
becomes ``cpu_stats_idle``, and a name can never contain the ``{``, ``"``, ``=`` or ``,``
that delimit the labels: two different (sanitised) inputs never share an id, and
:func:`parse_series` inverts :func:`series_id`.
Label values are any text; ``\\``, ``"`` and newlines are escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

__all__ = [
    "InvalidName",
    "label_value",
    "parse_series",
    "sanitise_label_key",
    "sanitise_name",
    "series_id",
]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAME_FIRST, _NAME_REST = re.compile(r"[a-zA-Z_:]"), re.compile(r"[^a-zA-Z0-9_:]")
_KEY_FIRST, _KEY_REST = re.compile(r"[a-zA-Z_]"), re.compile(r"[^a-zA-Z0-9_]")


class InvalidName(ValueError):
    """A metric name or label key with nothing left after sanitising (e.g. ``"..."``)."""


def _sanitise(text: str, valid: re.Pattern, first: re.Pattern, rest: re.Pattern,
              what: str) -> str:
    if valid.fullmatch(text):
        return text
    # Telegraf drops one invalid first character; dropping every character that cannot
    # start a name also keeps "00" from becoming the invalid "0".
    clean = rest.sub("_", text).strip("_")
    while clean and not first.match(clean):
        clean = clean[1:].lstrip("_")
    if not clean:
        raise InvalidName(f"{what} {text!r} has no valid character")
    return clean


def sanitise_name(name: str) -> str:
    """A valid Prometheus metric name made from ``name`` (Telegraf's rule).

    >>> sanitise_name("cpu.stats_idle"), sanitise_name("my measurement_value")
    ('cpu_stats_idle', 'my_measurement_value')
    >>> sanitise_name('cpu{host="db-1"}')
    'cpu_host__db_1'
    >>> sanitise_name("node_load1")
    'node_load1'
    """
    return _sanitise(name, _NAME, _NAME_FIRST, _NAME_REST, "metric name")


def sanitise_label_key(key: str) -> str:
    """A valid Prometheus label key made from ``key`` (no ``:``, unlike names).

    >>> sanitise_label_key("cpu-id"), sanitise_label_key("a:b")
    ('cpu_id', 'a_b')
    """
    return _sanitise(key, _LABEL_KEY, _KEY_FIRST, _KEY_REST, "label key")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_value(value: object) -> str:
    """A label value as text; booleans as ``true``/``false`` (as Prometheus and JSON write them).

    >>> label_value(True), label_value(3), label_value("db-1")
    ('true', '3', 'db-1')
    """
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


def series_id(name: str, labels: Mapping[str, object] | None = None) -> str:
    """The canonical id ``name{k1="v1",k2="v2"}``: name and keys sanitised, keys sorted.

    >>> series_id("node_load1", {"role": "db", "host": "db-1"})
    'node_load1{host="db-1",role="db"}'
    >>> series_id("up")
    'up'
    >>> series_id("disk used", {"mount point": "/"})
    'disk_used{mount_point="/"}'
    """
    name = sanitise_name(name)
    if not labels:
        return name
    pairs: dict[str, str] = {}
    for key, value in labels.items():
        pairs[sanitise_label_key(str(key))] = label_value(value)
    inner = ",".join(f'{k}="{_escape(pairs[k])}"' for k in sorted(pairs))
    return f"{name}{{{inner}}}"


# Lenient on purpose: ids stored by versions before the naming rule still parse.
_ID_NAME = re.compile(r'[^{}"=,]+')
_LABEL_PAIR = re.compile(r'([^=,{}"]+)="((?:[^"\\]|\\.)*)"(,|$)', re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


@lru_cache(maxsize=200_000)
def _parse(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    brace = text.find("{")
    if brace < 0:
        if not _ID_NAME.fullmatch(text):
            raise ValueError(f"not a series id: {text!r}")
        return text, ()
    name, rest = text[:brace], text[brace + 1:]
    if not _ID_NAME.fullmatch(name) or not rest.endswith("}"):
        raise ValueError(f"not a series id: {text!r}")
    rest = rest[:-1]
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(rest):
        pair = _LABEL_PAIR.match(rest, pos)
        if not pair:
            raise ValueError(f"not a series id: {text!r}")
        pairs.append((pair.group(1), _unescape(pair.group(2))))
        pos = pair.end()
    return name, tuple(pairs)


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """The metric name and labels of a series id: the inverse of :func:`series_id` (cached).

    >>> parse_series('node_load1{host="db-1",role="db"}')
    ('node_load1', {'host': 'db-1', 'role': 'db'})
    >>> series_id(*parse_series('up{job="a\\\\"b"}'))
    'up{job="a\\\\"b"}'
    >>> parse_series("not{an id")
    Traceback (most recent call last):
    ...
    ValueError: not a series id: 'not{an id'
    """
    name, pairs = _parse(text)
    return name, dict(pairs)
