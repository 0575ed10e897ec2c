"""The worker's LSTM scorer: the global model file, its reloads, and one batch's scores.

:class:`LstmScorer` owns the model (:class:`~vigil.detectors.lstm.WindowLSTM`) and the
residual history of the series this worker holds (:class:`~vigil.detectors.lstm.ResidualRing`,
in memory — after a restart or a rebalance a series scores again once it has a window of new
steps). The detect agent's batch already gathers many series; :meth:`LstmScorer.score` scores
every full window of the batch in forward passes of ``lstm_batch`` windows, off the event
loop (an executor thread; torch releases the GIL).

The model file is checked on a timer (:meth:`LstmScorer.refresh`): a new or changed file is
loaded in an executor and swapped in; a file that cannot be used logs a clear error and the
worker keeps the model it had (or none: the seasonal detector alone). The state shows in
``/metrics``: ``vigil_lstm_model_loaded`` (0/1), ``vigil_lstm_windows_scored``,
``vigil_lstm_batch_seconds``, ``vigil_lstm_model_errors``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from vigil.detectors.lstm import LSTM_Z_OPEN
from vigil.sinks import metrics

__all__ = ["LstmScorer"]

log = logging.getLogger("vigil.lstm")


class LstmScorer:
    """Scores the steps of a detection batch with the global LSTM, when a model is loaded.

    Parameters
    ----------
    path
        The model file (``vigil train --out``); it may appear later.
    device
        ``auto`` (CUDA when torch sees one), ``cpu`` or ``cuda[:n]``.
    batch
        Windows per forward pass.
    z_open
        The detector's ``z_open`` (to read the residual back from its band).
    threads
        torch's intra-op threads (0: torch's default).
    z_alert
        The LSTM score from which it contributes to an event or opens an incident
        (:data:`~vigil.detectors.lstm.LSTM_Z_OPEN`).
    """

    def __init__(
        self, path: str | Path, device: str = "auto", batch: int = 256, z_open: float = 6.0,
        threads: int = 1, z_alert: float = LSTM_Z_OPEN,
    ) -> None:
        self.path = Path(path)
        self.z_alert = z_alert
        self.device = device
        self.batch = batch
        self.z_open = z_open
        self.threads = threads
        self.model = None
        self.ring = None
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the last file tried
        self._said_missing = False
        metrics.LSTM_MODEL_LOADED.set(0)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def _load(self):
        from vigil.detectors.lstm import WindowLSTM

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        return WindowLSTM.load(self.path, self.device)

    async def refresh(self) -> bool:
        """Load the model file if it is new or changed; True when a model was swapped in."""
        from vigil.detectors.lstm import ModelFileError, ResidualRing

        try:
            stat = self.path.stat()
        except OSError:
            if not self._said_missing:
                log.warning(
                    "no LSTM model file at %s%s: scoring with the seasonal detector alone "
                    "(the file is picked up when it appears)",
                    self.path, " any more; keeping the loaded model" if self.model else "",
                )
                self._said_missing = True
            return False
        self._said_missing = False
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return False
        self._seen = key
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, self._load)
        except (ModelFileError, ValueError) as exc:
            metrics.LSTM_MODEL_ERRORS.inc()
            log.error("LSTM model not loaded: %s; %s", exc,
                      "keeping the previous model" if self.model is not None
                      else "scoring with the seasonal detector alone")
            return False
        if self.ring is None or self.ring.window != model.window:
            self.ring = ResidualRing(model.window)
        self.model = model
        metrics.LSTM_MODEL_LOADED.set(1)
        meta = model.metadata_
        log.warning(
            "LSTM model loaded from %s: %s, window %d, %d×%d units, device %s, "
            "validation loss %.4g, trained on %s",
            self.path, model.kind, model.window, model.layers, model.hidden, model.device_,
            model.val_loss_[-1] if model.val_loss_ else float("nan"),
            meta.get("data", {}).get("summary", "?"),
        )
        return True

    def forget(self) -> None:
        """Drop the residual history (on rebalance)."""
        if self.ring is not None:
            self.ring.forget()

    async def score(self, touched: list[str], results) -> np.ndarray | None:
        """The LSTM z-score of every step of ``results`` (``nan`` without a full window), or
        None when no model is loaded."""
        from vigil.detectors.lstm import residuals

        model = self.model
        if model is None:
            return None
        r = residuals(results.steps.value, results.expected, results.upper, self.z_open,
                      model.clip)
        got = self.ring.windows(touched, results.steps.index, r)
        z = np.full(len(r), np.nan)
        if len(got.positions):
            started = time.perf_counter()
            z[got.positions] = await asyncio.get_running_loop().run_in_executor(
                None, model.score_windows, got.windows, self.batch
            )
            metrics.LSTM_BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.LSTM_WINDOWS.inc(len(got.positions))
        return z
