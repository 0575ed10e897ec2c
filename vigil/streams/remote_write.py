"""Prometheus remote_write (1.0) in: ``POST /api/v1/write`` on the worker's web server.

A request is a snappy-compressed (block format) protobuf ``WriteRequest``. Its samples become
vigil JSON points produced to an input topic — so remote_write scales with Kafka like every
other input, and the ingest stage validates and dead-letters them as it does any record.

* Stale markers (the NaN with bits ``0x7ff0000000000002`` that Prometheus writes when a
  series disappears) are not data: skipped and counted, never dead-lettered.
* Counters become rates before detection: a series is a counter when the request's metadata
  says ``COUNTER`` for its family (or ``HISTOGRAM``/``SUMMARY`` for its ``_count``, ``_sum``
  and ``_bucket``), else when its name ends in ``_total``, ``_count``, ``_sum`` or
  ``_bucket``; its points carry ``"type": "counter"``.
* Bounds: a body over ``max_bytes`` (compressed or decompressed) is answered 413, more than
  ``max_series`` series 400, a body that is not snappy or not a WriteRequest 400; each with a
  one-line reason, as Prometheus logs it (it does not retry 4xx).

The WriteRequest message is tiny, so its descriptor is built here with the ``protobuf``
library (no generated ``_pb2`` file, no protoc); decoding runs in protobuf's C extension.
Snappy is ``cramjam`` (wheels, no system library).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

__all__ = [
    "RemoteWriteError",
    "WriteRequest",
    "decode_write_request",
    "encode_write_request",
    "to_messages",
]

STALE_NAN_BITS = 0x7FF0000000000002
_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
_COUNTER, _HISTOGRAM, _GAUGEHISTOGRAM, _SUMMARY = 1, 3, 4, 5


def _build_messages() -> dict[str, type]:
    """The remote-write 1.0 messages (prometheus/prompb types.proto + remote.proto)."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="vigil_prompb.proto", package="vigil_prompb",
                                               syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            msg.field.add(name=fname, number=number, type=ftype, label=label,
                          type_name=type_name or None)

    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("Label", ("name", 1, f.TYPE_STRING, opt, ""), ("value", 2, f.TYPE_STRING, opt, ""))
    message("Sample", ("value", 1, f.TYPE_DOUBLE, opt, ""),
            ("timestamp", 2, f.TYPE_INT64, opt, ""))
    message("TimeSeries", ("labels", 1, f.TYPE_MESSAGE, rep, ".vigil_prompb.Label"),
            ("samples", 2, f.TYPE_MESSAGE, rep, ".vigil_prompb.Sample"))
    message("MetricMetadata", ("type", 1, f.TYPE_INT32, opt, ""),
            ("metric_family_name", 2, f.TYPE_STRING, opt, ""),
            ("help", 4, f.TYPE_STRING, opt, ""), ("unit", 5, f.TYPE_STRING, opt, ""))
    message("WriteRequest",
            ("timeseries", 1, f.TYPE_MESSAGE, rep, ".vigil_prompb.TimeSeries"),
            ("metadata", 3, f.TYPE_MESSAGE, rep, ".vigil_prompb.MetricMetadata"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {m.name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"vigil_prompb.{m.name}")) for m in proto.message_type}


_MESSAGES = _build_messages()
WriteRequest = _MESSAGES["WriteRequest"]


