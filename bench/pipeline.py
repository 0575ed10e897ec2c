"""End-to-end benchmarks: broker → one ``vigil worker`` process → Redis → anomalies topic.

Every measurement gets its own input topic, internal topics, consumer group (app id) and
Redis prefix, and a worker process started for it alone, so nothing carries over.

* **Throughput.** The worker is started and made ready first (a probe point has gone all
  the way through: group joined, Redis connected). Then the whole workload — a fleet of
  series, one point per series per minute, consecutive minutes — is produced at once,
  far faster than the worker consumes it. The timed window opens when the worker's ingest
  counter first moves (an idle worker only sees new data when the broker answers its
  pending long poll, a broker artefact that is not throughput) and closes when the Redis
  counter ``points_processed`` says the last point is detected; the points of the first
  ingest batch are not credited. Start-up and group join are outside the window; draining
  the internal topic at the end is inside it. The run's whole span is logged as well.
* **Latency.** The detector scores only after 60 warm-up steps, so ~90 minutes of normal
  data are fed first, as fast as possible. Then a paced stream at a given rate (half the
  measured saturation rate) carries planted spikes. A spike at minute ``m`` is scored when
  the series' point of minute ``m + 1`` arrives (that closes the step), so its latency is the
  time its ``open`` event is read from the anomalies topic minus the time the message with
  the series' minute ``m + 1`` point was handed to the producer.

The broker and Redis are embedded ones started here (unless ``VIGIL_KAFKA_BOOTSTRAP`` /
``VIGIL_REDIS_URL`` name real ones) and everything started is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import redis

from bench.report import CpuMeter, cpu_seconds, info
from vigil.devtools.embedded import (
    WorkerProcess,
    configured_or_embedded,
    create_topics,
    free_port,
)
from vigil.devtools.replay import make_producer

if TYPE_CHECKING:
    from confluent_kafka import Producer

__all__ = [
    "LatencyResult",
    "Services",
    "ThroughputResult",
    "Workload",
    "measure_latency",
    "measure_throughput",
    "services",
]

MINUTE_MS = 60_000
SERIES_PER_KEY = 100  # series sharing one message key (so one partition, in time order)
INPUT_PARTITIONS = 4
PROBE_SERIES = "bench_probe"


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Services:
    """Where the broker and Redis are (and their process ids when they are embedded)."""

    bootstrap: str
    redis_url: str
    pids: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def services() -> Iterator[Services]:
    """Embedded broker and Redis for the block (or the ones the environment names)."""
    with configured_or_embedded(announce=info) as found:
        pids = {"bench": os.getpid()}
        pids.update({name: s.process.pid for name, s in found.started.items()})
        yield Services(found.bootstrap, found.redis_url, pids)


@dataclass
class Run:
    """The names one measurement owns: topics, consumer group, Redis prefix."""

    label: str
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.run_id = f"bench-{self.label}-{time.time_ns() // 1_000_000}"

    @property
    def input_topic(self) -> str:
        return f"{self.run_id}-in"

    @property
    def points_topic(self) -> str:
        return f"{self.run_id}-points"

    @property
    def anomalies_topic(self) -> str:
        return f"{self.run_id}-anomalies"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.run_id}-deadletter"

    @property
    def prefix(self) -> str:
        return f"{self.run_id}:"

    def topics(self) -> dict[str, int]:
        return {
            self.input_topic: INPUT_PARTITIONS,
            self.points_topic: 8,
            self.anomalies_topic: 1,
            self.deadletter_topic: 1,
        }

    def worker_env(self, svc: Services, datadir: str) -> dict[str, str]:
        return {
            "VIGIL_KAFKA_BOOTSTRAP": svc.bootstrap,
            "VIGIL_REDIS_URL": svc.redis_url,
            "VIGIL_REDIS_PREFIX": self.prefix,
            "VIGIL_APP_ID": self.run_id,
            "VIGIL_INPUT_TOPICS": self.input_topic,
            "VIGIL_INPUT_PATTERN": "",
            "VIGIL_POINTS_TOPIC": self.points_topic,
            "VIGIL_POINTS_PARTITIONS": "8",
            "VIGIL_ANOMALIES_TOPIC": self.anomalies_topic,
            "VIGIL_DEADLETTER_TOPIC": self.deadletter_topic,
            "VIGIL_SESSION_TIMEOUT_S": "6",
            "VIGIL_WEB_PORT": str(free_port()),
            "VIGIL_LOG_LEVEL": "warning",
            # The workload is keyed (each series on one partition, in order): a step is scored
            # when the next one's point arrives, which is what the latency figure measures.
            "VIGIL_ALLOWED_LATENESS_STEPS": "0",
            # Faust keeps a data folder per app id; not in the caller's working directory.
            "F_DATADIR": str(Path(datadir) / "{conf.name}-data"),
        }


class Worker:
    """A worker process for one run, plus the progress counters it exposes."""

    def __init__(self, svc: Services, run: Run, stack: contextlib.ExitStack,
                 extra_env: dict[str, str] | None = None) -> None:
        datadir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vigil-bench-"))
        stack.callback(delete_keys, svc.redis_url, run.prefix)
        log_path = Path(tempfile.gettempdir()) / f"vigil-{run.run_id}-worker.log"
        env = {**run.worker_env(svc, datadir), **(extra_env or {})}
        self.metrics_url = f"http://127.0.0.1:{env['VIGIL_WEB_PORT']}/metrics"
        self.process = WorkerProcess(env, log_path)
        # Killed, not stopped gracefully: its group and topics are thrown away anyway.
        stack.callback(self.process.stop, kill=True)
        self.redis_url = svc.redis_url
        self.redis = redis.Redis.from_url(svc.redis_url)
        stack.callback(self.redis.close)
        self.stats_key = f"{run.prefix}stats"
        info(f"worker {run.run_id} started (log: {log_path})")

    def processed(self) -> int:
        """Points detected and saved (the Redis counter the pipeline advances per batch)."""
        return int(self.redis.hget(self.stats_key, "points_processed") or 0)

    def ingested(self) -> int:
        """Points parsed by the ingest agent (from the worker's Prometheus metrics)."""
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            body = response.read().decode()
        found = re.search(r"^vigil_points_in_total (\S+)$", body, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def wait_processed(self, target: int, stall_s: float = 90.0, poll_s: float = 0.02) -> float:
        """Block until ``points_processed >= target``; returns the monotonic time it did.

        Raises when the worker dies or stops making progress for ``stall_s``.
        """
        done, last_change = -1, time.monotonic()
        while True:
            now = self.processed()
            seen_at = time.monotonic()
            if now >= target:
                return seen_at
            if now != done:
                done, last_change = now, seen_at
            if not self.process.alive():
                raise RuntimeError("the worker stopped:\n" + self.process.log_tail())
            if seen_at - last_change > stall_s:
                raise RuntimeError(
                    f"the worker processed {done:,} of {target:,} points and then nothing "
                    f"for {stall_s:.0f} s:\n" + self.process.log_tail()
                )
            time.sleep(poll_s)


def _make_ready(worker: Worker, producer: Producer, topic: str, at_ms: int) -> None:
    """Send one probe point and wait until it is detected: the worker is then live."""
    payload = orjson.dumps([{"name": PROBE_SERIES, "labels": {}, "timestamp": at_ms, "value": 0}])
    producer.produce(topic, payload, key=b"probe")
    producer.flush(30)
    started = time.monotonic()
    worker.wait_processed(1)
    info(f"worker ready {time.monotonic() - started:.1f} s after the probe was sent")


def delete_keys(redis_url: str, prefix: str) -> None:
    # A shared Redis (VIGIL_REDIS_URL) should not keep a benchmark's states.
    with contextlib.suppress(Exception), redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
        for lo in range(0, len(keys), 10_000):
            client.unlink(*keys[lo : lo + 10_000])


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    # The embedded broker keeps everything in memory: free what a run produced.
    from confluent_kafka.admin import AdminClient

    from vigil.streams.settings import Settings

    with contextlib.suppress(Exception):
        admin = AdminClient(Settings().kafka_client_config(bootstrap))
        for future in admin.delete_topics(topics).values():
            future.result(10)


# --------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """A fleet of ``n_series`` series reporting once a minute.

    Messages carry the points of ``per_message`` series at one minute; all series of one
    message key (``SERIES_PER_KEY`` of them) share a partition, so every series arrives in
    time order, as from a real exporter.
    """

    n_series: int
    per_message: int
    start_ms: int
    seed: int = 0
    series: list[str] = field(init=False)
    _prefixes: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if SERIES_PER_KEY % self.per_message:
            raise ValueError(f"per_message must divide {SERIES_PER_KEY}")
        hosts = [f"h{i // 10:05d}" for i in range(self.n_series)]
        metrics = [f"m{i % 10}" for i in range(self.n_series)]
        # The canonical id the parser builds: name{labels sorted by key}.
        self.series = [
            f'bench_metric{{host="{h}",metric="{m}"}}' for h, m in zip(hosts, metrics, strict=True)
        ]
        # Each point as JSON, up to its timestamp: the same bytes encode_messages writes.
        self._prefixes = [
            f'{{"name":"bench_metric","labels":{{"host":"{h}","metric":"{m}"}},"timestamp":'
            for h, m in zip(hosts, metrics, strict=True)
        ]
        rng = np.random.default_rng(self.seed)
        self.level = rng.uniform(20.0, 80.0, self.n_series)
        self.noise = 0.05 * self.level
        self._rng = rng

    def key_of(self, series_index: int) -> bytes:
        return str(series_index // SERIES_PER_KEY).encode()

    def minute_ms(self, minute: int) -> int:
        return self.start_ms + minute * MINUTE_MS

    def values(self, minute: int) -> np.ndarray:
        """One normal value per series for ``minute``."""
        return self.level + self._rng.normal(0.0, 1.0, self.n_series) * self.noise

    def messages(self, minute: int, values: np.ndarray) -> list[tuple[bytes, bytes, int]]:
        """``(key, payload, first series index)`` of every message of ``minute``."""
        ts = self.minute_ms(minute)
        texts = [f'{ts},"value":{v!r}}}' for v in values.tolist()]
        out = []
        prefixes = self._prefixes
        for lo in range(0, self.n_series, self.per_message):
            hi = min(lo + self.per_message, self.n_series)
            body = ",".join(prefixes[i] + texts[i] for i in range(lo, hi))
            out.append((self.key_of(lo), f"[{body}]".encode(), lo))
        return out


def _minute_floor(ms: int) -> int:
    return ms - ms % MINUTE_MS


def _produce_all(producer: Producer, topic: str, payloads: list[tuple[bytes, bytes, int]]) -> None:
    for key, payload, _ in payloads:
        while True:
            try:
                producer.produce(topic, payload, key=key)
                break
            except BufferError:  # the client's queue is full: let it drain
                producer.poll(0.01)
        producer.poll(0)


# --------------------------------------------------------------------------- throughput


@dataclass(frozen=True)
class ThroughputResult:
    points: int  # points credited to the timed window
    seconds: float  # the timed window: worker awake → last point detected
    steady_rate: float  # detect counter between 10 % and 90 % (diagnostic: see below)
    # The detector's share of the worker's CPU over the run (vigil_detector_cpu_seconds_total
    # against the worker process' CPU time): what detection costs end to end.
    detector_cpu_share: float = float("nan")

    @property
    def rate(self) -> float:
        return self.points / self.seconds


class _Progress(threading.Thread):
    """Watches a run from the first produce call: when ingest starts, then the counter.

    An idle worker's fetch sits in the broker's long poll (Tansu answers it late, see
    the infrastructure notes), so the first points are seen a few hundred ms after they
    were produced. The timed window therefore opens when the ingest counter first moves;
    the points of that first ingest batch are not credited.
    """

    def __init__(self, worker: Worker, ingested_before: int, target: int) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.ingested_before = ingested_before
        self.target = target
        self.awake: tuple[float, int] | None = None  # (time, points ingested then)
        self.samples: list[tuple[float, int]] = []  # (time, points detected)
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while self.awake is None and self.worker.process.alive():
                ingested = self.worker.ingested()
                if ingested > self.ingested_before:
                    self.awake = (time.monotonic(), ingested - self.ingested_before)
                else:
                    time.sleep(0.01)
            # Own Redis connection: the main thread uses the worker's.
            client = redis.Redis.from_url(self.worker.redis_url)
            with contextlib.closing(client):
                while self.worker.process.alive():
                    count = int(client.hget(self.worker.stats_key, "points_processed") or 0)
                    self.samples.append((time.monotonic(), count))
                    if count >= self.target:
                        return
                    time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc


def measure_throughput(
    svc: Services, label: str, n_series: int, minutes: int, per_message: int,
    extra_env: dict[str, str] | None = None,
) -> ThroughputResult:
    """Points/s of one worker on ``minutes`` × ``n_series`` points, produced all at once
    (``extra_env``: more worker settings, e.g. ClickHouse storage on, an LSTM model)."""
    run = Run(label)
    create_topics(svc.bootstrap, run.topics())
    with contextlib.ExitStack() as stack:
        stack.callback(_delete_topics, svc.bootstrap, list(run.topics()))
        worker = Worker(svc, run, stack, extra_env)
        now = _minute_floor(time.time_ns() // 1_000_000)
        workload = Workload(n_series, per_message, start_ms=now - (minutes + 60) * MINUTE_MS)
        # Encode while the worker starts up (it mostly waits for its group join meanwhile).
        payloads = []
        for m in range(minutes):
            payloads += workload.messages(m, workload.values(m))
        total = n_series * minutes
        info(f"{label}: {total:,} points in {len(payloads):,} messages encoded")
        producer = make_producer(svc.bootstrap)
        _make_ready(worker, producer, run.input_topic, now)
        base = worker.processed()
        progress = _Progress(worker, worker.ingested(), base + total)
        progress.start()
        meter = CpuMeter({"worker": worker.process.process.pid, **svc.pids})
        worker_cpu = cpu_seconds(worker.process.process.pid)
        detector_cpu = _metric_total(worker, "vigil_detector_cpu_seconds_total")

        started = time.monotonic()
        _produce_all(producer, run.input_topic, payloads)
        producer.flush(120)
        produced_s = time.monotonic() - started
        finished = worker.wait_processed(base + total)
        cpu = meter.report()
        share = (_metric_total(worker, "vigil_detector_cpu_seconds_total") - detector_cpu) / max(
            cpu_seconds(worker.process.process.pid) - worker_cpu, 1e-9)
        progress.join(5)
        del producer
        if extra_env and extra_env.get("VIGIL_CLICKHOUSE_URL"):
            _report_storage(worker, label, finished)
    if progress.awake is None:
        raise RuntimeError(f"never saw the ingest counter move: {progress.error}")
    awake_at, first_batch = progress.awake
    credited = total - first_batch
    seconds = finished - awake_at
    steady = _steady_rate(progress.samples, base, total)
    info(
        f"{label}: {total:,} points; produce took {produced_s:.2f} s; ingest started "
        f"{awake_at - started:.2f} s after the first produce call with {first_batch:,} points; "
        f"{credited:,} points in {seconds:.2f} s = {credited / seconds:,.0f} points/s "
        f"(first produce → done: {total / (finished - started):,.0f} points/s; detect counter "
        f"10–90 %: {steady:,.0f} points/s, inflated when ingest runs ahead)"
    )
    info(f"{label}: {cpu}; the detector took {share:.1%} of the worker's CPU")
    return ThroughputResult(credited, seconds, steady, share)


def _metric_total(worker: Worker, name: str) -> float:
    with urllib.request.urlopen(worker.metrics_url, timeout=2) as response:
        body = response.read().decode()
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body,
                                              re.MULTILINE))


def _report_storage(worker: Worker, label: str, detected_at: float, wait_s: float = 120) -> None:
    """How long after detection the ClickHouse buffer was empty, and what it dropped."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _metric_total(worker, "vigil_clickhouse_buffer_rows"):
        time.sleep(0.1)
    info(
        f"{label}: ClickHouse buffer empty {time.monotonic() - detected_at:.1f} s after the "
        f"last point was detected; rows written "
        f"{_metric_total(worker, 'vigil_clickhouse_rows_written_total'):,.0f}, dropped "
        f"{_metric_total(worker, 'vigil_clickhouse_rows_dropped_total'):,.0f}, insert errors "
        f"{_metric_total(worker, 'vigil_clickhouse_errors_total'):,.0f}"
    )


def _steady_rate(samples: list[tuple[float, int]], base: int, total: int) -> float:
    """Points/s between the first sightings of 10 % and 90 % of the points detected."""

    def first_at(fraction: float) -> tuple[float, int] | None:
        goal = base + fraction * total
        return next(((t, c) for t, c in samples if c >= goal), None)

    lo, hi = first_at(0.1), first_at(0.9)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return float("nan")
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyResult:
    p50_ms: float
    p99_ms: float
    samples: int  # spikes whose open event was matched
    planted: int
    rate: float  # points/s actually produced during the paced phase


class _EventReader:
    """Reads the anomalies topic in a thread; keeps each message with its arrival time.

    Assigned to the topic's one partition directly: no consumer group, so no join delay.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from vigil.streams.settings import Settings

        self.arrivals: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **Settings().kafka_client_config(bootstrap),
                "group.id": f"bench-reader-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                # Ask again soon when nothing is there: the reader must not add latency.
                "fetch.wait.max.ms": 10,
                "fetch.error.backoff.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            self.arrivals.append((time.monotonic(), msg.value()))
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def measure_latency(
    svc: Services,
    n_series: int,
    rate: float,
    paced_s: float,
    warmup_minutes: int = 90,
    target_spikes: int = 600,
    per_message: int = 100,
) -> LatencyResult:
    """Produce-to-event latency of planted spikes in a stream paced at ``rate`` points/s."""
    run = Run("latency")
    create_topics(svc.bootstrap, run.topics())
    paced_minutes = max(int(rate * paced_s / n_series), 3)
    # Spikes on distinct series where possible (an open incident would swallow a new spike);
    # none in the last minute, whose closing points never come.
    per_minute = max(1, round(target_spikes / (paced_minutes - 1)))
    per_minute = min(per_minute, n_series // 2)
    with contextlib.ExitStack() as stack:
        stack.callback(_delete_topics, svc.bootstrap, list(run.topics()))
        worker = Worker(svc, run, stack)
        reader = _EventReader(svc.bootstrap, run.anomalies_topic)
        stack.callback(reader.close)
        now = _minute_floor(time.time_ns() // 1_000_000)
        minutes = warmup_minutes + paced_minutes
        workload = Workload(n_series, per_message, start_ms=now - (minutes + 60) * MINUTE_MS)

        warmup = []
        for m in range(warmup_minutes):
            warmup += workload.messages(m, workload.values(m))
        # Paced phase: planted spikes of +30 σ, each on a series not spiked before.
        spikes: dict[tuple[str, int], tuple[int, int]] = {}  # (series, ts) → (minute, series)
        paced: list[tuple[int, list[tuple[bytes, bytes, int]]]] = []
        next_series = 0
        for m in range(warmup_minutes, minutes):
            values = workload.values(m)
            if m < minutes - 1:
                for _ in range(per_minute):
                    s = next_series % n_series
                    next_series += 1
                    values[s] = workload.level[s] + 30.0 * workload.noise[s]
                    spikes[(workload.series[s], workload.minute_ms(m))] = (m, s)
            paced.append((m, workload.messages(m, values)))
        n_paced = sum(len(msgs) for _, msgs in paced)
        info(
            f"latency: {n_series:,} series, {warmup_minutes} warm-up minutes, then "
            f"{paced_minutes} minutes ({n_paced:,} messages) at {rate:,.0f} points/s with "
            f"{len(spikes)} planted spikes"
        )

        producer = make_producer(svc.bootstrap)
        _make_ready(worker, producer, run.input_topic, now)
        base = worker.processed()
        started = time.monotonic()
        _produce_all(producer, run.input_topic, warmup)
        producer.flush(120)
        worker.wait_processed(base + warmup_minutes * n_series)
        info(f"latency: warm-up processed in {time.monotonic() - started:.1f} s; pacing")

        sent_at: dict[tuple[int, int], float] = {}  # (minute, first series of message) → time
        interval = per_message / rate
        meter = CpuMeter({"worker": worker.process.process.pid, **svc.pids})
        paced_start = time.monotonic()
        i = 0
        for m, msgs in paced:
            for key, payload, lo in msgs:
                due = paced_start + i * interval
                ahead = due - time.monotonic()
                if ahead > 0.0005:
                    time.sleep(ahead)
                producer.produce(run.input_topic, payload, key=key)
                sent_at[(m, lo)] = time.monotonic()
                producer.poll(0)
                i += 1
        producer.flush(30)
        paced_elapsed = time.monotonic() - paced_start
        info(f"latency: paced phase {meter.report()}")
        worker.wait_processed(base + minutes * n_series)
        time.sleep(1.0)  # the last events are on their way to the reader
        arrivals = list(reader.arrivals)
        del producer

    latencies: list[tuple[int, float]] = []  # (spike minute, seconds)
    for arrived, raw in arrivals:
        event = orjson.loads(raw)
        if event.get("kind") != "open":
            continue
        hit = spikes.get((event["series"], event["ts_ms"]))
        if hit is None:
            continue
        minute, s = hit
        lo = s - s % per_message
        latencies.append((minute, arrived - sent_at[(minute + 1, lo)]))
    achieved = paced_minutes * n_series / paced_elapsed
    if not latencies:
        raise RuntimeError(f"none of {len(spikes)} planted spikes produced an open event")
    latencies.sort()
    ms = np.asarray([seconds for _, seconds in latencies]) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    # A worker that does not keep up shows as latency growing over the paced phase.
    quarter = max(len(ms) // 4, 1)
    first, last = np.median(ms[:quarter]), np.median(ms[-quarter:])
    info(
        f"latency: {len(ms)} of {len(spikes)} spikes matched; paced at {achieved:,.0f} "
        f"points/s; min {ms.min():.0f} ms, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"max {ms.max():.0f} ms; median of the first quarter {first:.0f} ms, of the last "
        f"{last:.0f} ms"
    )
    return LatencyResult(float(p50), float(p99), len(ms), len(spikes), achieved)
