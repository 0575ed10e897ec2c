"""Worker memory per series (issue 18, item 7): what holding a series costs a worker.

``--series`` series (default 100k) go through the worker's detection path in process — a
:class:`~vigil.streams.pipeline.DetectionPipeline` with its Redis store, the chart history
(``VIGIL_CHART_HISTORY_STEPS``), the stopped-series tracker and the series limits — for a few
minutes of one point per series; the process' resident memory grows by what the series
cost. Printed with the parts that can be counted exactly: the cached state records, the chart
history rings, the stopped-series tracker.

Run (Redis on 127.0.0.1:6379, database 15 by default; keys under a throw-away prefix)::

    PYTHONPATH=. python -m bench.series_memory [--series 100000] [--history-steps 120]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import uuid

import numpy as np
import redis.asyncio as aioredis

from bench.report import Figure, info, machine_line
from vigil.detectors.online import warm_up
from vigil.streams.limits import SeriesLimits
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.settings import Settings
from vigil.streams.silence import StoppedSeries
from vigil.streams.state import RedisStateStore

__all__ = ["measure_series_memory"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _measure(series: int, history_steps: int, redis_url: str) -> dict[str, float]:
    prefix = f"vigil-bench-{uuid.uuid4().hex[:8]}:"
    client = aioredis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, redis_prefix=prefix)
    names = [f'node_metric_{i % 50}{{host="host-{i // 50:05d}"}}' for i in range(series)]
    gc.collect()
    before = _rss_bytes()
    pipeline = DetectionPipeline(RedisStateStore(client, prefix), max_cached_series=2 * series,
                                 history_steps=history_steps)
    limits = SeriesLimits(settings.max_series_per_worker, settings.max_series_per_metric)
    stopped = StoppedSeries(client, settings, limits)
    start = (int(time.time() * 1000) // 60_000 - 4) * 60_000
    rng = np.random.default_rng(2)
    try:
        for m in range(4):
            ts = np.full(series, start + m * 60_000, np.int64)
            values = rng.normal(50, 5, series)
            for lo in range(0, series, 5_000):
                chunk = names[lo:lo + 5_000]
                (kept, t, v), _ = limits.split(chunk, ts[lo:lo + 5_000], values[lo:lo + 5_000])
                stopped.observe(kept, t, int(time.time() * 1000))
                batch = await pipeline.process(kept, t, v)
                await pipeline.save(batch)
            info(f"minute {m}: {pipeline.cached_series} series cached")
        gc.collect()
        grown = _rss_bytes() - before
        history = pipeline.history
        parts = {
            "state": sum(len(v) for v in pipeline._cache.values()) / series,
            "history": sum(ring.nbytes for ring in history._rings()) / series,
            "tracker": sum(getattr(stopped.tracker, name).nbytes for name, *_ in
                           stopped.tracker._COLUMNS) / series,
        }
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*", count=10_000)]
        for i in range(0, len(keys), 10_000):
            await client.delete(*keys[i:i + 10_000])
        await client.aclose()
    return {"total": grown / series, **parts}


def measure_series_memory(series: int = 100_000, history_steps: int = 120,
                          redis_url: str | None = None) -> dict[str, float]:
    """Measure and print the figures (see the module's docstring)."""
    warm_up()
    url = redis_url or os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    found = asyncio.run(_measure(series, history_steps, url))
    tag = f"{series // 1000}k_series_history_{history_steps}"
    for figure in (
        Figure(f"worker_bytes_per_series_{tag}", found["total"], "bytes"),
        Figure(f"worker_state_bytes_per_series_{tag}", found["state"], "bytes"),
        Figure(f"worker_history_bytes_per_series_{tag}", found["history"], "bytes"),
        Figure(f"worker_silence_bytes_per_series_{tag}", found["tracker"], "bytes"),
    ):
        print(figure.line(), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--history-steps", type=int, default=120,
                        help="VIGIL_CHART_HISTORY_STEPS (0: no chart history).")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    measure_series_memory(args.series, args.history_steps)


if __name__ == "__main__":
    main()
