"""Optional preparation of an offline model's input: outlier clipping and normalisation.

Resampling and gap filling are not here: every model already resamples raw rows with the
stream path's own code (:func:`~vigil.lab.models.resample_series`, i.e.
:mod:`vigil.detectors.resample`). This module adds what the lab may switch on:

* **clipping** (``clip_quantile = q``): the *training* values are clipped to their own
  ``[q, 1 − q]`` quantiles before the model is fitted, so a few outliers in the training
  part do not stretch what the model learns as normal. Scored values are never clipped:
  clipping them would hide the very anomalies being looked for.
* **normalisation** (``zscore``: mean and standard deviation; ``robust``: median and
  1.4826 · MAD): learned on the (clipped) training values and applied to every value,
  training and scored alike.

:class:`PreparedModel` wraps any lab model with a :class:`Preparation`; both keep the
models' causality (everything is learned from the training part only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NORMALISATIONS", "Preparation", "PreparedModel"]

NORMALISATIONS = ("none", "zscore", "robust")


@dataclass(frozen=True)
class Preparation:
    """What to do to a model's input.

    Parameters
    ----------
    clip_quantile
        Clip training values to their ``[q, 1 − q]`` quantiles; ``None``: no clipping.
    normalise
        ``none``, ``zscore`` or ``robust``.

    Examples
    --------
    >>> prep = Preparation(clip_quantile=0.1, normalise="robust")
    >>> train = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 100])
    >>> center, scale, low, high = prep.fit(train)
    >>> float(high) < 100, float(center)
    (True, 5.5)
    """

    clip_quantile: float | None = None
    normalise: str = "none"

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, not {self.normalise!r}")
        if self.clip_quantile is not None and not 0.0 < self.clip_quantile < 0.5:
            raise ValueError("clip_quantile must lie strictly between 0 and 0.5")

    @property
    def active(self) -> bool:
        return self.clip_quantile is not None or self.normalise != "none"

    def fit(self, values) -> tuple[float, float, float, float]:
        """``(center, scale, clip low, clip high)`` learned from training values."""
        y = np.asarray(values, np.float64)
        y = y[np.isfinite(y)]
        if not len(y):
            return 0.0, 1.0, -np.inf, np.inf
        low, high = -np.inf, np.inf
        if self.clip_quantile is not None:
            low, high = np.quantile(y, [self.clip_quantile, 1.0 - self.clip_quantile])
            y = np.clip(y, low, high)
        if self.normalise == "zscore":
            center, scale = float(np.mean(y)), float(np.std(y))
        elif self.normalise == "robust":
            center = float(np.median(y))
            scale = 1.4826 * float(np.median(np.abs(y - center)))
        else:
            center, scale = 0.0, 1.0
        if not scale > 0:  # a constant training part: keep the values' own scale
            scale = 1.0
        return center, scale, float(low), float(high)

    def describe(self) -> dict:
        """The choices, for metrics.json and the report."""
        return {
            "clip_outliers": None if self.clip_quantile is None else {
                "quantiles": [self.clip_quantile, 1.0 - self.clip_quantile],
                "applies_to": "training values only (scored values are never clipped)",
            },
            "normalise": self.normalise,
        }


class PreparedModel:
    """A lab model whose input goes through a :class:`Preparation` first.

    >>> from vigil.lab.models import IsolationForestModel
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(800)
    >>> y = 10 + np.random.default_rng(1).normal(size=800)
    >>> y[700] = 30.0
    >>> m = PreparedModel(IsolationForestModel(step_s=300), Preparation(0.01, "zscore"))
    >>> int(np.nanargmax(m.fit(y[:300], t[:300]).score_samples(y, t)))
    700
    """

    def __init__(self, model, preparation: Preparation) -> None:
        self.model = model
        self.preparation = preparation

    def fit(self, values, ts_ms) -> PreparedModel:
        center, scale, low, high = self.preparation.fit(values)
        self.center_, self.scale_ = center, scale
        clipped = np.clip(np.asarray(values, np.float64), low, high)
        self.model.fit((clipped - center) / scale, ts_ms)
        return self

    def score_samples(self, values, ts_ms) -> np.ndarray:
        return self.model.score_samples(
            (np.asarray(values, np.float64) - self.center_) / self.scale_, ts_ms
        )
