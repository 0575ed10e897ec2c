"""Loud failure: notice when an input topic's records are mostly dead-lettered.

Each topic keeps counts over a sliding window of recent records (a ring of time slices):
records consumed, records with at least one reject and no point, and the reject reasons by
class. When over ``threshold`` of a topic's records in the window were dead-lettered (and
at least ``min_records`` came), the topic is *degraded*: ``/health`` says so with the ratio,
and a log line — at most one per topic per ``log_every_s`` — names the topic, the format
tried and the most frequent reasons.

>>> health = InputHealth("auto", window_s=60, min_records=2)
>>> for _ in range(3):
...     health.record("metrics", points=0, reasons=["item 0: missing field 'name'"], now_s=0.0)
>>> health.record("metrics", points=5, reasons=[], now_s=1.0)
>>> health.degraded(now_s=2.0)
{'metrics': {'dead_lettered_ratio': 0.75, 'records': 4, 'top_reasons': {'missing field': 3}}}
"""

from __future__ import annotations

import logging
import re
from collections import Counter, deque

__all__ = ["InputHealth", "reason_class"]

log = logging.getLogger("vigil.inputs")

_WHERE = re.compile(r"^((item|line) \d+: )+")
_CLASSES = (
    ("invalid JSON", "invalid JSON"),
    ("missing field", "missing field"),
    ("missing '", "missing field"),
    ("timestamp", "timestamp"),
    ("value is NaN", "value NaN or infinite"),
    ("value is infinite", "value NaN or infinite"),
    ("value is", "value"),
    ("not numeric", "value"),
    ("no numeric field", "value"),
    ("invalid field", "syntax"),
    ("invalid tag", "syntax"),
    ("space-separated parts", "syntax"),
    ("not a PUTVAL", "syntax"),
    ("identifier", "syntax"),
    ("name", "name"),
    ("empty", "empty"),
    ("parser error", "parser error"),
    ("not a routed points message", "internal"),
    ("UTF-8", "encoding"),
)


def reason_class(reason: str) -> str:
    """A small, fixed set of reason classes (for the metric's label and the log line).

    >>> reason_class("item 3: missing field 'name'"), reason_class("line 2: timestamp is NaN")
    ('missing field', 'timestamp')
    >>> reason_class("something new")
    'other'
    """
    text = _WHERE.sub("", reason)
    for needle, cls in _CLASSES:
        if needle in text:
            return cls
    return "other"


class _Window:
    """Counts of one topic in time slices of ``slice_s`` (oldest dropped past the window)."""

    def __init__(self) -> None:
        self.slices: deque[tuple[int, int, int, Counter]] = deque()

    def add(self, slot: int, dead: bool, classes: list[str]) -> None:
        if not self.slices or self.slices[-1][0] != slot:
            self.slices.append((slot, 0, 0, Counter()))
        s, records, dead_n, reasons = self.slices[-1]
        reasons.update(classes)
        self.slices[-1] = (s, records + 1, dead_n + dead, reasons)

    def totals(self, oldest: int) -> tuple[int, int, Counter]:
        while self.slices and self.slices[0][0] < oldest:
            self.slices.popleft()
        records = sum(s[1] for s in self.slices)
        dead = sum(s[2] for s in self.slices)
        reasons: Counter = Counter()
        for s in self.slices:
            reasons.update(s[3])
        return records, dead, reasons


class InputHealth:
    """Per-topic dead-letter ratios over a sliding window (see the module docstring)."""

    def __init__(self, input_format: str, window_s: float = 300, threshold: float = 0.5,
                 min_records: int = 20, log_every_s: float = 60, slices: int = 10) -> None:
        self.input_format = input_format
        self.window_s = window_s
        self.threshold = threshold
        self.min_records = min_records
        self.log_every_s = log_every_s
        self.slice_s = window_s / slices
        self._topics: dict[str, _Window] = {}
        self._logged: dict[str, float] = {}

    def record(self, topic: str, points: int, reasons: list[str], now_s: float) -> None:
        """One consumed record: how many points it gave and its rejects' reasons."""
        window = self._topics.get(topic)
        if window is None:
            window = self._topics[topic] = _Window()
        dead = points == 0 and bool(reasons)
        window.add(int(now_s // self.slice_s), dead, [reason_class(r) for r in reasons])

    def degraded(self, now_s: float) -> dict[str, dict]:
        """Topics mostly dead-lettered in the window: ratio, records and top reason classes."""
        oldest = int((now_s - self.window_s) // self.slice_s) + 1
        found = {}
        for topic, window in self._topics.items():
            records, dead, reasons = window.totals(oldest)
            if records >= self.min_records and dead > self.threshold * records:
                found[topic] = {
                    "dead_lettered_ratio": round(dead / records, 3),
                    "records": records,
                    "top_reasons": dict(reasons.most_common(3)),
                }
        return found

    def warn(self, now_s: float) -> dict[str, dict]:
        """Log the degraded topics (each at most once per ``log_every_s``); return them all."""
        found = self.degraded(now_s)
        for topic, info in found.items():
            if now_s - self._logged.get(topic, -1e18) < self.log_every_s:
                continue
            self._logged[topic] = now_s
            reasons = ", ".join(f"{k} ({v})" for k, v in info["top_reasons"].items())
            log.error(
                "topic %s: %.0f%% of %d records in the last %.0f s were dead-lettered "
                "(format %s); top reasons: %s. Is VIGIL_INPUT_FORMAT right for this "
                "producer? See docs/inputs.md",
                topic, 100 * info["dead_lettered_ratio"], info["records"], self.window_s,
                self.input_format, reasons or "none",
            )
        return found
