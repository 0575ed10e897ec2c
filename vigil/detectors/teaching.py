"""What operators teach a series: patterns marked "not an anomaly" (issue 19).

An operator who presses *Not an anomaly* on an incident says that this kind of excursion, at
about this size, is normal for the series. :func:`teach` writes that into the series' state
record (:data:`~vigil.detectors.bank.STATE_DTYPE`, fields ``taught_*``, state format 6) as a
:class:`Pattern` in one of :data:`~vigil.detectors.bank.TAUGHT_SLOTS` slots, and the
compiled step (:func:`vigil.detectors.kernel.taught`) then withholds an opening that matches
it:

* the same **family** of anomaly (the value moved: point, level shift, drift; its spread
  changed: variance, oscillation; it stopped: flatline) and, for the first family, the same
  **direction** (up or down);
* a score at most ``LARGER`` (2) times the marked incident's peak — a clearly larger one is
  news again, as it would be inside an open incident;
* for a **daily-recurring** excursion (one the series' memory has seen at this hour on an
  earlier day), only within ``TAUGHT_MINUTES`` (60) of its time of day; otherwise at any time;
* before the teaching **expires** (``until_ms``, in the data's time), unless an operator
  marks the pattern again, which renews it and keeps the larger size.

These functions work on state records (a :class:`~vigil.detectors.bank.StateBank`'s rows);
the worker applies them in order with the series' points (:mod:`vigil.streams.pipeline`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vigil.detectors.bank import TAUGHT_SLOTS
from vigil.detectors.kernel import DAY_MS, FAMILY, TAUGHT_MINUTES
from vigil.times import iso

__all__ = [
    "FAMILY_NAMES",
    "Pattern",
    "family_of",
    "forget",
    "pattern_from_incident",
    "taught_patterns",
    "teach",
]

#: The families' names, by FAMILY code (0: none).
FAMILY_NAMES = ("none", "value moved", "spread changed", "stopped")

# Anomaly types (AnomalyEvent.anomaly_type) → ANOMALY_TYPES index (kernel's kind).
_KINDS = {
    "point": 1, "contextual": 1, "collective:level_shift": 2, "collective:variance": 3,
    "collective:oscillation": 4, "collective:flatline": 5, "collective:drift": 6,
}
# The hour-of-day memory (z_hour_count) of an excursion seen on an earlier day as well as in
# the marked incident itself: more than this count (each excursion adds 1, decayed).
_RECURRING_COUNT = 1.5


@dataclass(frozen=True, slots=True)
class Pattern:
    """One taught pattern: family code, direction (±1, 0 either), the marked peak score,
    minute of the day (UTC; −1 any time) and the data time from which it is forgotten."""

    family: int
    direction: int
    z: float
    minute: int
    until_ms: int

    def describe(self) -> str:
        """``value moved up, score ≤ 2 × 7.5, around 03:00 UTC, until 2026-01-01T00:00Z``."""
        way = {1: " up", -1: " down"}.get(self.direction, "")
        when = "at any time" if self.minute < 0 else f"around {self.minute // 60:02d}:" \
            f"{self.minute % 60:02d} UTC"
        return (f"{FAMILY_NAMES[self.family]}{way}, up to {2 * self.z:.1f}σ (marked at "
                f"{self.z:.1f}σ), {when}, until {iso(self.until_ms)}")

    def asdict(self) -> dict:
        return asdict(self)


def family_of(anomaly_type: str) -> int:
    """The FAMILY code of an event's ``anomaly_type`` (0: not one the detector teaches —
    the LSTM's, a forecast, no data).

    >>> family_of("point"), family_of("collective:variance"), family_of("collective:lstm")
    (1, 2, 0)
    """
    return FAMILY[_KINDS.get(anomaly_type, 0)]


def pattern_from_incident(
    record: np.void, anomaly_type: str, direction: int, peak_z: float, opened_ms: int,
    until_ms: int,
) -> Pattern | None:
    """The pattern a marked incident teaches its series (None when there is nothing the
    detector can withhold: an LSTM incident, a forecast, a score of 0).

    ``record`` is the series' state now; it says whether the incident's hour of the day has
    seen such excursions on earlier days (then the pattern holds at this time of day only).
    """
    family = family_of(anomaly_type)
    if family == 0 or not peak_z > 0:
        return None
    hour = int(opened_ms % DAY_MS // 3_600_000)
    recurring = float(record["z_hour_count"][hour]) > _RECURRING_COUNT
    minute = int(opened_ms % DAY_MS // 60_000) if recurring else -1
    return Pattern(family, int(np.sign(direction)) if family == 1 else 0, float(peak_z),
                   minute, int(until_ms))


def _same(record: np.void, k: int, p: Pattern) -> bool:
    if record["taught_family"][k] != p.family or record["taught_direction"][k] != p.direction:
        return False
    m = int(record["taught_minute"][k])
    if m < 0 or p.minute < 0:
        return m == p.minute
    apart = abs(m - p.minute)
    return min(apart, 1440 - apart) <= TAUGHT_MINUTES


def teach(record: np.void, pattern: Pattern, now_ms: int) -> int:
    """Write ``pattern`` into ``record`` (a state row, changed in place); the slot used.

    The same pattern taught again (same family, direction and time of day) is renewed in
    its slot, keeping the larger size; otherwise a free or expired slot, else the one that
    expires first, takes it.
    """
    until = record["taught_until_ms"]
    slot = next((k for k in range(TAUGHT_SLOTS)
                 if until[k] > now_ms and _same(record, k, pattern)), None)
    z, until_ms = pattern.z, pattern.until_ms
    if slot is None:
        slot = int(np.argmin(np.where(until > now_ms, until, np.iinfo(np.int64).min)))
    else:
        z = max(z, float(record["taught_z"][slot]))
        until_ms = max(until_ms, int(until[slot]))
    record["taught_family"][slot] = pattern.family
    record["taught_direction"][slot] = pattern.direction
    record["taught_z"][slot] = z
    record["taught_minute"][slot] = pattern.minute
    record["taught_until_ms"][slot] = until_ms
    return slot


def taught_patterns(record: np.void, now_ms: int) -> list[Pattern]:
    """The patterns in force in ``record`` at ``now_ms``."""
    return [
        Pattern(int(record["taught_family"][k]), int(record["taught_direction"][k]),
                float(record["taught_z"][k]), int(record["taught_minute"][k]),
                int(record["taught_until_ms"][k]))
        for k in range(TAUGHT_SLOTS)
        if record["taught_family"][k] and record["taught_until_ms"][k] > now_ms
    ]


def forget(record: np.void) -> int:
    """Undo everything taught to the series (``vigil feedback forget``); how many patterns
    were in force at any time."""
    count = int(np.count_nonzero(record["taught_family"]))
    for name in ("taught_family", "taught_direction", "taught_z", "taught_minute",
                 "taught_until_ms"):
        record[name] = 0
    return count
