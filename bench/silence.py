"""What the stopped-series check costs the worker (issue 20: < 5 % of its CPU at 100k series).

A fleet of ``--series`` series reporting once a minute goes through the worker's detection
path in process — :class:`~vigil.streams.pipeline.DetectionPipeline` with its Redis state
store (batches of 5,000 points: load, detect, save) — and through
:class:`~vigil.streams.silence.StoppedSeries` beside it, as in the worker: ``observe`` on
every batch, and the wall-clock ``check`` + ``save`` (the seen-times written to Redis) every
``--check-s`` seconds. CPU time of this process (``time.process_time``), so Redis' own work
is not counted on either side; Kafka and Faust are left out too, which makes the share an
upper bound (the real worker spends more per point than this path).

Run (Redis on 127.0.0.1:6379, database 15 by default; keys under a throw-away prefix)::

    PYTHONPATH=. python -m bench.silence [--series 100000] [--minutes 4]

Prints ``silence_observe_per_point``, ``silence_check`` (one check over every series),
``silence_save`` (writing every partition's seen-times, done at most every 2 minutes),
``detection_per_point`` and ``silence_cpu_share``: observe + checks (every ``--check-s``) +
saves (every 2 min), over the detection path, per minute of the fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import numpy as np
import redis.asyncio as aioredis

from bench.report import Figure, info, machine_line
from vigil.detectors.online import warm_up
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings
from vigil.streams.silence import StoppedSeries
from vigil.streams.state import RedisStateStore

__all__ = ["measure_silence"]

MIN = 60_000
BATCH_POINTS = 5_000


async def _measure(series: int, minutes: int, check_s: float, redis_url: str) -> dict:
    prefix = f"vigil-bench-{uuid.uuid4().hex[:8]}:"
    client = aioredis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, redis_prefix=prefix, nodata_check_s=check_s)
    names = [f'node_metric_{i % 50}{{host="host-{i // 50:05d}"}}' for i in range(series)]
    pipeline = DetectionPipeline(RedisStateStore(client, prefix, idle_expiry_ms=30 * 86_400_000),
                                 max_cached_series=2 * series, history_steps=0)
    stopped = StoppedSeries(client, settings)
    await stopped.load(range(settings.points_partitions))
    rng = np.random.default_rng(1)
    start = (int(time.time() * 1000) // MIN - minutes) * MIN
    detect_s = observe_s = check_s_total = save_s_total = 0.0
    checks = 0
    try:
        for m in range(minutes):
            ts = np.full(series, start + m * MIN, np.int64)
            values = rng.normal(50, 5, series)
            for lo in range(0, series, BATCH_POINTS):
                chunk = names[lo:lo + BATCH_POINTS]
                t0 = time.process_time()
                batch = await pipeline.process(chunk, ts[lo:lo + BATCH_POINTS],
                                               values[lo:lo + BATCH_POINTS])
                await pipeline.save(batch)
                t1 = time.process_time()
                stopped.observe(chunk, ts[lo:lo + BATCH_POINTS], int(time.time() * 1000))
                t2 = time.process_time()
                if m:  # the first minute creates every state: not the steady cost
                    detect_s += t1 - t0
                    observe_s += t2 - t1
            t0 = time.process_time()
            events, _ = await stopped.check()
            t1 = time.process_time()
            await stopped.save(force=True)  # the bench's minutes are faster than the wall's
            if m:
                check_s_total += t1 - t0
                save_s_total += time.process_time() - t1
                checks += 1
            info(f"minute {m}: {len(events)} no_data events, {len(stopped.tracker)} tracked")
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*", count=10_000)]
        for i in range(0, len(keys), 10_000):
            await client.delete(*keys[i:i + 10_000])
        await client.aclose()
    measured = minutes - 1
    per_minute_check = (check_s_total / checks * (60.0 / check_s)
                        + save_s_total / checks * (60_000 / stopped.persist_ms))
    share = (observe_s / measured + per_minute_check) / (detect_s / measured)
    return {
        "observe_us": observe_s / (measured * series) * 1e6,
        "check_ms": check_s_total / checks * 1000,
        "save_ms": save_s_total / checks * 1000,
        "detect_us": detect_s / (measured * series) * 1e6,
        "share": 100 * share,
    }


def measure_silence(series: int = 100_000, minutes: int = 4, check_s: float = 30.0,
                    redis_url: str | None = None) -> dict[str, float]:
    """Measure and print the figures (see the module's docstring)."""
    warm_up()
    url = redis_url or os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    found = asyncio.run(_measure(series, minutes, check_s, url))
    for figure in (
        Figure(f"silence_observe_per_point_{series // 1000}k_series", found["observe_us"], "us"),
        Figure(f"silence_check_{series // 1000}k_series", found["check_ms"], "ms"),
        Figure(f"silence_save_{series // 1000}k_series", found["save_ms"], "ms"),
        Figure(f"detection_per_point_{series // 1000}k_series", found["detect_us"], "us"),
        Figure(f"silence_cpu_share_{series // 1000}k_series", found["share"], "%"),
    ):
        print(figure.line(), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=4, help="Minutes of the fleet (≥ 2).")
    parser.add_argument("--check-s", type=float, default=30.0,
                        help="Seconds between checks (VIGIL_NODATA_CHECK_S).")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    measure_silence(args.series, max(2, args.minutes), args.check_s)


if __name__ == "__main__":
    main()
