"""The ingest's event-time merge of its input partitions (vigil/streams/input_order.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.streams.input_order import InputOrder
from vigil.streams.records import ParseResult

STEP = 60_000


def _message(*points: tuple[str, int, float]) -> ParseResult:
    result = ParseResult()
    for s, t, v in points:
        result.add(s, t, v)
    return result


class _Topic:
    """Four partitions holding one series' points round-robin (an unkeyed producer), read
    back a chunk of one partition at a time, as a consumer reads a backlog."""

    def __init__(self, points: int, partitions: int = 4) -> None:
        self.records = {p: [] for p in range(partitions)}
        for i in range(points):
            self.records[i % partitions].append(_message(("cpu", i * STEP, float(i))))
        self.read = {p: 0 for p in self.records}

    def offsets(self, partition):
        return None, len(self.records[partition])  # (committed, high watermark)

    def deliver(self, order: InputOrder, partition: int, n: int, now_s: float) -> None:
        start = self.read[partition]
        for offset in range(start, min(start + n, len(self.records[partition]))):
            order.add(partition, offset, self.records[partition][offset], (partition, offset),
                      now_s)
            self.read[partition] = offset + 1


def _drain(order: InputOrder, topic: _Topic, now_s: float, out: list, acked: list) -> None:
    released = order.release(topic.offsets, now_s)
    for result in released.results:
        out.extend(result.ts_ms)
    acked.extend(released.done)


def test_a_backlog_read_a_partition_at_a_time_comes_out_in_time_order():
    topic = _Topic(300)
    order: InputOrder = InputOrder(idle_s=10.0)
    order.assign(topic.records, now_s=0.0)
    out: list[int] = []
    acked: list = []
    for partition in topic.records:  # partition 0's whole backlog first, then 1, 2, 3
        while topic.read[partition] < len(topic.records[partition]):
            topic.deliver(order, partition, 10, now_s=0.1)
            _drain(order, topic, 0.1, out, acked)
    assert out == [i * STEP for i in range(300)]
    assert sorted(acked) == sorted((p, o) for p in topic.records
                                   for o in range(len(topic.records[p])))
    assert order.held == 0 and order.waiting == 0


def test_points_wait_only_for_partitions_with_older_records_still_to_read():
    topic = _Topic(8)
    order: InputOrder = InputOrder(idle_s=10.0)
    order.assign(topic.records, now_s=0.0)
    out: list[int] = []
    acked: list = []
    topic.deliver(order, 0, 2, now_s=0.1)  # steps 0 and 4
    _drain(order, topic, 0.1, out, acked)
    assert out == [] and order.held == 2  # partitions 1-3 are not read yet
    for p in (1, 2, 3):
        topic.deliver(order, p, 1, now_s=0.2)  # steps 1, 2, 3
    _drain(order, topic, 0.2, out, acked)
    # Partitions 1-3 have one record left each (steps 5-7): up to the oldest newest, step 1.
    assert out == [0, STEP]
    assert acked == [(0, 0), (1, 0)]
    for p in (1, 2, 3):
        topic.deliver(order, p, 1, now_s=0.3)
    _drain(order, topic, 0.3, out, acked)
    assert out == [i * STEP for i in range(8)]


def test_live_partitions_read_to_their_end_hold_nothing_back():
    order: InputOrder = InputOrder(idle_s=10.0)
    order.assign([0, 1], now_s=0.0)
    # Partition 0: its record at offset 5 was the last (high watermark 6); partition 1: its
    # committed offset is its high watermark, nothing to read.
    ends = {0: (5, 6), 1: (9, 9)}
    order.add(0, 5, _message(("a", 3 * STEP, 1.0)), "m", now_s=0.1)
    released = order.release(ends.get, now_s=0.1)
    assert [r.ts_ms for r in released.results] == [[3 * STEP]] and released.done == ["m"]


def test_an_unknown_or_stalled_partition_holds_back_for_idle_s_at_most():
    order: InputOrder = InputOrder(idle_s=2.0)
    order.assign([0, 1], now_s=0.0)
    unknown = {0: (None, 1), 1: (None, None)}  # partition 1: no fetch answered yet
    order.add(0, 0, _message(("a", STEP, 1.0)), "m", now_s=0.5)
    assert len(order.release(unknown.get, now_s=1.0)) == 0
    released = order.release(unknown.get, now_s=2.0)  # partition 1 idle for 2 s
    assert len(released) == 1 and released.done == ["m"]

    # A partition with records left that stops delivering: the same.
    order.add(1, 0, _message(("a", 2 * STEP, 1.0)), "n", now_s=3.0)
    order.add(0, 1, _message(("a", 5 * STEP, 1.0)), "o", now_s=3.0)
    lagging = {0: (None, 2), 1: (None, 50)}
    assert order.release(lagging.get, now_s=3.0).done == ["n"]  # up to partition 1's newest
    assert order.release(lagging.get, now_s=4.9).done == []
    assert order.release(lagging.get, now_s=5.0).done == ["o"]


def test_too_many_waiting_points_send_the_oldest_on():
    order: InputOrder = InputOrder(idle_s=10.0, max_held=5)
    order.assign([0, 1], now_s=0.0)
    ends = {0: (None, 100), 1: (None, 100)}.get
    for i in range(8):
        order.add(0, i, _message(("a", i * STEP, 1.0)), i, now_s=0.1)
    released = order.release(ends, now_s=0.1)  # partition 1 unread: nothing may go, but 8 wait
    assert released.forced == 3 and released.results[0].ts_ms == [0, STEP, 2 * STEP]
    assert order.held == 5


def test_a_revoked_partition_takes_its_waiting_points_with_it():
    order: InputOrder = InputOrder(idle_s=10.0)
    order.assign([0, 1], now_s=0.0)
    order.add(1, 0, _message(("a", STEP, 1.0)), "m", now_s=0.1)
    assert len(order.release({0: (None, 5), 1: (None, 9)}.get, now_s=0.1)) == 0
    order.assign([0], now_s=0.2)  # the new owner reads partition 1 from its committed offset
    assert order.held == 0 and order.waiting == 0


def test_messages_without_points_and_counters_pass_through():
    order: InputOrder = InputOrder(idle_s=10.0)
    order.assign([0, 1], now_s=0.0)
    counter = _message(("bytes", 2 * STEP, 10.0))
    counter.counters.add("bytes")
    order.add(0, 0, counter, "counter", now_s=0.1)
    order.add(0, 1, ParseResult(), "rejected", now_s=0.1)
    order.add(1, 0, _message(("cpu", STEP, 1.0)), "cpu", now_s=0.1)
    released = order.release({0: (None, 2), 1: (None, 1)}.get, now_s=0.1)
    assert released.results[0].series == ["cpu", "bytes"]
    assert released.results[0].counters == {"bytes"}
    assert sorted(released.done) == ["counter", "cpu", "rejected"]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    reads=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 12)), max_size=80),
    seed=st.integers(0, 2**16),
)
def test_any_reading_order_gives_every_point_once_and_in_time_order(sizes, reads, seed):
    """Each partition holds points of a few series in time order (what one producer's
    partition holds); whatever order the partitions are read in, every point comes out
    once, each series' points in time order, and every message is acked once."""
    rng = np.random.default_rng(seed)
    records = {}
    for p, n in enumerate(sizes):
        ts = np.sort(rng.integers(0, 1_000, n)) * STEP
        records[p] = [_message((f"s{rng.integers(3)}", int(t), float(i)))
                      for i, t in enumerate(ts)]
    read = dict.fromkeys(records, 0)
    offsets = lambda p: (None, len(records[p]))  # noqa: E731
    order: InputOrder = InputOrder(idle_s=1e9)
    order.assign(records, now_s=0.0)
    out: list[tuple[str, int]] = []
    acked: list = []

    def drain() -> None:
        released = order.release(offsets, 0.0)
        for r in released.results:
            out.extend(zip(r.series, r.ts_ms, strict=True))
        acked.extend(released.done)

    for p, n in reads + [(p, 10**6) for p in records]:  # then everything to its end
        p %= len(records)
        for offset in range(read[p], min(read[p] + n, len(records[p]))):
            order.add(p, offset, records[p][offset], (p, offset), 0.0)
            read[p] = offset + 1
        drain()
    expected = sorted((r.series[0], r.ts_ms[0]) for rs in records.values() for r in rs)
    assert sorted(out) == expected
    for s in {s for s, _ in out}:
        times = [t for name, t in out if name == s]
        assert times == sorted(times)
    assert sorted(acked) == sorted((p, o) for p in records for o in range(len(records[p])))
