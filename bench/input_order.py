"""What the ingest's event-time merge of its input partitions costs per point (issue 17).

:class:`~vigil.streams.input_order.InputOrder` alone, in process: batches of 2,000 messages
of 100 points each (10k series), read round-robin from 4 partitions that are all read to
their end, so every batch goes on whole — the merge's bookkeeping and its sort, not any
waiting. Two orders: the batch's points already in time order (``*_in_order``), and four
partitions a quarter of the batch apart in time, so the merge must sort (``*_sorted``).

Run::

    PYTHONPATH=. python -m bench.input_order [--batches 10]

Prints ``input_merge_in_order`` and ``input_merge_sorted`` in ns per point (CPU of this
process: ``add`` for every message plus one ``release`` a batch).
"""

from __future__ import annotations

import argparse
import time

from bench.report import Figure, machine_line
from vigil.streams.input_order import InputOrder
from vigil.streams.records import ParseResult

MESSAGES = 2_000
PER_MESSAGE = 100
PARTITIONS = 4
MINUTE_MS = 60_000


def _batch(spread: bool) -> list[ParseResult]:
    """One batch's messages; with ``spread``, partition ``i % 4`` is ``i % 4`` quarters of the
    batch's time span ahead of partition 0 (a backlog read a chunk of each partition)."""
    messages = []
    for i in range(MESSAGES):
        minute = (i % PARTITIONS) * (MESSAGES // PARTITIONS) + i // PARTITIONS if spread else i
        result = ParseResult()
        for j in range(PER_MESSAGE):
            result.add(f"s{(i * PER_MESSAGE + j) % 10_000}", minute * MINUTE_MS, 1.0)
        messages.append(result)
    return messages


def ns_per_point(spread: bool, batches: int) -> float:
    messages = _batch(spread)
    order: InputOrder[int] = InputOrder()
    order.assign(range(PARTITIONS), 0.0)
    read_to_end = {p: (None, 0) for p in range(PARTITIONS)}.get  # nothing left to read
    started = time.process_time()
    for b in range(batches):
        for i, message in enumerate(messages):
            order.add(i % PARTITIONS, b * MESSAGES + i, message, i, 0.0)
        released = order.release(read_to_end, 0.0)
        assert len(released) == MESSAGES * PER_MESSAGE
    return (time.process_time() - started) / (batches * MESSAGES * PER_MESSAGE) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    for name, spread in (("in_order", False), ("sorted", True)):
        print(Figure(f"input_merge_{name}", ns_per_point(spread, args.batches), "ns/point")
              .line(), flush=True)


if __name__ == "__main__":
    main()
