"""A second opinion on an incident opening, learned from operators' verdicts (issue 19).

Operators mark incidents *not an anomaly* (false) or *acknowledge* them (true). From those
labels :class:`SecondOpinion` learns how likely an opening is to be true, from what the
detector and the alert already know about it (:func:`opening_features`):

1. its score ``z`` (σ);
2. and 3. the hour of the day (sine and cosine: a nightly batch job);
4. how many openings the series had in the week before;
5. the steps since the series' previous opening (log): a series that alerts every few hours;
6. the total variation of the last 100 steps, min-max scaled (the article's *S*): how busy the
   series was before the opening — the chart the operator saw.

The model is an L2-regularised logistic regression on standardised features, fitted with
scipy's L-BFGS: small enough to read in one screen, to train on a few dozen verdicts, and to
run in the notifier without the lab's libraries. ``bench/second_opinion.py`` compares it
with gradient-boosted trees and the article's perceptron on the development corpora
(docs/feedback.md has the table and why this one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

__all__ = ["FEATURES", "SecondOpinion", "opening_features", "total_variation"]

FEATURES = ("z", "hour_sin", "hour_cos", "openings_week", "log_steps_since", "variation")
WINDOW = 100
WEEK_MS = 7 * 86_400_000
NEVER_STEPS = 1e6  # "steps since the previous opening" of a series' first one


def total_variation(values: Sequence[float], window: int = WINDOW) -> float:
    """Σ|x(t+1) − x(t)| of the last ``window`` values min-max scaled to [0, 1] (0 for a flat
    or too short window; non-finite values are left out).

    >>> total_variation([0.0, 2.0, 4.0, 0.0])
    2.0
    """
    v = np.asarray(values, np.float64)[-window:]
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return 0.0
    span = max(float(v.max() - v.min()), 1e-9 * (abs(float(v.mean())) + 1.0))
    return float(np.abs(np.diff((v - v.min()) / span)).sum())


def opening_features(z: float, ts_ms: int, previous_ms: Sequence[int], step_ms: int,
                     values: Sequence[float]) -> np.ndarray:
    """The features of one opening (:data:`FEATURES`): its ``z``, time, the series' earlier
    openings' times ``previous_ms`` and its recent values (oldest first, ending at it).

    >>> opening_features(8.0, 3 * 3_600_000, [], 60_000, [1.0, 2.0]).round(2).tolist()
    [8.0, 0.71, 0.71, 0.0, 13.82, 1.0]
    """
    hour = (ts_ms % 86_400_000) / 3_600_000
    earlier = [t for t in previous_ms if t < ts_ms]
    since = (ts_ms - max(earlier)) / step_ms if earlier else NEVER_STEPS
    return np.array([
        float(z), math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24),
        float(sum(t > ts_ms - WEEK_MS for t in earlier)), math.log1p(max(since, 0.0)),
        total_variation(values),
    ])


class SecondOpinion:
    """The probability that an opening is true, by logistic regression on its features.

    >>> x = np.array([[1.0], [2.0], [8.0], [9.0]]); y = np.array([0, 0, 1, 1])
    >>> model = SecondOpinion(l2=0.1).fit(x, y)
    >>> bool(model.probability(x)[0] < 0.5 < model.probability(x)[3])
    True
    """

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2

    def fit(self, X, y) -> SecondOpinion:
        """Fit on feature rows ``X`` and 0/1 labels ``y`` (both classes weighted equally)."""
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if len(set(y.tolist())) < 2:
            raise ValueError("a second opinion needs verdicts of both kinds (true and false)")
        self.mean_ = X.mean(axis=0)
        self.scale_ = np.where(X.std(axis=0) > 1e-12, X.std(axis=0), 1.0)
        Z = (X - self.mean_) / self.scale_
        weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            logit = Z @ w[1:] + w[0]
            p = expit(logit)
            nll = np.logaddexp(0.0, logit) - y * logit
            grad = weight * (p - y)
            value = float(weight @ nll) / len(y) + 0.5 * self.l2 * float(w[1:] @ w[1:]) / len(y)
            g = np.r_[grad.sum(), Z.T @ grad] / len(y)
            g[1:] += self.l2 * w[1:] / len(y)
            return value, g

        result = minimize(loss, np.zeros(Z.shape[1] + 1), jac=True, method="L-BFGS-B")
        self.coef_, self.intercept_ = result.x[1:], float(result.x[0])
        self.n_verdicts_ = len(y)
        return self

    def probability(self, X) -> np.ndarray:
        """P(true) of each feature row."""
        Z = (np.atleast_2d(np.asarray(X, np.float64)) - self.mean_) / self.scale_
        return expit(Z @ self.coef_ + self.intercept_)

    def to_dict(self) -> dict:
        """The fitted model as JSON-ready data (no pickle: a model file is only numbers)."""
        return {"kind": "logistic", "version": 1, "features": list(FEATURES),
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_,
                "l2": self.l2, "n_verdicts": self.n_verdicts_}

    @classmethod
    def from_dict(cls, data: dict) -> SecondOpinion:
        if data.get("kind") != "logistic" or data.get("version") != 1 \
                or data.get("features") != list(FEATURES):
            raise ValueError("not a vigil second-opinion model of this version (train it "
                             "again with `vigil train --feedback`)")
        model = cls(float(data["l2"]))
        model.mean_ = np.asarray(data["mean"], np.float64)
        model.scale_ = np.asarray(data["scale"], np.float64)
        model.coef_ = np.asarray(data["coef"], np.float64)
        model.intercept_ = float(data["intercept"])
        model.n_verdicts_ = int(data["n_verdicts"])
        return model
