"""The per-batch work of the worker, independent of Faust so it can be tested and benchmarked.

* :func:`route` groups a batch's parsed points by target partition of the internal points
  topic (``crc32(series id) mod partitions``) and encodes one compact columnar message per
  partition — never one Kafka message per point.
* :class:`DetectionPipeline` takes a batch of routed points, loads the states of series it
  has not seen from Redis (one MGET), runs the numpy detector over all of them at once,
  turns incident transitions into :class:`~vigil.events.AnomalyEvent` records, and
  saves the touched states (one pipeline) once the caller has delivered the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from vigil.detectors.bank import StateBank
from vigil.detectors.lstm import LstmIncidents
from vigil.detectors.online import (
    ANOMALY_TYPES,
    EVENT_CHANGES,
    EVENT_KINDS,
    SEVERITIES,
    DetectorParams,
    OnlineDetector,
    StepResults,
    describe,
    likelihood,
)
from vigil.detectors.resample import Held, hold_back
from vigil.detectors.teaching import Pattern, pattern_from_incident, taught_patterns, teach
from vigil.detectors.teaching import forget as forget_teaching
from vigil.events import AnomalyEvent, stable_id
from vigil.series import parse_series
from vigil.streams.records import ParseResult
from vigil.streams.state import (
    RedisStateStore,
    pack,
    pack_held,
    readable,
    unpack,
    unpack_held,
)
from vigil.times import iso

if TYPE_CHECKING:
    from vigil.streams.forecasts import ForecastWatch
    from vigil.streams.lstm_scorer import LstmScorer
    from vigil.streams.rates import CounterRates

__all__ = [
    "Batch",
    "DetectionPipeline",
    "RecentSteps",
    "Routed",
    "decode_points",
    "encode_lesson",
    "lesson",
    "encode_points",
    "partition_for",
    "route",
]


log = logging.getLogger(__name__)

_DIRECTIONS = {"up": 1, "down": -1, "both": 0}
#: The ``notifier_state`` kind under which a series' taught patterns are kept (key: series).
TAUGHT_KIND = "taught"


def partition_for(series: str, partitions: int) -> int:
    """The partition of the internal topic that owns ``series`` (stable across processes).

    >>> partition_for('node_load1{host="db-1"}', 8)
    5
    """
    return zlib.crc32(series.encode()) % partitions


def encode_points(
    series: Sequence[str],
    ts_ms: Sequence[int],
    values: Sequence[float],
    counters: Iterable[str] = (),
) -> bytes:
    """A routed message: columnar JSON ``{"s": [...], "t": [...], "v": [...]}``, plus
    ``"c": [...]``, the counter series among them, when there are any."""
    doc: dict = {"s": series, "t": ts_ms, "v": values}
    counters = sorted(counters)
    if counters:
        doc["c"] = counters
    return orjson.dumps(doc)


@dataclass
class Routed:
    """A batch's points grouped for the internal topic: ``(partition, message)`` pairs, each
    message at most ``max_bytes`` long, and the series of points too large to route alone."""

    messages: list[tuple[int, bytes]]
    oversized: list[str]


def _encode_bounded(
    s: list, t: list, v: list, max_bytes: int, out: list[bytes], oversized: list[str],
    counters: set[str] | None = None,
) -> None:
    """Encode columns as one message, or halve them until every message fits ``max_bytes``."""
    blob = encode_points(s, t, v, counters.intersection(s) if counters else ())
    if len(blob) <= max_bytes:
        out.append(blob)
    elif len(s) == 1:
        oversized.append(s[0])
    else:
        half = len(s) // 2
        _encode_bounded(s[:half], t[:half], v[:half], max_bytes, out, oversized, counters)
        _encode_bounded(s[half:], t[half:], v[half:], max_bytes, out, oversized, counters)


def route(
    results: Iterable[ParseResult],
    partitions: int,
    max_points: int = 5_000,
    max_bytes: int = 900_000,
) -> Routed:
    """Group the points of many parse results by target partition.

    One message per partition, split where a partition gets more than ``max_points`` points
    or where its message would be longer than ``max_bytes`` (Kafka limits message size, and
    series ids can be long). A single point longer than ``max_bytes`` is not routed: its
    series is listed in ``oversized`` (for a dead letter).

    >>> r = ParseResult(); r.add("a", 1, 1.0); r.add("a", 2, 2.0); r.add("a", 3, 3.0)
    >>> [(p, len(orjson.loads(m)["s"])) for p, m in route([r], 4, max_points=2).messages]
    [(3, 2), (3, 1)]
    >>> [len(orjson.loads(m)["s"]) for _, m in route([r], 4, max_bytes=30).messages]
    [1, 1, 1]
    """
    groups: dict[int, tuple[list, list, list]] = {}
    cache: dict[str, int] = {}
    counters: set[str] = set()
    for result in results:
        counters |= result.counters
        for s, t, v in zip(result.series, result.ts_ms, result.values, strict=True):
            p = cache.get(s)
            if p is None:
                p = cache[s] = partition_for(s, partitions)
            group = groups.get(p)
            if group is None:
                group = groups[p] = ([], [], [])
            group[0].append(s)
            group[1].append(t)
            group[2].append(v)
    routed = Routed([], [])
    for p, (s, t, v) in groups.items():
        for lo in range(0, len(s), max_points):
            hi = lo + max_points
            blobs: list[bytes] = []
            _encode_bounded(s[lo:hi], t[lo:hi], v[lo:hi], max_bytes, blobs, routed.oversized,
                            counters)
            routed.messages += [(p, blob) for blob in blobs]
    return routed


#: The fields of a lesson (:func:`lesson`) besides ``series`` and ``action``.
LESSON_FIELDS = ("anomaly_type", "direction", "peak_score", "opened_ms", "until_ms")


def lesson(feedback: Mapping, ttl_ms: int) -> dict | None:
    """What an operator's feedback record (:class:`~vigil.events.Feedback` as a dict)
    teaches its series' detector state, or None (acknowledge, mute; a ``not_anomaly``
    without the incident's ``pattern``).

    ``not_anomaly`` teaches the incident's pattern until ``ttl_ms`` after the feedback;
    ``forget`` undoes what the series was taught.

    >>> lesson({"series": "s", "action": "forget"}, 0)
    {'series': 's', 'action': 'forget'}
    >>> lesson({"series": "s", "action": "acknowledge"}, 0) is None
    True
    """
    action = feedback.get("action")
    if action == "forget":
        return {"series": str(feedback["series"]), "action": "forget"}
    pattern = feedback.get("pattern")
    if action != "not_anomaly" or not isinstance(pattern, Mapping):
        return None
    return {
        "series": str(feedback["series"]),
        "action": "not_anomaly",
        "anomaly_type": str(pattern["anomaly_type"]),
        "direction": int(pattern.get("direction") or 0),
        "peak_score": float(pattern["peak_score"]),
        "opened_ms": int(pattern["opened_ms"]),
        "until_ms": int(feedback["ts_ms"]) + int(ttl_ms),
    }


def encode_lesson(lesson: Mapping) -> bytes:
    """A lesson as a message of the internal points topic (``{"teach": {...}}``)."""
    return orjson.dumps({"teach": dict(lesson)})


def _lesson_from(doc: Mapping) -> dict:
    """A decoded lesson, checked (raises KeyError/TypeError/ValueError when malformed)."""
    item = doc["teach"]
    if not isinstance(item, dict) or type(item.get("series")) is not str:
        raise ValueError("a lesson needs a series")
    if item.get("action") == "forget":
        return {"series": item["series"], "action": "forget"}
    if item.get("action") != "not_anomaly":
        raise ValueError(f"unknown lesson action {item.get('action')!r}")
    out = {"series": item["series"], "action": "not_anomaly"}
    for name, kind in zip(LESSON_FIELDS, (str, int, float, int, int), strict=True):
        out[name] = kind(item[name])
    return out


def decode_points(
    messages: Iterable[bytes], counters: set[str] | None = None,
    lessons: list[dict] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Concatenate routed messages back into columns.

    Returns the columns and ``(message number, reason)`` for every message that is not a
    routed batch (the internal topic is ours, but a stray writer must not stop the worker).
    The counter series the messages mark are added to ``counters`` when it is given, and
    operators' lessons (:func:`encode_lesson`) to ``lessons`` (without it they are bad).

    >>> s, t, v, bad = decode_points([encode_points(["a"], [1], [2.0]), b"junk"])
    >>> s, t.tolist(), v.tolist(), bad[0][0]
    (['a'], [1], [2.0], 1)
    """
    series: list[str] = []
    ts: list[int] = []
    values: list[float] = []
    bad: list[tuple[int, str]] = []
    for n, raw in enumerate(messages):
        try:
            doc = orjson.loads(raw)
            if lessons is not None and isinstance(doc, dict) and "teach" in doc:
                lessons.append(_lesson_from(doc))
                continue
            s, t, v = doc["s"], doc["t"], doc["v"]
            if not (len(s) == len(t) == len(v)):
                raise ValueError("columns of different lengths")
            t_arr = np.asarray(t, np.int64)
            v_arr = np.asarray(v, np.float64)
            if not all(type(x) is str for x in s):
                raise ValueError("series ids must be strings")
            marked = doc.get("c") or []
            if type(marked) is not list or not all(type(x) is str for x in marked):
                raise ValueError("counters must be a list of series ids")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            bad.append((n, f"not a routed points message: {type(exc).__name__}: {exc}"))
            continue
        series += s
        if counters is not None:
            counters.update(marked)
        ts.append(t_arr)
        values.append(v_arr)
    if not ts:
        return [], np.empty(0, np.int64), np.empty(0, np.float64), bad
    return series, np.concatenate(ts), np.concatenate(values), bad


