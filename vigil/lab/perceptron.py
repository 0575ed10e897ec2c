"""The article's supervised perceptron: a labelled-window classifier, trained on other series.

The article ("cyber-oracle", ``/work/shared/seeds``) feeds a multilayer perceptron a
100-measurement window of the *normalised* series plus the window's total variation
``S = Σ|x(t+1) − x(t)|`` (101 inputs), with two hidden layers of 55 and 1024 sigmoid units,
one output ("anomaly" / "not an anomaly"), cross-entropy loss and Adam with a learning rate
of 5e-5. It was trained on labelled windows of one server's free memory and applied to
another server's load average — normalisation is what lets it carry across scales.

:class:`WindowPerceptron` is that network in torch. Its inputs for the window ending at a
step:

1. the last ``window`` resampled steps (the stream path's resampling, as every lab model),
   scaled **min-max within the window** to [0, 1] (the range floored at
   ``1e-9 · (|mean| + 1)``, so a constant window is all zeros, not 0/0);
2. ``S`` of that normalised window, ``Σ|x(t+1) − x(t)|`` over its ``window − 1`` steps.

Each of the ``window + 1`` inputs is then standardised with the mean and standard deviation
it had over the training windows (learned by :meth:`WindowPerceptron.fit_windows`), so ``S``
(in [0, window − 1]) and the [0, 1] values reach the network on the same scale.

A step's score is the network's probability of "anomaly" (in (0, 1), computed in float64
from the logit so that it does not saturate to ties); the first ``window − 1`` steps, which
have no full window, score 0. Scores are causal: a step's window holds that step and earlier
ones only.
"""

from __future__ import annotations

import copy

import numpy as np

from vigil.detectors.online import MAX_FILL_S
from vigil.detectors.resample import Steps
from vigil.lab.models import _to_rows, resample_series

__all__ = [
    "SUPERVISED_MODELS", "WindowPerceptron", "labelled_windows", "series_folds", "subsample",
    "window_inputs",
]

#: Inference runs on fixed-size chunks (the last one zero-padded), so a row's output never
#: depends on how many rows were scored with it (causality holds bit for bit).
_CHUNK = 2048


def window_inputs(values: np.ndarray, window: int = 100) -> np.ndarray:
    """The perceptron's raw inputs, one row per step with a full window.

    The shape is ``(n − window + 1, window + 1)``.

    Row ``i`` describes the window of steps ``i … i + window − 1`` (it ends at step
    ``i + window − 1``): the window min-max scaled to [0, 1], then its ``S``.

    >>> window_inputs(np.array([0.0, 2.0, 4.0, 0.0]), window=3).tolist()
    [[0.0, 0.5, 1.0, 1.0], [0.5, 1.0, 0.0, 1.5]]
    """
    v = np.asarray(values, np.float64)
    if len(v) < window:
        return np.empty((0, window + 1))
    w = np.lib.stride_tricks.sliding_window_view(v, window)
    low = w.min(axis=1, keepdims=True)
    span = w.max(axis=1, keepdims=True) - low
    floor = 1e-9 * (np.abs(w.mean(axis=1, keepdims=True)) + 1.0)
    x = (w - low) / np.maximum(span, floor)
    s = np.abs(np.diff(x, axis=1)).sum(axis=1, keepdims=True)
    return np.hstack([x, s])


