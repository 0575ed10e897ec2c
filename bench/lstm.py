"""The LSTM scorer alone: windows/s and per-batch latency of one forward pass.

:class:`~vigil.detectors.lstm.WindowLSTM` scores ``batch`` windows of ``window`` residuals in
one forward pass (``score_windows``: float32, inference mode, the error reduced and
calibrated on the device, one copy back). The weights are random — speed does not depend on
them. Each cell of the grid runs a warm-up pass, then timed passes for at least
``min_seconds`` (and at least ``min_passes``); the latency is the median pass, windows/s is
``batch / median``. On CUDA every pass ends with a synchronisation (the copy back does it).

Two models: ``ref`` is the design card's 2-layer, 64-unit LSTM with a linear head (the
forecaster; the figure in ``docs/infrastructure.md``), ``default`` the model ``vigil train``
builds by default (the autoencoder the lab chose: 1-layer, 32-unit encoder and decoder).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np

from bench.report import Figure, info

__all__ = ["GRID_BATCHES", "GRID_WINDOWS", "MODELS", "lstm_figures", "make_model"]

GRID_BATCHES = (256, 1024, 4096, 16_384)
GRID_WINDOWS = (32, 64, 128)
#: name → (kind, layers, hidden units)
MODELS = {"ref": ("forecaster", 2, 64), "default": ("autoencoder", 1, 32)}


def make_model(
    window: int, kind: str, layers: int, hidden: int, device: str, seed: int = 0
):
    """A ready-to-score model with random weights (one tiny training step sets it up)."""
    from vigil.detectors.lstm import WindowLSTM

    model = WindowLSTM(window=window, kind=kind, hidden=hidden, layers=layers, epochs=1,
                       seed=seed, device=device, batch_size=64)
    X = np.random.default_rng(seed).normal(size=(64, window)).astype(np.float32)
    return model.fit_windows(X)


def _time_passes(model, X: np.ndarray, min_seconds: float, min_passes: int) -> float:
    model.score_windows(X, batch=len(X))  # warm-up (allocations, kernels)
    times = []
    started = time.perf_counter()
    while len(times) < min_passes or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        model.score_windows(X, batch=len(X))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lstm_figures(
    batches: Sequence[int] = (256, 4096),
    windows: Sequence[int] = (64,),
    models: Sequence[str] = ("ref", "default"),
    device: str = "auto",
    min_seconds: float = 1.0,
    min_passes: int = 3,
    threads: int = 1,
) -> Iterator[Figure]:
    """``lstm_{model}_w{window}_b{batch}_windows_per_s`` and ``..._batch_ms`` per cell, with
    ``threads`` torch threads (0: torch's default; the worker's default is 1)."""
    import torch

    from vigil.detectors.lstm import _device

    if threads:
        torch.set_num_threads(threads)

    dev = _device(torch, device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (
        f"cpu ({torch.get_num_threads()} torch threads)")
    info(f"lstm: device {name}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    for model_name in models:
        kind, layers, hidden = MODELS[model_name]
        for window in windows:
            model = make_model(window, kind, layers, hidden, device)
            for batch in batches:
                X = rng.normal(size=(batch, window)).astype(np.float32)
                median = _time_passes(model, X, min_seconds, min_passes)
                stem = f"lstm_{model_name}_w{window}_b{batch}"
                yield Figure(f"{stem}_windows_per_s", batch / median, "windows/s")
                yield Figure(f"{stem}_batch_ms", median * 1000.0, "ms")