def _likelihood(z: float) -> float:
    return float(likelihood(max(float(z), 0.0)))


class RecentSteps:
    """The last ``steps`` scored steps of every series, in worker memory, for alert charts.

    A ring per series, 18 bytes a step: the step's time in whole seconds (``uint32``: steps
    are whole seconds on their grid, good until 2106), value, expected and the band's half
    width (``float32``: the band is symmetric, lower = expected − band) and z (``float16``,
    clipped to ±60,000: the chart only colours it). Filled from each batch's results in a
    few numpy operations; read only when an event is built. Not persisted: after a restart,
    charts start from then.

    >>> from types import SimpleNamespace as NS
    >>> rs = RecentSteps(steps=3)
    >>> res = NS(steps=NS(index=np.array([0, 0, 0, 0]), ts_ms=np.array([1, 2, 3, 4]) * 1000,
    ...                   value=np.array([1., 2., 3., 4.])),
    ...          expected=np.zeros(4), lower=-np.ones(4), upper=np.ones(4), z=np.zeros(4))
    >>> rs.context("cpu", res, i=1)["ts_ms"]  # an event in the batch: the steps up to it
    [1000, 2000]
    >>> rs.record(["cpu"], res)
    >>> ctx = rs.context("cpu")  # the ring keeps the newest three
    >>> ctx["ts_ms"], ctx["value"], ctx["lower"]
    ([2000, 3000, 4000], [2.0, 3.0, 4.0], [-1.0, -1.0, -1.0])
    """

    FIELDS = ("value", "expected", "lower", "upper", "z")
    #: Bytes one step takes in the rings (time, value, expected, band, z).
    STEP_BYTES = 4 + 4 + 4 + 4 + 2
    _Z_MAX = 60_000.0

    def __init__(self, steps: int, max_series: int = 500_000) -> None:
        self.steps = steps
        self.max_series = max_series
        self._slot: dict[str, int] = {}
        self._allocate(0)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        shape = (capacity, self.steps)
        self.ts_s = np.zeros(shape, np.uint32)
        self.value = np.full(shape, np.nan, np.float32)
        self.expected = np.full(shape, np.nan, np.float32)
        self.band = np.full(shape, np.nan, np.float32)
        self.z = np.full(shape, np.nan, np.float16)
        self.head = np.zeros(capacity, np.int32)
        self.length = np.zeros(capacity, np.int32)

    def _rings(self) -> tuple[np.ndarray, ...]:
        return self.ts_s, self.value, self.expected, self.band, self.z, self.head, self.length

    def _grow(self, needed: int) -> None:
        capacity = max(1024, self.capacity)
        while capacity < needed:
            capacity += capacity // 4  # a quarter at a time: at most 25 % of the rings unused
        old_rings, old = self._rings(), self.capacity
        self._allocate(capacity)
        for new, ring in zip(self._rings(), old_rings, strict=True):
            new[:old] = ring

    def _slots(self, series: list[str]) -> np.ndarray:
        new = [s for s in series if s not in self._slot]
        if len(self._slot) + len(new) > self.max_series:
            self._slot.clear()
            self._allocate(0)
            new = list(dict.fromkeys(series))
        for s in new:
            self._slot[s] = len(self._slot)
        if len(self._slot) > self.capacity:
            self._grow(len(self._slot))
        return np.fromiter((self._slot[s] for s in series), np.int64, len(series))

    @classmethod
    def _compact(cls, ts_ms, value, expected, upper, z) -> tuple[np.ndarray, ...]:
        """Steps as the rings store them (see the class docstring)."""
        expected = np.asarray(expected, np.float64)
        return ((np.asarray(ts_ms, np.int64) // 1000).astype(np.uint32),
                np.asarray(value, np.float32), expected.astype(np.float32),
                (np.asarray(upper, np.float64) - expected).astype(np.float32),
                np.clip(np.asarray(z, np.float64), -cls._Z_MAX, cls._Z_MAX).astype(np.float16))

    def record(self, touched: list[str], results: StepResults) -> None:
        """Append a batch's steps (ordered by series, then time) to the rings."""
        n = len(results.steps.ts_ms)
        if self.steps == 0 or n == 0:
            return
        # Steps come ordered by series, then time: each series is one contiguous run.
        index = results.steps.index
        starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
        counts = np.diff(np.r_[starts, n])
        slots = np.repeat(self._slots(touched)[index[starts]], counts)
        rank = np.arange(n) - np.repeat(starts, counts)
        keep = np.flatnonzero(rank >= np.repeat(counts, counts) - self.steps)  # newest fit
        rows = slots[keep]
        pos = (self.head[rows] + rank[keep]) % self.steps
        columns = self._compact(results.steps.ts_ms[keep], results.steps.value[keep],
                                results.expected[keep], results.upper[keep], results.z[keep])
        for ring, column in zip(self._rings()[:5], columns, strict=True):
            ring[rows, pos] = column
        firsts = slots[starts]
        self.head[firsts] = (self.head[firsts] + counts) % self.steps
        self.length[firsts] = np.minimum(self.length[firsts] + counts, self.steps)

    def context(self, series: str, results: StepResults | None = None, i: int = -1) -> dict | None:
        """The series' last ``steps`` steps up to step ``i`` of ``results`` (a batch not yet
        recorded), oldest first, as JSON-ready lists; None if there are none."""
        parts: list[tuple[np.ndarray, ...]] = []  # (ts_s, value, expected, band, z) as stored
        wanted = self.steps
        if results is not None and i >= 0:
            index = results.steps.index
            lo = i
            while lo > 0 and index[lo - 1] == index[i] and i - lo + 1 < wanted:
                lo -= 1  # this batch's earlier steps of the series (contiguous: ordered by series)
            own = slice(lo, i + 1)
            parts.append(self._compact(results.steps.ts_ms[own], results.steps.value[own],
                                       results.expected[own], results.upper[own],
                                       results.z[own]))
            wanted -= i + 1 - lo
        slot = self._slot.get(series)
        if slot is not None and wanted > 0 and self.length[slot]:
            length = int(min(self.length[slot], wanted))
            idx = (self.head[slot] - length + np.arange(length)) % self.steps
            parts.insert(0, tuple(ring[slot, idx] for ring in self._rings()[:5]))
        if not parts or self.steps == 0:
            return None
        ts_s, value, expected, band, z = (np.concatenate([p[k] for p in parts]) for k in range(5))
        out: dict = {"ts_ms": (ts_s.astype(np.int64) * 1000).tolist()}
        columns = (value, expected, expected - band, expected + band, z)
        for name, column in zip(self.FIELDS, columns, strict=True):
            column = column.astype(np.float32).tolist()
            out[name] = [None if v != v else float(f"{v:.6g}") for v in column]  # NaN → null
        return out


@dataclass
class Batch:
    """What one detection batch produced: events to send, then states to save."""

    events: list[AnomalyEvent]
    series: list[str]
    states: list[bytes]
    points: int
    steps: int
    dropped: int
    #: The dropped points by reason: ``late`` (at or before the series' watermark: older than
    #: the allowed lateness, or a replay), ``duplicate`` (a timestamp already held or in the
    #: batch), ``not_finite`` (NaN or infinite value).
    dropped_by_reason: dict[str, int] | None = None
    #: Per series, the points it holds back (a :func:`~vigil.streams.state.pack_held`
    #: value, None = none); None when no lateness is allowed.
    held: list[bytes | None] | None = None
    #: The detector's per-step outputs (``steps.index`` points into ``series``), for storage.
    results: StepResults | None = None
    #: CPU seconds (this thread's) the detector took: resampling and the compiled step.
    detector_cpu_s: float = 0.0
    #: Counter samples that gave no rate (a counter's first sample, a reset, one not after
    #: the previous), see :class:`~vigil.streams.rates.CounterRates`.
    counter_points_held: int = 0


class DetectionPipeline:
    """State cache + detector + event building for the series one worker owns.

    ``lateness_steps`` is the allowed lateness (:func:`~vigil.detectors.resample.hold_back`):
    each series holds back the raw points of its newest ``lateness_steps`` steps (kept in
    memory and saved beside its state), so points up to that many steps out of order join
    their steps instead of being dropped. 0 holds nothing back: a step closes as soon as a
    later point arrives.

    ``taught_store`` (optional; the PostgreSQL ``notifier_state`` table when PostgreSQL is
    the history store) keeps each series' taught patterns beside its Redis state: after a
    Redis that lost its data, a series starting afresh gets them back (docs/feedback.md).

    ``rates`` (optional) turns counters into per-second rates: after the hold-back, so a
    counter's samples that arrive out of order (within the lateness) are taken in time order
    instead of being skipped; with no lateness, before everything, as they arrive.
    """

    def __init__(
        self,
        store: RedisStateStore,
        params: DetectorParams | None = None,
        max_cached_series: int = 500_000,
        detector_name: str = "seasonal",
        directions: Mapping[str, str] | None = None,
        history_steps: int = 0,
        lstm: LstmScorer | None = None,
        lateness_steps: int = 0,
        forecasts: ForecastWatch | None = None,
        taught_store: Any = None,
        rates: CounterRates | None = None,
    ) -> None:
        self.store = store
        self.rates = rates
        self.taught_store = taught_store
        self._taught: dict[str, str] | None = None  # series → its patterns (JSON), once read
        self.lateness_steps = lateness_steps
        self.forecasts = forecasts  # capacity forecasts (vigil.streams.forecasts), optional
        # The global LSTM (optional): its score contributes to the seasonal detector's
        # events and opens incidents of its own where the seasonal detector has none.
        self.lstm = lstm
        self.detector = OnlineDetector(params)
        p = self.detector.params
        z_open = p.z_open if lstm is None else lstm.z_alert
        self.lstm_incidents = LstmIncidents(
            z_open, p.z_close, max(p.z_critical, z_open), p.calm_steps_to_resolve
        )
        self.max_cached_series = max_cached_series
        self.detector_name = detector_name
        self.directions = dict(directions or {})
        self.history = RecentSteps(history_steps, max_cached_series)
        self._cache: dict[str, bytes] = {}
        self._held: dict[str, bytes | None] = {}  # series → held-back points (lateness > 0)
        self._direction_cache: dict[str, int] = {}
        self.unreadable_states = 0

    def direction(self, series: str) -> int:
        """+1 (alert only above), -1 (only below) or 0 (both), from the first matching rule.

        >>> p = DetectionPipeline(None, directions={"disk_used*": "up"})
        >>> p.direction('disk_used_percent{host="a"}'), p.direction("cpu")
        (1, 0)
        """
        code = self._direction_cache.get(series)
        if code is None:
            name = parse_series(series)[0]
            code = 0
            for pattern, way in self.directions.items():
                if fnmatch.fnmatchcase(name, pattern):
                    code = _DIRECTIONS[way]
                    break
            if len(self._direction_cache) >= self.max_cached_series:
                self._direction_cache.clear()
            self._direction_cache[series] = code
        return code

    def forget(self) -> None:
        """Drop the in-memory copies (on rebalance: Redis holds the truth)."""
        self._cache.clear()
        self._held.clear()
        if self.lstm is not None:
            self.lstm.forget()  # the residual windows refill from live data
            self.lstm_incidents.open.clear()

    @property
    def cached_series(self) -> int:
        return len(self._cache)

    async def process(
        self, series: list[str], ts_ms: np.ndarray, values: np.ndarray, resumed: bool = False,
        counters: Iterable[str] = (),
    ) -> Batch:
        """Detect on one batch; the caller sends ``events`` and then calls :meth:`save`.

        ``resumed``: the batch continues a stream processed before (see
        :meth:`RedisStateStore.load`). ``counters``: series the input marked as counters
        (turned into rates with ``rates``, as are those its patterns name)."""
        raw_points, counter_points_held = len(series), 0
        if self.rates is not None and self.lateness_steps == 0:
            series, ts_ms, values, counter_points_held = self.rates.apply(
                series, np.asarray(ts_ms, np.int64), np.asarray(values, np.float64), counters)
        row_of: dict[str, int] = {}
        for s in series:
            if s not in row_of:
                row_of[s] = len(row_of)
        touched = list(row_of)
        bank = await self._states(touched, resumed)
        index = np.fromiter((row_of[s] for s in series), np.int64, len(series))
        direction = None
        if self.directions:
            direction = np.fromiter((self.direction(s) for s in touched), np.int8, len(touched))
        ts_ms = np.asarray(ts_ms, np.int64)
        values = np.asarray(values, np.float64)
        late = duplicate = 0
        held = None
        if self.lateness_steps > 0:
            release, still, late, duplicate = hold_back(
                self._held_points(touched), Held(index, ts_ms, values), bank["watermark_ms"],
                self.detector.params.step_ms, self.lateness_steps,
            )
            index, ts_ms, values = release.index, release.ts_ms, release.values
            held = self._pack_held(len(touched), still)
            if self.rates is not None:  # released in time order: now the rates
                names, ts_ms, values, counter_points_held = self.rates.apply(
                    [touched[i] for i in index.tolist()], ts_ms, values, counters)
                index = np.fromiter((row_of[s] for s in names), np.int64, len(names))
        forecast_events: list[AnomalyEvent] = []
        cpu_started = time.thread_time()
        if self.forecasts is None:
            results = self.detector.process(bank, index, ts_ms, values, direction)
        else:  # the same results, with the capacity forecasts (vigil.streams.forecasts)
            results, forecast_events = self.forecasts.process(
                self.detector, bank, touched, index, ts_ms, values, direction,
                self.history.context)
        detector_cpu_s = time.thread_time() - cpu_started
        # After hold_back, what the resampler drops is only not finite (the rest is newer
        # than the watermark and unique); without it, the watermark rule covers all reasons.
        not_finite = results.steps.dropped if held is not None else 0
        dropped_by_reason = {"late": late, "duplicate": duplicate, "not_finite": not_finite}
        if held is None:
            dropped_by_reason["late"] = results.steps.dropped
        states = pack(bank)
        lstm_z = None if self.lstm is None else await self.lstm.score(touched, results)
        events = self._events(results, touched, lstm_z) + forecast_events
        self.history.record(touched, results)  # after the events: they read earlier batches
        return Batch(
            events=events,
            series=touched,
            states=states,
            points=raw_points - counter_points_held,
            counter_points_held=counter_points_held,
            steps=len(results.steps),
            dropped=sum(dropped_by_reason.values()),
            dropped_by_reason=dropped_by_reason,
            held=held,
            results=results,
            detector_cpu_s=detector_cpu_s,
        )

    async def _states(self, touched: list[str], resumed: bool = False) -> StateBank:
        """The states of ``touched`` (from memory, else Redis; fresh where none is stored)."""
        missing = [s for s in touched if s not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.max_cached_series:
                self._cache.clear()
                self._held.clear()
                missing = touched
            stored_values = await self.store.load(missing, resumed)
            if self.lateness_steps > 0:
                self._held.update(zip(missing, await self.store.load_held(missing),
                                      strict=True))
            for s, value in zip(missing, stored_values, strict=True):
                if readable(value):
                    self._cache[s] = value
                elif value is not None:
                    # Not ours, or from another version: start the series afresh, say so.
                    log.warning("state of %s is unreadable (%d bytes); starting afresh",
                                s, len(value))
                    self.unreadable_states += 1
        bank, _ = unpack([self._cache.get(s) for s in touched])
        if missing and self.taught_store is not None and self.store.data_lost:
            await self._restore_taught(bank, touched, missing)
        return bank

    async def _restore_taught(self, bank: StateBank, touched: list[str],
                              missing: list[str]) -> None:
        """Give the series that start afresh after Redis lost its data the patterns operators
        taught them (kept in ``taught_store``); Redis alone when that store fails."""
        if self._taught is None:
            try:
                self._taught = await asyncio.to_thread(self.taught_store.all, TAUGHT_KIND)
            except Exception as exc:  # noqa: BLE001 - Redis stays the working copy
                log.warning("cannot read the taught patterns from the history store: %s", exc)
                return
        fresh = [s for s in missing if s not in self._cache and s in self._taught]
        if not fresh:
            return
        row = {s: k for k, s in enumerate(touched)}
        for s in fresh:
            for item in orjson.loads(self._taught[s]):
                teach(bank.records[row[s]], Pattern(**item), 0)
        states = pack(bank)
        self._cache.update((s, states[row[s]]) for s in fresh)
        log.warning("restored the taught patterns of %d series that Redis had lost", len(fresh))

    async def _keep_taught(self, bank: StateBank, touched: list[str]) -> None:
        """Write the touched series' taught patterns to ``taught_store`` (none: deleted)."""
        if self.taught_store is None:
            return
        kept, gone = {}, []
        for k, s in enumerate(touched):
            patterns = taught_patterns(bank.records[k], 0)
            if patterns:
                kept[s] = orjson.dumps([dataclasses.asdict(p) for p in patterns]).decode()
            else:
                gone.append(s)

        def write() -> None:
            for s, value in kept.items():
                self.taught_store.put(TAUGHT_KIND, s, value)
            if gone:
                self.taught_store.delete(TAUGHT_KIND, gone)

        try:
            await asyncio.to_thread(write)
        except Exception as exc:  # noqa: BLE001 - Redis stays the working copy
            log.warning("cannot keep the taught patterns in the history store: %s", exc)
            return
        if self._taught is not None:
            self._taught.update(kept)
            for s in gone:
                self._taught.pop(s, None)

    async def teach(self, lessons: Sequence[dict], resumed: bool = False) -> int:
        """Apply operators' teaching (:func:`decode_points`' ``lessons``) to their series'
        states and save them; how many changed a state.

        A lesson is ``{"series", "action": "not_anomaly" | "forget", "anomaly_type",
        "direction", "peak_score", "opened_ms", "until_ms"}`` (see :func:`lesson`); it comes
        through the series' partition of the internal topic, so it lands in order with the
        series' points, whichever worker owns the series.
        """
        touched = list(dict.fromkeys(str(lesson["series"]) for lesson in lessons))
        bank = await self._states(touched, resumed)
        row = {s: k for k, s in enumerate(touched)}
        changed = 0
        for lesson in lessons:
            record = bank.records[row[str(lesson["series"])]]
            if lesson["action"] == "forget":
                changed += forget_teaching(record) > 0
                continue
            pattern = pattern_from_incident(
                record, str(lesson["anomaly_type"]), int(lesson["direction"]),
                float(lesson["peak_score"]), int(lesson["opened_ms"]), int(lesson["until_ms"]))
            if pattern is None:
                log.info("nothing to teach %s from a %r incident", lesson["series"],
                         lesson["anomaly_type"])
                continue
            teach(record, pattern, int(lesson["opened_ms"]))
            log.info("taught %s: %s", lesson["series"], pattern.describe())
            changed += 1
        states = pack(bank)
        await self.store.save(touched, states, points=0)
        self._cache.update(zip(touched, states, strict=True))
        await self._keep_taught(bank, touched)
        return changed

    def _held_points(self, touched: list[str]) -> Held:
        """The points the touched series hold back, as bank rows (``touched`` order)."""
        parts = [(row, *unpack_held(self._held.get(s))) for row, s in enumerate(touched)]
        parts = [p for p in parts if len(p[1])]
        if not parts:
            return Held.empty()
        return Held(
            np.concatenate([np.full(len(t), row, np.int64) for row, t, _ in parts]),
            np.concatenate([t for _, t, _ in parts]),
            np.concatenate([v for _, _, v in parts]),
        )

    @staticmethod
    def _pack_held(series_count: int, held: Held) -> list[bytes | None]:
        """One :func:`pack_held` value per series (None where it holds nothing)."""
        out: list[bytes | None] = [None] * series_count
        if not len(held.index):
            return out
        bounds = np.flatnonzero(np.r_[True, held.index[1:] != held.index[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            out[int(held.index[lo])] = pack_held(held.ts_ms[lo:hi], held.values[lo:hi])
        return out

    async def save(self, batch: Batch) -> None:
        """Persist the batch's states (with their watermarks) and keep them in memory."""
        # Count accepted points only: a redelivered batch (after a rebalance) adds nothing.
        points = batch.points - batch.dropped
        if batch.held is None:
            await self.store.save(batch.series, batch.states, points=points)
        else:
            await self.store.save(batch.series, batch.states, points=points, held=batch.held)
            self._held.update(zip(batch.series, batch.held, strict=True))
        self._cache.update(zip(batch.series, batch.states, strict=True))

    def _event(
        self, results: StepResults, i: int, series: str, kind: str, *, score: float, **fields
    ) -> AnomalyEvent:
        """The event of step ``i``: the step's value and band, plus ``fields`` (ids, verdict)."""
        name, labels = parse_series(series)
        ts = int(results.steps.ts_ms[i])
        return AnomalyEvent(
            kind=kind,
            series=series,
            name=name,
            labels=labels,
            ts=iso(ts),
            ts_ms=ts,
            value=float(results.steps.value[i]),
            expected=float(results.expected[i]),
            lower=float(results.lower[i]),
            upper=float(results.upper[i]),
            score=round(score, 6),
            context=self.history.context(series, results, i) if kind != "resolve" else None,
            **fields,
        )

    def _events(
        self, results: StepResults, touched: list[str], lstm_z: np.ndarray | None = None
    ) -> list[AnomalyEvent]:
        events = []
        for i in results.events():
            series = touched[results.steps.index[i]]
            kind = EVENT_KINDS[results.event[i]]
            ts = int(results.steps.ts_ms[i])
            start = int(results.incident_start_ms[i])
            incident_id = stable_id(series, start)
            detectors = [self.detector_name]
            score = float(results.score[i])
            if lstm_z is not None and lstm_z[i] >= self.lstm_incidents.z_open:
                # The LSTM agrees at this step: it contributed; the likelihood is the larger.
                detectors.append("lstm")
                score = max(score, _likelihood(lstm_z[i]))
            anomaly = ANOMALY_TYPES[results.anomaly_type[i]]
            if results.contextual[i]:
                anomaly_type = "contextual"
            elif anomaly == "point":
                anomaly_type = "point"
            elif anomaly == "none":
                anomaly_type = "none"
            else:
                anomaly_type = f"collective:{anomaly}"
            events.append(
                self._event(
                    results, i, series, kind,
                    event_id=stable_id(series, start, kind, ts),
                    incident_id=incident_id,
                    score=score,
                    severity=SEVERITIES[results.severity[i]],
                    anomaly_type=anomaly_type,
                    detectors=detectors,
                    reason=describe(results, i),
                    change=EVENT_CHANGES[results.change[i]] if kind == "update" else "",
                    z=round(float(results.z[i]), 3),
                )
            )
        if lstm_z is not None:
            events += self._lstm_events(results, touched, lstm_z)
        return events

    def _lstm_events(
        self, results: StepResults, touched: list[str], lstm_z: np.ndarray
    ) -> list[AnomalyEvent]:
        """Events of the incidents the LSTM opens where the seasonal detector has none."""
        found = self.lstm_incidents.step(
            touched, results.steps.index, results.steps.ts_ms, lstm_z, results.incident_start_ms
        )
        events = []
        for i, code, start in found:
            series = touched[results.steps.index[i]]
            kind = EVENT_KINDS[code]
            ts = int(results.steps.ts_ms[i])
            z = float(np.nan_to_num(lstm_z[i], nan=0.0))
            severity = "critical" if z >= self.lstm_incidents.z_critical else "warning"
            if kind == "resolve":
                reason = "the LSTM's window score is back to normal"
            else:
                reason = (f"the LSTM scores the last {self.lstm.model.window} steps' shape at "
                          f"z={z:.1f} (the seasonal detector alone sees no incident)")
            events.append(
                self._event(
                    results, i, series, kind,
                    event_id=stable_id(series, start, "lstm", kind, ts),
                    incident_id=stable_id(series, start, "lstm"),
                    score=_likelihood(z),
                    severity=severity,
                    anomaly_type="collective:lstm",
                    detectors=["lstm"],
                    reason=reason,
                    z=round(z, 3),
                )
            )
        return events