def series_folds(ids: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """Split series ids into ``min(k, len(ids))`` held-out groups (shuffled with ``seed``).

    Every id is held out exactly once; a model for a group is trained on the other groups'
    series only. ``k ≥ len(ids)`` is leave-one-series-out.

    >>> series_folds(["a", "b", "c"], k=5)
    [['c'], ['a'], ['b']]
    """
    if not ids:
        return []
    order = np.random.default_rng(seed).permutation(len(ids))
    k = max(1, min(k, len(ids)))
    return [[ids[j] for j in order[f::k]] for f in range(k)]


class WindowPerceptron:
    """The article's MLP (101 → 55 → 1024 → 1, sigmoid, BCE, Adam) on normalised windows.

    Trained on labelled windows (:meth:`fit_windows`), typically of *other* series (the lab
    trains it by series folds, :func:`series_folds`); :meth:`score_samples` then scores any
    series causally, one score per raw row like the other lab models.

    Parameters
    ----------
    step_s
        Resampling step in seconds.
    window
        Steps per input window (the article: 100).
    hidden
        Units of the two hidden layers (the article: 55 and 1024).
    lr
        Adam's learning rate (the article: 5e-5; Adam's other parameters default).
    epochs, batch_size
        Passes over the training windows and the minibatch size.
    class_weight
        Weigh positive windows by ``n_negative / n_positive`` in the loss (the labelled
        windows are a small minority).
    seed
        Seeds the weights' initialisation and the minibatch order (the global torch RNG is
        left as it was).
    max_fill_s
        Gaps up to this long are filled with the last value when resampling.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 101)); y = (X[:, -1] > 1).astype(float)
    >>> model = WindowPerceptron(epochs=3, lr=1e-3).fit_windows(X, y)
    >>> len(model.loss_), model.loss_[-1] < model.loss_[0]
    (3, True)
    """

    def __init__(
        self,
        step_s: int = 60,
        window: int = 100,
        hidden: tuple[int, int] = (55, 1024),
        lr: float = 5e-5,
        epochs: int = 10,
        batch_size: int = 64,
        class_weight: bool = True,
        seed: int = 0,
        max_fill_s: int = MAX_FILL_S,
    ) -> None:
        self.step_s = step_s
        self.window = window
        self.hidden = hidden
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.seed = seed
        self.max_fill_s = max_fill_s

    # ------------------------------------------------------------------ training

    def fit_windows(self, X, y) -> WindowPerceptron:
        """Train on raw input rows ``X`` (:func:`window_inputs`) and 0/1 labels ``y``."""
        import torch

        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64).ravel()
        if X.ndim != 2 or X.shape[1] != self.window + 1 or len(X) != len(y) or not len(y):
            raise ValueError(f"X must be (n, {self.window + 1}) with one label per row")
        self.mean_ = X.mean(axis=0)
        self.scale_ = np.where(X.std(axis=0) > 1e-12, X.std(axis=0), 1.0)
        xt = torch.as_tensor((X - self.mean_) / self.scale_, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        n_pos = float(y.sum())
        weight = (len(y) - n_pos) / n_pos if self.class_weight and 0 < n_pos < len(y) else 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net_ = self._build_net(torch)
        gen = torch.Generator().manual_seed(self.seed)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))
        optimiser = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        self.loss_ = []
        self.net_.train()
        for _ in range(self.epochs):
            total = 0.0
            for batch in torch.randperm(len(yt), generator=gen).split(self.batch_size):
                optimiser.zero_grad()
                loss = loss_fn(self.net_(xt[batch]).squeeze(1), yt[batch])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            self.loss_.append(total / len(yt))
        self.net_.eval()
        return self

    def _build_net(self, torch):
        nn = torch.nn
        h1, h2 = self.hidden
        # Sigmoid hidden units as in the article; the output's sigmoid is inside the loss
        # (BCEWithLogitsLoss, the numerically stable form of sigmoid + cross-entropy).
        return nn.Sequential(
            nn.Linear(self.window + 1, h1), nn.Sigmoid(),
            nn.Linear(h1, h2), nn.Sigmoid(),
            nn.Linear(h2, 1),
        )

    # ------------------------------------------------------------------ series

    def at_step(self, step_s: int) -> WindowPerceptron:
        """The same model (trained or not) resampling series at ``step_s``: its inputs count
        steps, not seconds, so one network scores hourly and 5-minute series alike.

        >>> WindowPerceptron(step_s=300).at_step(3600).step_s
        3600
        """
        other = copy.copy(self)
        other.step_s = step_s
        return other

    def _steps(self, values, ts_ms) -> Steps:
        return resample_series(ts_ms, values, self.step_s * 1000, self.max_fill_s // self.step_s)

    def series_windows(self, values, ts_ms) -> tuple[Steps, np.ndarray]:
        """The series' steps and the raw inputs of every step with a full window."""
        steps = self._steps(values, ts_ms)
        return steps, window_inputs(steps.value, self.window)

    def predict_windows(self, X) -> np.ndarray:
        """The probability of "anomaly" for raw input rows ``X`` (float64)."""
        import torch

        X = (np.asarray(X, np.float64) - self.mean_) / self.scale_
        logits = np.empty(len(X))
        with torch.no_grad():
            for start in range(0, len(X), _CHUNK):
                part = X[start:start + _CHUNK]
                padded = np.zeros((_CHUNK, X.shape[1]), np.float32)
                padded[:len(part)] = part
                out = self.net_(torch.from_numpy(padded)).squeeze(1).numpy()
                logits[start:start + len(part)] = out[:len(part)]
        return 1.0 / (1.0 + np.exp(-logits))

    def score_samples(self, values, ts_ms) -> np.ndarray:
        """One causal score per raw row: the probability for its step's window (0 before
        the first full window, ``nan`` on a row that closes no step)."""
        steps, X = self.series_windows(values, ts_ms)
        step_scores = np.zeros(len(steps))
        if len(X):
            step_scores[self.window - 1:] = self.predict_windows(X)
        return _to_rows(ts_ms, steps.ts_ms, step_scores, self.step_s * 1000)


def labelled_windows(
    model: WindowPerceptron, values, ts_ms, windows_ms: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """A series' training rows for ``model``: raw inputs and labels.

    A window is positive when its last step's timestamp lies inside a labelled window
    (``start_ms ≤ t ≤ end_ms``), negative otherwise.
    """
    steps, X = model.series_windows(values, ts_ms)
    t = steps.ts_ms[model.window - 1:] if len(X) else np.empty(0, np.int64)
    y = np.zeros(len(X))
    for start, end in windows_ms:
        y[(t >= start) & (t <= end)] = 1.0
    return X, y


def subsample(
    X: np.ndarray, y: np.ndarray, cap: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``cap`` rows: every positive up to ``cap // 2``, negatives filling the rest
    (both drawn at random with ``seed`` when there are more)."""
    if len(y) <= cap:
        return X, y
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    pos = rng.choice(pos, min(len(pos), cap // 2), replace=False)
    neg = rng.choice(neg, min(len(neg), cap - len(pos)), replace=False)
    keep = np.sort(np.r_[pos, neg])
    return X[keep], y[keep]


#: The lab's supervised detectors: trained on the *other* series' labels, by series folds.
SUPERVISED_MODELS: dict[str, type] = {"mlp": WindowPerceptron}
