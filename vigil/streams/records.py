"""What the worker's agents pass between parsing and detection, and its dead letters."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import faust

__all__ = ["DeadLetter", "ParseResult", "Reject", "dead_letter_record"]

#: The longest reason a dead letter carries (a reason may quote the input).
MAX_REASON_CHARS = 2_000


@dataclass(slots=True)
class Reject:
    """One input record (or one point of a batch record) that could not be used."""

    reason: str
    raw: bytes


@dataclass(slots=True)
class ParseResult:
    """What a parser makes of one Kafka message: good points (columnar) and rejects.

    ``series``, ``ts_ms`` and ``values`` have equal length; timestamps are UTC epoch milliseconds.
    ``counters`` names the series whose values are cumulative counters (collectd ``derive``,
    Prometheus ``counter``, ``"type": "counter"`` in JSON): the detection stage turns them
    into per-second rates (:class:`vigil.streams.rates.CounterRates`).
    """

    series: list[str] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    counters: set[str] = field(default_factory=set)

    def add(self, series: str, ts_ms: int, value: float) -> None:
        self.series.append(series)
        self.ts_ms.append(ts_ms)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.series)



class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A record vigil could not use, with why. ``raw_b64`` is the original bytes, base64,
    or their first ``deadletter_raw_bytes`` when longer (``raw_truncated``): then
    ``raw_bytes`` and ``raw_sha256`` identify the whole record at its offset."""

    reason: str
    topic: str
    partition: int
    offset: int
    raw_b64: str
    ts_ms: int
    stage: str = "parse"
    raw_bytes: int = 0
    raw_truncated: bool = False
    raw_sha256: str = ""


def dead_letter_record(
    reason: str, raw: bytes, *, topic: str, partition: int, offset: int, ts_ms: int,
    stage: str, max_raw_bytes: int,
) -> DeadLetter:
    """A :class:`DeadLetter` whose size is bounded whatever the size of ``raw``.

    >>> d = dead_letter_record("bad", b"x" * 10, topic="t", partition=0, offset=1, ts_ms=0,
    ...                        stage="parse", max_raw_bytes=4)
    >>> base64.b64decode(d.raw_b64), d.raw_bytes, d.raw_truncated, d.raw_sha256[:8]
    (b'xxxx', 10, True, 'fc11d6f2')
    """
    truncated = len(raw) > max_raw_bytes
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "…"
    return DeadLetter(
        reason=reason,
        topic=topic,
        partition=partition,
        offset=offset,
        raw_b64=base64.b64encode(raw[:max_raw_bytes] if truncated else raw).decode(),
        ts_ms=ts_ms,
        stage=stage,
        raw_bytes=len(raw),
        raw_truncated=truncated,
        raw_sha256=hashlib.sha256(raw).hexdigest() if truncated else "",
    )
