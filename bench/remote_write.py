"""Prometheus remote_write into the input topic: samples/s.

* ``remote_write_decode`` — snappy + protobuf decoding and the conversion to vigil JSON
  points, in this process (CPU only, no broker);
* ``remote_write_to_topic`` — a real worker's ``POST /api/v1/write``, ``senders`` concurrent
  clients (Prometheus sends with several shards), each request ``series`` series of one
  sample (Prometheus' default ``max_samples_per_send`` is 2000): samples/s from the first
  request to the last 204, each answered only once its points are acknowledged by the broker.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.pipeline import Run, Services, Worker, _delete_topics, _make_ready, make_producer
from bench.report import Figure, info
from vigil.devtools.embedded import create_topics
from vigil.streams.remote_write import decode_write_request, encode_write_request, to_messages

__all__ = ["remote_write_figures", "request_bodies"]


def request_bodies(requests: int, series: int, start_ms: int) -> list[bytes]:
    """``requests`` WriteRequests of ``series`` node_exporter-like series, one sample each."""
    bodies = []
    for r in range(requests):
        ts = start_ms + r * 1000
        rows = [({"__name__": "node_network_receive_bytes_total", "device": f"eth{i % 8}",
                  "instance": f"host-{i // 8}:9100", "job": "node"},
                 [(float(r * 1000 + i), ts)]) for i in range(series)]
        bodies.append(encode_write_request(rows))
    return bodies


def decode_rate(bodies: list[bytes], series: int) -> float:
    started = time.perf_counter()
    for body in bodies:
        to_messages(decode_write_request(body, 1 << 26, 1 << 20))
    return len(bodies) * series / (time.perf_counter() - started)


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


def remote_write_figures(svc: Services, requests: int = 200, series: int = 2000,
                         senders: int = 4) -> list[Figure]:
    now = time.time_ns() // 1_000_000
    bodies = request_bodies(requests, series, now - (requests + 60) * 1000)
    figures = [Figure("remote_write_decode", decode_rate(bodies, series), "samples/s")]
    run = Run("remote-write")
    create_topics(svc.bootstrap, run.topics())
    with contextlib.ExitStack() as stack:
        stack.callback(_delete_topics, svc.bootstrap, list(run.topics()))
        worker = Worker(svc, run, stack)
        _make_ready(worker, make_producer(svc.bootstrap), run.input_topic, now)
        url = worker.metrics_url.replace("/metrics", "/api/v1/write")
        started = time.monotonic()
        with ThreadPoolExecutor(senders) as pool:
            statuses = list(pool.map(lambda body: _post(url, body), bodies))
        elapsed = time.monotonic() - started
        if set(statuses) != {204}:
            raise RuntimeError(f"remote_write answered {sorted(set(statuses))}")
        info(f"remote_write: {requests} requests × {series} series in {elapsed:.2f} s")
        figures.append(Figure("remote_write_to_topic", requests * series / elapsed,
                              "samples/s"))
    return figures
