"""``vigil bench``: run every benchmark and print one ``name: value unit`` line per figure.

Stdout gets a ``machine:`` line and then the figures as they are measured; progress and
diagnostics (CPU use per process, the windows measured) go to stderr. ``quick=True`` uses
sizes that finish in well under a minute on a 2-core machine; the full run takes a few
minutes and its end-to-end figures are steadier (start-up and drain weigh less).

The figures, in order:

1. ``detector_core_10k_series`` / ``detector_core_100k_series`` — the detector alone, one
   point per series per batch (:mod:`bench.detector`), and ``state_bytes_per_series``; then
   the step kernel's figures: ``detector_<shape>`` (steps/s for 10k and 100k series × 10
   steps and 20 series × 40,000 steps per batch), ``detector_first_start`` /
   ``detector_cached_start`` (a fresh process's import and first steps, compiling the kernel
   or loading it from numba's cache) and ``score_nab_dev`` (``vigil score`` on nab-dev, after
   compilation). ``detector_only=True`` (``vigil bench --detector-only``) stops there;
2. ``e2e_batched_100_points_per_message`` / ``e2e_one_point_per_message`` — one worker
   process end to end, saturated (:func:`bench.pipeline.measure_throughput`), and
   ``e2e_batched_detector_cpu_share`` (the detector's CPU, ``vigil_detector_cpu_seconds_total``,
   as a share of the worker process' CPU in the batched run);
3. ``latency_p50`` / ``latency_p99`` — produce → anomaly event at half the batched
   saturation rate (:func:`bench.pipeline.measure_latency`), with ``latency_load`` (the rate
   actually produced) and ``latency_samples`` (spikes matched to their event);
4. ``alert_latency_p50`` / ``alert_latency_p95`` — anomaly event produced → its Telegram
   request at a local Bot API server, one incident (one message with a chart) at a time at
   ``alert_rate`` (:mod:`bench.notifier`), ``alert_samples`` of them.
   ``remote_write_decode`` / ``remote_write_to_topic`` — Prometheus remote_write samples/s,
   decoded in-process, and through a worker's ``/api/v1/write`` into the input topic
   (:mod:`bench.remote_write`);
5. ``lstm_{model}_w{window}_b{batch}_windows_per_s`` / ``..._batch_ms`` — the LSTM scorer
   alone (:mod:`bench.lstm`; the full grid of batch sizes and window lengths with
   ``lstm_grid=True``), and ``e2e_lstm_off`` / ``e2e_lstm_on`` — one worker end to end on a
   fleet long enough for every series to fill its window, without and with a model loaded.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.detector import detector_figures, kernel_figures
from bench.lstm import GRID_BATCHES, GRID_WINDOWS, lstm_figures
from bench.notifier import measure_alert_latency
from bench.pipeline import measure_latency, measure_throughput, services
from bench.remote_write import remote_write_figures
from bench.report import Figure, info, machine_line

__all__ = ["FULL", "QUICK", "Sizes", "run_all", "run_detector", "run_kernel", "run_lstm"]


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    detector_rounds: dict[int, int]  # series → timed rounds (one point per series each)
    detector_skip: int
    fleet_series: int  # series of the end-to-end workloads
    batched_minutes: int  # minutes of the fleet in the batched throughput run
    single_minutes: int  # ... in the one-point-per-message run
    latency_series: int
    latency_paced_s: float
    latency_spikes: int
    alert_incidents: int
    alert_rate: float  # incidents per second
    lstm_series: int = 2_000  # fleet of the end-to-end LSTM on/off runs
    lstm_minutes: int = 150  # ... minutes of it (more than the 64-step window)


QUICK = Sizes(
    detector_rounds={10_000: 20, 100_000: 5},
    detector_skip=2,
    fleet_series=10_000,
    batched_minutes=50,  # 500k points
    single_minutes=6,  # 60k points
    latency_series=2_000,
    latency_paced_s=8.0,
    latency_spikes=400,
    alert_incidents=100,
    alert_rate=5.0,
    lstm_series=1_000,
    lstm_minutes=100,
)

FULL = Sizes(
    detector_rounds={10_000: 200, 100_000: 30},
    detector_skip=3,
    fleet_series=10_000,
    batched_minutes=300,  # 3M points
    single_minutes=30,  # 300k points
    latency_series=10_000,
    latency_paced_s=40.0,
    latency_spikes=1_000,
    alert_incidents=1_000,
    alert_rate=5.0,
)


def _emit(figure: Figure, results: dict[str, float]) -> None:
    # Flushed one by one: a long run shows its figures as they come.
    print(figure.line(), flush=True)
    results[figure.name] = figure.value


def run_detector(
    rounds: dict[int, int], skip: int = 3, learn_steps: int = 2 * 1440
) -> dict[str, float]:
    """Only the detector-core figures (printed as they come); the tests use tiny sizes."""
    results: dict[str, float] = {}
    for figure in detector_figures(rounds, skip=skip, learn_steps=learn_steps):
        _emit(figure, results)
    return results


#: NAB's development files, scored by ``vigil score`` in the detector-only figures.
NAB_DEV = Path(os.environ.get("VIGIL_BENCH_NAB", "/work/shared/data/nab-dev"))


def run_kernel(nab_folder: Path | None = NAB_DEV) -> dict[str, float]:
    """The step kernel's figures: steps/s per batch shape, compile and cached start, and
    ``vigil score`` on nab-dev (printed as they come)."""
    results: dict[str, float] = {}
    for figure in kernel_figures(nab_folder):
        _emit(figure, results)
    return results


def run_lstm(
    grid: bool = False, device: str = "auto", min_seconds: float = 1.0, threads: int = 1
) -> dict[str, float]:
    """The LSTM scorer's figures alone: batch 256 and 4096 at window 64 for both models, or
    (``grid``) every batch of :data:`GRID_BATCHES` × window of :data:`GRID_WINDOWS`."""
    results: dict[str, float] = {}
    if grid:
        figures = lstm_figures(GRID_BATCHES, GRID_WINDOWS, device=device,
                               min_seconds=min_seconds, threads=threads)
    else:
        figures = lstm_figures(device=device, min_seconds=min_seconds, threads=threads)
    for figure in figures:
        _emit(figure, results)
    return results


def _lstm_model_file(folder: str) -> str:
    """A model file for the worker: the default architecture, random weights."""
    from pathlib import Path

    from bench.lstm import MODELS, make_model

    kind, layers, hidden = MODELS["default"]
    path = Path(folder) / "bench-lstm.pt"
    make_model(64, kind, layers, hidden, "cpu").save(
        path, {"data": {"summary": "bench weights"}}
    )
    return str(path)


def run_e2e_lstm(
    svc, sizes: Sizes, device: str = "auto", lstm_threads: int = 1
) -> dict[str, float]:
    """Worker points/s without and with the LSTM on one workload."""
    import tempfile

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-lstm-") as folder:
        env = {"VIGIL_LSTM_MODEL": _lstm_model_file(folder), "VIGIL_LSTM_DEVICE": device,
               "VIGIL_LSTM_THREADS": str(lstm_threads)}
        for label, extra in (("off", None), ("on", env)):
            run = measure_throughput(svc, f"lstm-{label}", sizes.lstm_series,
                                     sizes.lstm_minutes, per_message=100, extra_env=extra)
            _emit(Figure(f"e2e_lstm_{label}", run.rate, "points/s"), results)
    return results


def _raise_on_sigterm(signum: int, frame: object) -> None:
    # Turn a polite kill into an exception so every `with` block stops what it started.
    raise SystemExit(128 + signum)


def _with_clickhouse(svc, sizes: Sizes):
    """The batched throughput with ClickHouse storage on: ``VIGIL_CLICKHOUSE_URL``'s server,
    else a local clickhouse-server started here; None (and a note) when there is neither."""
    import shutil as _shutil
    import uuid

    from vigil.devtools.embedded import start_clickhouse

    url = os.environ.get("VIGIL_CLICKHOUSE_URL")
    server = None
    if not url:
        try:
            server = start_clickhouse()
        except RuntimeError as exc:
            info(f"no ClickHouse, storage-on throughput not measured: {exc}")
            return None
        url = server.url
    url = url.rsplit("/", 1)[0] + f"/bench_{uuid.uuid4().hex[:8]}"
    try:
        return measure_throughput(
            svc, "batched_clickhouse", sizes.fleet_series, sizes.batched_minutes,
            per_message=100, extra_env={"VIGIL_CLICKHOUSE_URL": url},
        )
    finally:
        if server is not None:
            server.stop()
            _shutil.rmtree(server.data_dir, ignore_errors=True)


def run_all(
    quick: bool = False, lstm_only: bool = False, lstm_grid: bool = False, device: str = "auto",
    lstm_threads: int = 1, detector_only: bool = False,
) -> dict[str, float]:
    """Run every benchmark, print the figures, and return them as ``{name: value}``.

    ``lstm_only`` runs the LSTM scorer's figures alone (no broker, no worker); ``lstm_grid``
    measures its full grid; ``device`` is where the LSTM runs (``auto``, ``cpu``, ``cuda``).
    """
    sizes = QUICK if quick else FULL
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        print(machine_line(), flush=True)
        if lstm_only:
            return run_lstm(grid=lstm_grid, device=device,
                            min_seconds=0.3 if quick else 1.0, threads=lstm_threads)
        results = run_detector(sizes.detector_rounds, skip=sizes.detector_skip)
        results.update(run_kernel())
        if detector_only:
            return results
        with services() as svc:
            batched = measure_throughput(
                svc, "batched", sizes.fleet_series, sizes.batched_minutes, per_message=100
            )
            _emit(Figure("e2e_batched_100_points_per_message", batched.rate, "points/s"), results)
            _emit(Figure("e2e_batched_detector_cpu_share", 100 * batched.detector_cpu_share,
                         "%"), results)
            stored = _with_clickhouse(svc, sizes)
            if stored is not None:
                _emit(Figure("e2e_batched_100_points_per_message_clickhouse", stored.rate,
                             "points/s"), results)
            single = measure_throughput(
                svc, "single", sizes.fleet_series, sizes.single_minutes, per_message=1
            )
            _emit(Figure("e2e_one_point_per_message", single.rate, "points/s"), results)
            for figure in remote_write_figures(svc, requests=50 if quick else 200):
                _emit(figure, results)
            latency = measure_latency(
                svc,
                sizes.latency_series,
                rate=0.5 * batched.rate,
                paced_s=sizes.latency_paced_s,
                target_spikes=sizes.latency_spikes,
            )
            _emit(Figure("latency_p50", latency.p50_ms, "ms"), results)
            _emit(Figure("latency_p99", latency.p99_ms, "ms"), results)
            _emit(Figure("latency_load", latency.rate, "points/s"), results)
            _emit(Figure("latency_samples", latency.samples, "events"), results)
            alerts = measure_alert_latency(svc, sizes.alert_incidents, sizes.alert_rate)
            _emit(Figure("alert_latency_p50", alerts.p50_ms, "ms"), results)
            _emit(Figure("alert_latency_p95", alerts.p95_ms, "ms"), results)
            _emit(Figure("alert_latency_max", alerts.max_ms, "ms"), results)
            _emit(Figure("alert_rate", alerts.rate, "incidents/s"), results)
            _emit(Figure("alert_samples", alerts.received, "incidents"), results)
            results.update(run_e2e_lstm(svc, sizes, device, lstm_threads))
        results.update(run_lstm(grid=lstm_grid, device=device,
                                min_seconds=0.3 if quick else 1.0, threads=lstm_threads))
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stderr.flush()
    info(f"bench finished in {time.monotonic() - started:.0f} s")
    return results
