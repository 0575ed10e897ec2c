"""History store throughput: rows per second the worker's writer inserts into ClickHouse and
into PostgreSQL, and how fast the lab reads them back.

The rows go the worker's own way: :class:`~vigil.sinks.store.HistoryWriter` buffers a
batch's steps (and the series catalogue's update), flushes ``--batch`` rows at a time; the
figure is rows stored over the wall time of the flushes. Events go the same way (with the
incidents folded from them). Each store gets a fresh database / schema, dropped after.

ClickHouse: ``VIGIL_BENCH_CLICKHOUSE_URL`` or a clickhouse-server started here (Debian's
package). PostgreSQL: ``VIGIL_BENCH_POSTGRES_URL`` (default the machine's,
``postgresql://postgres@127.0.0.1:5432/test``).

    PYTHONPATH=. python -m bench.history_store [--steps 400000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import time
import uuid
from types import SimpleNamespace as NS

import numpy as np

from bench.report import Figure, info, machine_line
from vigil.sinks.store import HistoryWriter, store_for_url

T0 = 1_700_006_400_000
STEP_MS = 60_000


def _batches(series: int, steps: int, per_batch: int):
    """StepResults-like batches: ``per_batch`` steps of every series, time going on."""
    names = [f'bench_metric{{host="h{i:04d}"}}' for i in range(series)]
    rng = np.random.default_rng(0)
    for start in range(0, steps, per_batch):
        k = min(per_batch, steps - start)
        ts = T0 + (start + np.arange(k)) * STEP_MS
        n = k * series
        value = rng.normal(50, 5, n)
        yield names, NS(
            steps=NS(index=np.repeat(np.arange(series), k), ts_ms=np.tile(ts, series),
                     value=value),
            expected=np.full(n, 50.0), lower=np.full(n, 40.0), upper=np.full(n, 60.0),
            z=(value - 50) / 5, anomaly_type=(np.abs(value - 50) > 15).astype(int))


def _events(n: int) -> list[dict]:
    out = []
    for i in range(n):
        incident = f"inc-{i // 3}"
        kind = ("open", "update", "resolve")[i % 3]
        out.append({
            "event_id": f"{incident}-{kind}", "incident_id": incident, "kind": kind,
            "series": f'bench_metric{{host="h{i % 100:04d}"}}', "name": "bench_metric",
            "labels": {"host": f"h{i % 100:04d}"}, "ts_ms": T0 + i * STEP_MS, "value": 90.0,
            "expected": 50.0, "lower": 40.0, "upper": 60.0, "score": 8.0,
            "severity": "warning", "anomaly_type": "point", "detectors": ["seasonal"],
            "reason": "spike", "z": 8.0})
    return out


def measure(url: str, kind: str, series: int, steps: int, batch: int) -> list[Figure]:
    store = store_for_url(url)
    store.ensure_schema()
    writer = HistoryWriter(store, batch_rows=batch, max_rows=10**9)
    try:
        per_batch = max(1, batch // series)
        spent = 0.0

        async def write_steps() -> None:
            nonlocal spent
            for names, results in _batches(series, steps, per_batch):
                writer.add_steps(names, results)
                started = time.perf_counter()
                await writer.flush()
                spent += time.perf_counter() - started

        asyncio.run(write_steps())
        rows = writer.written["steps"] + writer.written["series"]
        assert writer.written["steps"] == series * steps and writer.dropped == 0
        figures = [Figure(f"history_store_{kind}_steps_insert", rows / spent, "rows/s")]
        info(f"{kind}: {rows:,} step and catalogue rows in {spent:.1f} s")

        events = _events(30_000)
        started = time.perf_counter()

        async def write_events() -> None:
            for lo in range(0, len(events), 5_000):
                writer.add_events(events[lo:lo + 5_000])
                await writer.flush()

        asyncio.run(write_events())
        spent = time.perf_counter() - started
        figures.append(Figure(f"history_store_{kind}_events_insert",
                              (writer.written["events"] + writer.written["incidents"]) / spent,
                              "rows/s"))

        if kind == "postgres":
            size = store.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                                 "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON "
                                 "p.oid = i.inhparent JOIN pg_namespace n ON "
                                 "n.oid = p.relnamespace WHERE n.nspname = %s AND "
                                 "p.relname = 'steps'", (store.schema,))[0][0]
        else:
            size = store.execute("SELECT sum(bytes_on_disk) FROM system.parts WHERE active "
                                 "AND database = %(d)s AND table = 'steps'",
                                 {"d": store.database})[0][0]
        figures.append(Figure(f"history_store_{kind}_bytes_per_step",
                              float(size) / writer.written["steps"], "bytes"))

        chosen = store.series_matching(["*"])[:10]
        started = time.perf_counter()
        read = sum(len(ts) for _, ts, _, _ in store.read_points(chosen, 0))
        figures.append(Figure(f"history_store_{kind}_read_points",
                              read / (time.perf_counter() - started), "rows/s"))
        return figures
    finally:
        store.drop()
        store.close()


@contextlib.contextmanager
def _clickhouse():
    url = os.environ.get("VIGIL_BENCH_CLICKHOUSE_URL")
    if url:
        yield url
        return
    from vigil.devtools.embedded import start_clickhouse

    server = start_clickhouse()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2_000, help="Steps per series.")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="Rows per flush (VIGIL_CLICKHOUSE_BATCH_ROWS' default).")
    parser.add_argument("--store", action="append", choices=["clickhouse", "postgres"])
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    for kind in args.store or ["clickhouse", "postgres"]:
        if kind == "postgres":
            base = os.environ.get("VIGIL_BENCH_POSTGRES_URL",
                                  "postgresql://postgres@127.0.0.1:5432/test")
            figures = measure(f"{base}{'&' if '?' in base else '?'}schema={name}", kind,
                              args.series, args.steps, args.batch)
        else:
            with _clickhouse() as base:
                figures = measure(base.rsplit("/", 1)[0] + f"/{name}", kind, args.series,
                                  args.steps, args.batch)
        for figure in figures:
            print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
