"""What the worker's agents pass between parsing and detection, and its dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field

import faust

__all__ = ["DeadLetter", "ParseResult", "Reject"]


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
    """A record vigil could not use, with why; ``raw`` is the original bytes, base64-encoded."""

    reason: str
    topic: str
    partition: int
    offset: int
    raw_b64: str
    ts_ms: int
    stage: str = "parse"
