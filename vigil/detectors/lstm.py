"""One global LSTM over windows of every series' normalised residual.

The online seasonal detector (:mod:`vigil.detectors.online`) removes each series' level,
trend and daily/weekly profile and divides by its robust scale, so its residual
``r_t / σ_t`` looks alike on every metric and host. One network trained on those residuals
then serves every series (the article's finding: normalisation is what lets a model carry
across metrics). The residual is read back from the detector's outputs, no extra state::

    σ_t = (upper_t − expected_t) / z_open        r_t / σ_t = (value_t − expected_t) / σ_t

clipped to ``±clip`` (a residual of 40σ and one of 10σ are both "off the scale" — the
seasonal detector already scores the size; the LSTM is there for the *shape*).

:class:`WindowLSTM` is the model, in two kinds (``kind``):

* ``forecaster``: a ``layers``-layer LSTM reads the window and a linear head predicts each
  next step (teacher forcing); the error of a window is the squared error of its newest
  ``focus`` predictions.
* ``autoencoder``: an LSTM encoder folds the window into its last hidden state, an LSTM
  decoder unrolls it back (the state repeated at every step) and a linear head reconstructs
  the window; the error is the squared reconstruction error of its newest ``focus`` steps.

Errors become a Gaussian-like score with the errors of held-out normal training windows
(validation): ``z = 0.6745 · √e / m`` with ``m`` the median of ``√e`` over them — the root
error in units of the model's typical error, scaled as ``|N(0, 1)|`` (whose median is
0.6745), so ``z`` reads like the seasonal detector's equivalent z-score and the two can be
combined (a window the model gets 6 typical errors wrong scores 6 × 0.6745 ≈ 4).

Scores are causal: the window of a step holds that step and the ``window − 1`` before it.

:class:`ResidualRing` keeps the last ``window`` residuals of every series in memory for the
worker (rebuilt from live data after a restart or a rebalance: a series scores again once it
has ``window`` new steps).

torch is imported only when a model is built, trained or loaded.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(600, 16)).clip(-4, 4)
>>> model = WindowLSTM(window=16, hidden=8, layers=1, epochs=3, lr=5e-3).fit_windows(X)
>>> len(model.loss_), model.val_loss_[-1] < model.val_loss_[0]
(3, True)
>>> x = X[:2].copy(); x[0, -1] = 0.0; x[1, -1] = 8.0  # a jump at the end of the second
>>> z = model.score_windows(x)
>>> bool(z[1] > z[0])
True
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "LSTM_Z_OPEN",
    "ModelFileError",
    "ResidualRing",
    "WindowLSTM",
    "normal_windows",
    "residuals",
    "sliding_windows",
]

#: Saved-file format; a file of another version is refused with a clear error.
FORMAT_VERSION = 1
KINDS = ("forecaster", "autoencoder")
#: The LSTM score from which it joins a seasonal event or opens an incident of its own: the
#: worker's default (``VIGIL_LSTM_Z_OPEN``) and the lab's. High, because its scores are
#: heavy-tailed on real data (docs/lstm.md).
LSTM_Z_OPEN = 24.0
_MEDIAN_ABS_NORMAL = 0.6744897501960817  # median of |N(0, 1)|


class ModelFileError(ValueError):
    """A model file that cannot be used (missing, corrupt, wrong format or version)."""


def residuals(value, expected, upper, z_open: float, clip: float = 10.0) -> np.ndarray:
    """The online detector's normalised residual ``(value − expected) / σ``, clipped.

    ``σ`` is read back from the band the detector publishes (``upper = expected + z_open·σ``).

    >>> residuals([12.0, 7.0], [10.0, 10.0], [16.0, 16.0], z_open=6.0).tolist()
    [2.0, -3.0]
    """
    value, expected, upper = (np.asarray(a, np.float64) for a in (value, expected, upper))
    sigma = (upper - expected) / z_open
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(sigma > 0, (value - expected) / sigma, 0.0)
    return np.clip(np.nan_to_num(r, nan=0.0), -clip, clip)


def sliding_windows(x: np.ndarray, window: int) -> np.ndarray:
    """Every full window of ``x``, one per row (row ``i`` ends at ``x[i + window − 1]``).

    >>> sliding_windows(np.arange(4.0), 3).tolist()
    [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]
    """
    x = np.asarray(x, np.float32)
    if len(x) < window:
        return np.empty((0, window), np.float32)
    return np.lib.stride_tricks.sliding_window_view(x, window)


def normal_windows(ok: np.ndarray, window: int) -> np.ndarray:
    """Whether each full window (as :func:`sliding_windows`) holds only ``ok`` steps.

    >>> normal_windows(np.array([True, True, False, True, True]), 2).tolist()
    [True, False, False, True]
    """
    ok = np.asarray(ok, bool)
    if len(ok) < window:
        return np.zeros(0, bool)
    bad = np.r_[0, np.cumsum(~ok)]
    return (bad[window:] - bad[:-window]) == 0


def _device(torch, device: str):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return torch.device(device)


def _network(torch, kind: str, hidden: int, layers: int):
    nn = torch.nn

    class Forecaster(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(1, hidden, layers, batch_first=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):  # x: (batch, window) → errors per predicted step (batch, w-1)
            out, _ = self.lstm(x[:, :-1, None])
            return (self.head(out).squeeze(-1) - x[:, 1:]) ** 2

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.LSTM(1, hidden, layers, batch_first=True)
            self.decoder = nn.LSTM(hidden, hidden, layers, batch_first=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):  # → squared reconstruction errors (batch, window)
            _, (h, _) = self.encoder(x[:, :, None])
            code = h[-1][:, None, :].expand(-1, x.shape[1], -1)
            out, _ = self.decoder(code)
            return (self.head(out).squeeze(-1) - x) ** 2

    return Forecaster() if kind == "forecaster" else Autoencoder()


class WindowLSTM:
    """A global LSTM over residual windows (see the module docstring), scikit-learn style.

    Parameters
    ----------
    window
        Steps per window.
    kind
        ``forecaster`` (next-step error) or ``autoencoder`` (reconstruction error).
    hidden, layers
        LSTM units per layer and layers.
    focus
        The window's error is the mean squared error of its newest ``focus`` steps.
    epochs, batch_size, lr
        Adam training; the loss is the mean squared error over every step of the window.
    val_fraction
        Share of the training windows held out (at random) for the validation loss and the
        score's calibration.
    seed
        Seeds the weights, the split and the minibatch order (global RNGs untouched).
    clip
        Residuals are clipped to ``±clip`` (also applied to windows given to the model).
    device
        ``auto`` (CUDA when torch sees one, else CPU), ``cpu`` or ``cuda[:n]``.
    score_batch
        Windows per forward pass when scoring.

    Learned attributes: ``net_``, ``loss_`` and ``val_loss_`` (per epoch), ``scale_`` (the
    calibration: the validation windows' median root error / 0.6745), ``device_``,
    ``n_train_``.
    """

    def __init__(
        self,
        window: int = 64,
        kind: str = "autoencoder",
        hidden: int = 32,
        layers: int = 1,
        focus: int = 1,
        epochs: int = 5,
        batch_size: int = 256,
        lr: float = 2e-3,
        val_fraction: float = 0.1,
        seed: int = 0,
        clip: float = 10.0,
        device: str = "auto",
        score_batch: int = 4096,
    ) -> None:
        self.window = window
        self.kind = kind
        self.hidden = hidden
        self.layers = layers
        self.focus = focus
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.seed = seed
        self.clip = clip
        self.device = device
        self.score_batch = score_batch

    # ------------------------------------------------------------------ training

    def fit_windows(
        self, X, progress: Callable[[int, float, float], None] | None = None
    ) -> WindowLSTM:
        """Train on normal windows ``X`` (n, window); ``progress(epoch, loss, val_loss)``
        is called after each epoch."""
        import torch

        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        X = np.clip(np.asarray(X, np.float32), -self.clip, self.clip)
        if X.ndim != 2 or X.shape[1] != self.window or len(X) < 10:
            raise ValueError(f"need at least 10 windows of shape (n, {self.window})")
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(X))
        n_val = max(1, int(round(self.val_fraction * len(X))))
        val, train = X[order[:n_val]], X[order[n_val:]]
        self.device_ = _device(torch, self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net_ = _network(torch, self.kind, self.hidden, self.layers).to(self.device_)
        gen = torch.Generator().manual_seed(self.seed)
        optimiser = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        xt = torch.from_numpy(np.ascontiguousarray(train)).to(self.device_)
        self.loss_, self.val_loss_ = [], []
        for epoch in range(self.epochs):
            self.net_.train()
            total = 0.0
            for batch in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                optimiser.zero_grad()
                loss = self.net_(xt[batch.to(self.device_)]).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net_.parameters(), 1.0)
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            self.net_.eval()
            self.loss_.append(total / len(xt))
            self.val_loss_.append(float(self._errors(val, full=True).mean()))
            if progress is not None:
                progress(epoch + 1, self.loss_[-1], self.val_loss_[-1])
        self.scale_ = max(float(np.median(np.sqrt(self.errors(val)))) / _MEDIAN_ABS_NORMAL,
                          1e-6)
        self.n_train_ = len(X)
        return self

    # ------------------------------------------------------------------ scoring

    def _errors(self, X, full: bool = False, batch: int | None = None) -> np.ndarray:
        import torch

        X = np.clip(np.asarray(X, np.float32), -self.clip, self.clip)
        size = batch or self.score_batch
        width = X.shape[1] if self.kind == "autoencoder" else X.shape[1] - 1
        out = np.empty((len(X), width if full else 1), np.float64)
        with torch.inference_mode():
            for lo in range(0, len(X), size):
                part = torch.from_numpy(np.ascontiguousarray(X[lo:lo + size])).to(self.device_)
                err = self.net_(part)
                err = err if full else err[:, -self.focus:].mean(dim=1, keepdim=True)
                out[lo:lo + len(part)] = err.double().cpu().numpy()
        return out if full else out[:, 0]

    def errors(self, X, batch: int | None = None) -> np.ndarray:
        """Each window's error (mean squared error of its newest ``focus`` steps)."""
        X = np.asarray(X, np.float32)
        if len(X) == 0:
            return np.empty(0)
        return self._errors(X, batch=batch)

    def score_windows(self, X, batch: int | None = None) -> np.ndarray:
        """Calibrated scores ``√e / scale_``, forward passes of ``batch`` windows (default
        ``score_batch``)."""
        return np.sqrt(self.errors(X, batch)) / self.scale_

    def score_series(self, r: np.ndarray) -> np.ndarray:
        """One score per step of a residual series; ``nan`` before the first full window."""
        out = np.full(len(r), np.nan)
        X = sliding_windows(r, self.window)
        if len(X):
            out[self.window - 1:] = self.score_windows(X)
        return out

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write weights, hyperparameters, calibration and ``metadata`` (atomically)."""
        import torch

        path = Path(path)
        blob = {
            "format": "vigil-lstm",
            "version": FORMAT_VERSION,
            "params": {k: getattr(self, k) for k in (
                "window", "kind", "hidden", "layers", "focus", "clip", "epochs", "batch_size",
                "lr", "val_fraction", "seed")},
            "calibration": {"scale": self.scale_},
            "loss": self.loss_,
            "val_loss": self.val_loss_,
            "n_train": self.n_train_,
            "metadata": metadata or {},
            "state_dict": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
        }
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)  # a watcher never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> WindowLSTM:
        """A saved model, ready to score; :class:`ModelFileError` says what is wrong."""
        import torch

        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"cannot read LSTM model {path}: {exc}") from exc
        try:
            blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a bad file
            # torch's own text suggests weights_only=False, which would run code from the
            # file: not an option here, so only the kind of failure is reported.
            raise ModelFileError(
                f"{path} is not a vigil LSTM model file (torch.load: {type(exc).__name__})"
            ) from exc
        if not isinstance(blob, dict) or blob.get("format") != "vigil-lstm":
            raise ModelFileError(f"{path} is not a vigil LSTM model file")
        if blob.get("version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{path} has format version {blob.get('version')}; this vigil reads "
                f"{FORMAT_VERSION} (train it again with `vigil train`)"
            )
        try:
            model = cls(device=device, **blob["params"])
            model.device_ = _device(torch, device)
            net = _network(torch, model.kind, model.hidden, model.layers)
            net.load_state_dict(blob["state_dict"])
            model.net_ = net.to(model.device_).eval()
            model.scale_ = float(blob["calibration"]["scale"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: unusable LSTM model ({exc})") from exc
        model.loss_, model.val_loss_ = list(blob["loss"]), list(blob["val_loss"])
        model.n_train_ = int(blob["n_train"])
        model.metadata_ = dict(blob["metadata"])
        model.sha256_ = hashlib.sha256(raw).hexdigest()
        return model


@dataclass
class RingScores:
    """What :meth:`ResidualRing.windows` gathered: the windows and the steps they end at."""

    windows: np.ndarray  # (n, window) float32
    positions: np.ndarray  # the step (position in the batch) each window ends at


class ResidualRing:
    """The last ``window`` residuals of every series, in worker memory.

    :meth:`windows` appends a batch's steps (ordered by series, then time, as the detector
    returns them) and returns the full window ending at each of them. Not persisted: after a
    restart or a rebalance a series scores again once ``window`` new steps have arrived.

    >>> ring = ResidualRing(window=3)
    >>> got = ring.windows(["a", "b"], np.array([0, 0, 1]), np.array([1.0, 2.0, 9.0]))
    >>> got.positions.tolist()
    []
    >>> got = ring.windows(["a"], np.array([0, 0]), np.array([3.0, 4.0]))
    >>> got.positions.tolist(), got.windows.tolist()
    ([0, 1], [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
    """

    def __init__(self, window: int, max_series: int = 500_000) -> None:
        self.window = window
        self.max_series = max_series
        self._slot: dict[str, int] = {}
        self.data = np.zeros((0, window), np.float32)
        self.length = np.zeros(0, np.int64)

    def _slots(self, series: Sequence[str]) -> np.ndarray:
        if len(self._slot) + len(series) > self.max_series:
            self.forget()
        for s in series:
            if s not in self._slot:
                self._slot[s] = len(self._slot)
        if len(self._slot) > len(self.length):
            capacity = max(1024, 2 * len(self.length))
            while capacity < len(self._slot):
                capacity *= 2
            data = np.zeros((capacity, self.window), np.float32)
            length = np.zeros(capacity, np.int64)
            data[:len(self.length)], length[:len(self.length)] = self.data, self.length
            self.data, self.length = data, length
        return np.fromiter((self._slot[s] for s in series), np.int64, len(series))

    def forget(self) -> None:
        """Drop every series' history (on rebalance, or when ``max_series`` is reached)."""
        self._slot.clear()
        self.data = np.zeros((0, self.window), np.float32)
        self.length = np.zeros(0, np.int64)

    def windows(self, touched: Sequence[str], index: np.ndarray, r: np.ndarray) -> RingScores:
        """Append residuals ``r`` (steps of series ``touched[index]``) and gather windows."""
        w = self.window
        n = len(index)
        if n == 0:
            return RingScores(np.empty((0, w), np.float32), np.empty(0, np.int64))
        slots = self._slots(list(touched))
        starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
        counts = np.diff(np.r_[starts, n])
        rows = slots[index[starts]]
        # Each series' history (oldest first) followed by this batch's steps.
        longest = int(counts.max())
        merged = np.zeros((len(rows), w + longest), np.float32)
        merged[:, :w] = self.data[rows]
        rank = np.arange(n) - np.repeat(starts, counts)
        series_of_step = np.repeat(np.arange(len(rows)), counts)
        merged[series_of_step, w + rank] = r
        have = self.length[rows]
        # A step has a full window when history + its rank + 1 ≥ w.
        full = have[series_of_step] + rank + 1 >= w
        take = np.flatnonzero(full)
        cols = (w + rank[take] + 1)[:, None] - w + np.arange(w)[None, :]
        windows = merged[series_of_step[take][:, None], cols]
        # Keep the newest w values per series (the history is right-aligned).
        ends = w + counts
        self.data[rows] = merged[np.arange(len(rows))[:, None], ends[:, None] - w + np.arange(w)]
        self.length[rows] = np.minimum(have + counts, w)
        return RingScores(windows, take)


@dataclass
class LstmIncident:
    """An open incident of the LSTM alone (no seasonal incident open on the series)."""

    start_ms: int
    calm: int = 0
    severity: int = 1


class LstmIncidents:
    """Incidents opened by the LSTM score alone, with the seasonal detector's hysteresis.

    At a step with no seasonal incident open on the series, an LSTM score ``≥ z_open`` opens
    one (severity 2 from ``z_critical``); it stays open while the score is ``≥ z_close`` and
    resolves after ``resolve_steps`` calm steps. Where a seasonal incident is open, the LSTM
    opens none (its score then only *contributes* to that incident's event). In worker memory
    only: after a restart an open LSTM incident is forgotten (no resolve is sent for it).

    :meth:`step` returns ``(position, kind, incident start)`` for each event, ``kind`` as in
    :data:`vigil.detectors.online.EVENT_KINDS` (1 open, 2 update, 3 resolve).

    >>> inc = LstmIncidents(z_open=6, z_close=3, z_critical=12, resolve_steps=2)
    >>> z = np.array([1.0, 7.0, 4.0, 1.0, 1.0, 1.0])
    >>> inc.step(["a"], np.zeros(6, int), np.arange(6), z, np.full(6, -1))
    [(1, 1, 1), (4, 3, 1)]
    """

    def __init__(
        self, z_open: float = 6.0, z_close: float = 3.0, z_critical: float = 12.0,
        resolve_steps: int = 15,
    ) -> None:
        self.z_open = z_open
        self.z_close = z_close
        self.z_critical = z_critical
        self.resolve_steps = resolve_steps
        self.open: dict[str, LstmIncident] = {}

    def step(
        self,
        touched: Sequence[str],
        index: np.ndarray,
        ts_ms: np.ndarray,
        z: np.ndarray,
        seasonal_start_ms: np.ndarray,
    ) -> list[tuple[int, int, int]]:
        """Advance over a batch's steps (ordered by series, then time); ``z`` is ``nan``
        where the series had no full window; ``seasonal_start_ms ≥ 0`` where a seasonal
        incident is open."""
        hot = np.nan_to_num(z, nan=-np.inf) >= self.z_open
        # Every step of a series that is open already or gets hot in this batch.
        busy = {i for i, s in enumerate(touched) if s in self.open}
        busy.update(np.unique(index[hot]).tolist())
        candidates = np.flatnonzero(np.isin(index, list(busy)))
        events = []
        for i in candidates.tolist():
            series = touched[index[i]]
            score = -np.inf if z[i] != z[i] else float(z[i])
            incident = self.open.get(series)
            severity = 2 if score >= self.z_critical else 1
            if incident is None:
                if score >= self.z_open and seasonal_start_ms[i] < 0:
                    self.open[series] = LstmIncident(int(ts_ms[i]), severity=severity)
                    events.append((i, 1, int(ts_ms[i])))
                continue
            if severity > incident.severity:
                incident.severity = severity
                events.append((i, 2, incident.start_ms))
            incident.calm = 0 if score >= self.z_close else incident.calm + 1
            if incident.calm >= self.resolve_steps:
                del self.open[series]
                events.append((i, 3, incident.start_ms))
        return events