class RemoteWriteError(ValueError):
    """A request vigil refuses; ``status`` is the HTTP answer (400 or 413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def encode_write_request(series: list[tuple[dict[str, str], list[tuple[float, int]]]],
                         counters: dict[str, int] | None = None) -> bytes:
    """A snappy-compressed WriteRequest (for tests and the benchmark): ``series`` is
    ``[(labels with __name__, [(value, ts_ms), ...]), ...]``, ``counters`` family → type."""
    request = WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for key in sorted(labels):
            ts.labels.add(name=key, value=labels[key])
        for value, ts_ms in samples:
            ts.samples.add(value=value, timestamp=ts_ms)
    for family, kind in (counters or {}).items():
        request.metadata.add(type=kind, metric_family_name=family)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def decode_write_request(body: bytes, max_bytes: int, max_series: int):
    """The WriteRequest in ``body``; raises :class:`RemoteWriteError` (400/413)."""
    if len(body) > max_bytes:
        raise RemoteWriteError(413, f"body of {len(body)} bytes is over the limit of "
                                    f"{max_bytes} (VIGIL_REMOTE_WRITE_MAX_BYTES)")
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # noqa: BLE001 - cramjam raises its own error types
        raise RemoteWriteError(
            400, f"body is not snappy-compressed (block format): {exc}") from None
    if len(raw) > max_bytes:
        raise RemoteWriteError(413, f"decompressed body of {len(raw)} bytes is over the limit "
                                    f"of {max_bytes} (VIGIL_REMOTE_WRITE_MAX_BYTES)")
    request = WriteRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise RemoteWriteError(
            400, f"body is not a remote-write 1.0 WriteRequest: {exc}") from None
    if len(request.timeseries) > max_series:
        raise RemoteWriteError(400, f"{len(request.timeseries)} series in one request, over "
                                    f"the limit of {max_series} (VIGIL_REMOTE_WRITE_MAX_SERIES;"
                                    " lower queue_config.max_samples_per_send)")
    return request


def _is_stale(value: float) -> bool:
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == STALE_NAN_BITS


def _counter_check(metadata, known: dict[str, int] | None = None) -> Callable[[str], bool]:
    """``is_counter(name)``: by metadata (this request's, and ``known`` from earlier ones —
    Prometheus sends metadata in requests of their own), else by the name's suffix."""
    types = known if known is not None else {}
    if len(types) > 100_000:
        types.clear()
    types.update((m.metric_family_name, m.type) for m in metadata)

    def is_counter(name: str) -> bool:
        kind = types.get(name)
        if kind is not None:
            return kind == _COUNTER
        for suffix in _COUNTER_SUFFIXES:
            if name.endswith(suffix):
                family = types.get(name[: -len(suffix)])
                if family is None:
                    return True
                if suffix == "_total":
                    return family == _COUNTER
                return family in (_HISTOGRAM, _GAUGEHISTOGRAM, _SUMMARY)
        return False

    return is_counter


@dataclass
class Converted:
    """What one request became: JSON messages for the input topic with their Kafka keys
    (``keys[i]`` for ``messages[i]``), and the counts."""

    messages: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    samples: int = 0
    stale: int = 0


#: Messages of one request are keyed by a hash of their series into this many groups: a
#: series always gets the same key, so it stays on one partition and its points in order.
KEY_GROUPS = 64


def to_messages(request, points_per_message: int = 1_000,
                known_types: dict[str, int] | None = None) -> Converted:
    """The request's samples as vigil JSON messages ``{"points": [...]}``, stale markers out.
    ``known_types`` (family → metadata type) is updated from the request and used for the
    next ones. Each message holds the series of one key group (:data:`KEY_GROUPS`).

    >>> body = encode_write_request([({"__name__": "up", "job": "node"}, [(1.0, 1714564800000)]),
    ...     ({"__name__": "x_total"}, [(5.0, 1714564800000), (float("nan"), 1714564815000)])])
    >>> out = to_messages(decode_write_request(body, 1 << 20, 10))
    >>> out.samples, out.stale, out.keys
    (3, 0, [b'26', b'28'])
    >>> orjson.loads(out.messages[1])["points"][0]
    {'name': 'x_total', 'labels': {}, 'value': 5.0, 'timestamp': 1714564800000, 'type': 'counter'}
    """
    out = Converted()
    is_counter = _counter_check(request.metadata, known_types)
    groups: dict[int, list[dict]] = {}

    def flush(group: int) -> None:
        out.messages.append(orjson.dumps({"points": groups.pop(group)}))
        out.keys.append(str(group).encode())

    for ts in request.timeseries:
        labels = {label.name: label.value for label in ts.labels}
        group = zlib.crc32("\xff".join(f"{k}\xfe{v}" for k, v in labels.items()).encode())
        group %= KEY_GROUPS
        name = labels.pop("__name__", "")
        counter = is_counter(name)
        points = groups.setdefault(group, [])
        for sample in ts.samples:
            value = sample.value
            if value != value and _is_stale(value):
                out.stale += 1
                continue
            point = {"name": name, "labels": labels,
                     "value": value if value - value == 0.0 else str(value),
                     "timestamp": sample.timestamp}
            if counter:
                point["type"] = "counter"
            points.append(point)
        if len(points) >= points_per_message:
            flush(group)
    out.samples = sum(len(ts.samples) for ts in request.timeseries) - out.stale
    for group in [g for g, points in groups.items() if points]:
        flush(group)
    return out
