"""Anomaly detectors behind one scikit-learn-style interface, for the offline lab.

Every model here scores one series at a time:

* ``fit(values, ts_ms)`` learns from a training prefix of the series (the lab passes NAB's
  probation rows) and returns ``self``;
* ``score_samples(values, ts_ms)`` gives one anomaly score per raw row, **higher = more
  anomalous**, ``nan`` for a row that closes no step (see below). Scores are *causal*: the
  score of row ``i`` depends only on rows ``≤ i`` (and on what ``fit`` learned), so changing
  later rows never changes it.

All models see the series the way the stream path does: raw points are resampled to a
regular step by :func:`~vigil.detectors.resample.resample_batch` (mean per step, short gaps
filled with the last value), and a step's score is put on the last raw row inside it
(:func:`~vigil.detectors.resample.last_row_of_step`). The offline models (IsolationForest,
One-Class SVM, HalfSpaceTrees) score window features of the deseasonalised, normalised
steps (:class:`SeasonalNormaliser`, :func:`window_features`), learned on the training prefix.

:data:`MODELS` maps the lab's detector names to the classes. The supervised detector, the
article's perceptron, trains on other series' labels instead of a probation prefix; it lives
in :mod:`vigil.lab.perceptron` (``SUPERVISED_MODELS``) and the lab trains it by series
folds.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from vigil.detectors.bank import new_state_bank
from vigil.detectors.online import MAX_FILL_S, DetectorParams, OnlineDetector
from vigil.detectors.resample import Steps, last_row_of_step, resample_batch

__all__ = [
    "MODELS",
    "HalfSpaceTreesModel",
    "IsolationForestModel",
    "OneClassSVMModel",
    "OnlineModel",
    "ProphetModel",
    "SeasonalNormaliser",
    "batches_per_step",
    "resample_series",
    "window_features",
]

DAY_MS = 86_400_000


def resample_series(
    ts_ms, values, step_ms: int, max_fill_steps: int, bank=None, index=None
) -> Steps:
    """All steps of one series — or of several, ``index`` giving each point's bank row —
    the last ones included (the stream path's resampling), ordered by series then time.

    The stream closes a step when a later point arrives; here a probe point one step after
    each series' last one closes it (the probe itself stays open and is never returned).
    ``bank`` is the state to resample into (a fresh one by default).

    >>> steps = resample_series([0, 30_000, 60_000], [1.0, 3.0, 5.0], 60_000, 5)
    >>> steps.ts_ms.tolist(), steps.value.tolist()
    ([0, 60000], [1.0, 4.0])
    """
    ts_ms = np.asarray(ts_ms, np.int64)
    index = np.zeros(len(ts_ms), np.int64) if index is None else np.asarray(index, np.int64)
    if bank is None:
        bank = new_state_bank(int(index.max()) + 1 if len(index) else 1)
    steps = resample_batch(bank, index, ts_ms, values, step_ms, max_fill_steps)
    open_rows = np.flatnonzero(bank["bucket_count"] > 0)
    if not len(open_rows):
        return steps
    probes = bank["bucket_ms"][open_rows] + step_ms
    last = resample_batch(
        bank, open_rows, probes, np.zeros(len(open_rows)), step_ms, max_fill_steps
    )
    fields = ("index", "ts_ms", "value", "filled", "after_gap")
    merged = [np.r_[getattr(steps, f), getattr(last, f)] for f in fields]
    order = np.lexsort((merged[1], merged[0]))
    return Steps(*(column[order] for column in merged), dropped=steps.dropped)


def _to_rows(row_ts_ms, step_ts_ms, step_scores: np.ndarray, step_ms: int) -> np.ndarray:
    """Per-row scores: each step's score on its last raw row, ``nan`` elsewhere."""
    out = np.full(len(row_ts_ms), np.nan)
    rows = last_row_of_step(row_ts_ms, step_ts_ms, step_ms)
    out[rows[rows >= 0]] = step_scores[rows >= 0]
    return out


class OnlineModel:
    """The online seasonal detector (:mod:`vigil.detectors.online`), run causally.

    ``score_samples`` feeds the series through :class:`~vigil.detectors.online.OnlineDetector`
    from a fresh state — the worker's code, on a bank of one series — and returns the
    detector's equivalent Gaussian z-score (the largest of its point, level-shift, variance,
    oscillation and flatline statistics; 0 during warm-up). ``incident_openings`` returns the
    rows where it opened an incident, i.e. what the worker would alert on. The detector
    learns online, so ``fit`` learns nothing: the series' first rows are its training.

    One batch gives the same steps as feeding the points one by one (the detector's
    decisions do not depend on how points are batched).

    Parameters
    ----------
    step_s
        The resampling step in seconds.
    params
        :class:`~vigil.detectors.online.DetectorParams`; ``step_s`` overrides its step.

    Examples
    --------
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(600)
    >>> y = 10 + np.sin(np.arange(600) / 5.0)
    >>> y[500] = 30.0
    >>> model = OnlineModel(step_s=300).fit(y[:90], t[:90])
    >>> z = model.score_samples(y, t)
    >>> int(np.argmax(z)), bool(z[500] > 6)
    (500, True)
    >>> np.flatnonzero(model.incident_openings(y, t)).tolist()
    [500]
    """

    def __init__(self, step_s: int = 60, params: DetectorParams | None = None) -> None:
        self.step_s = step_s
        self.params = params

    def fit(self, values, ts_ms) -> OnlineModel:
        self.detector_ = OnlineDetector(
            replace(self.params or DetectorParams(), step_s=self.step_s)
        )
        return self

    def score_samples(self, values, ts_ms) -> np.ndarray:
        return self.score_and_openings(values, ts_ms)[0]

    def incident_openings(self, values, ts_ms) -> np.ndarray:
        """Boolean per row: the detector opened an incident on this row's step."""
        return self.score_and_openings(values, ts_ms)[1]

    def score_and_openings(self, values, ts_ms) -> tuple[np.ndarray, np.ndarray]:
        """The z-scores and the incident openings from one pass over the series."""
        return self.score_and_openings_many([(values, ts_ms)])[0]

    def score_and_openings_many(
        self, series: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`score_and_openings` of several ``(values, ts_ms)`` series in one batch.

        Series do not interact, so the results are those of one series at a time; one call
        saves the per-batch overhead (resampling, result arrays) of one call per series.
        """
        p = self.detector_.params
        stamps = [np.asarray(ts, np.int64) for _, ts in series]
        index = np.concatenate([np.full(len(ts), k) for k, ts in enumerate(stamps)])
        bank = new_state_bank(len(series))
        steps = resample_series(
            np.concatenate(stamps), np.concatenate([np.asarray(v, float) for v, _ in series]),
            p.step_ms, p.max_fill_steps, bank, index,
        )
        result = self.detector_.process_steps(bank, steps)
        opened = (result.event == 1).astype(float)
        out = []
        for k, ts in enumerate(stamps):
            mine = steps.index == k
            step_ts = steps.ts_ms[mine]
            out.append((
                _to_rows(ts, step_ts, result.z[mine], p.step_ms),
                _to_rows(ts, step_ts, opened[mine], p.step_ms) == 1.0,
            ))
        return out

    @staticmethod
    def score_and_openings_at_steps(
        series: Sequence[tuple[np.ndarray, np.ndarray]], steps: Sequence[int],
        params: DetectorParams | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`score_and_openings_many` with each series at its own step ``steps[k]``
        (an hourly file beside 5-minute ones): one batch per step, results in input order.
        ``params`` as in the constructor (the shipped defaults when ``None``).

        >>> t = 1_700_006_400_000 + np.arange(400) * 300_000
        >>> y = 10 + np.sin(np.arange(400) / 5.0)
        >>> at = OnlineModel.score_and_openings_at_steps([(y, t), (y, t)], [300, 600])
        >>> alone = OnlineModel(step_s=600).fit(None, None).score_and_openings(y, t)
        >>> bool(np.array_equal(at[1][0], alone[0], equal_nan=True))
        True
        """
        return batches_per_step(
            series, steps,
            lambda batch, step: OnlineModel(step_s=step, params=params).fit(None, None)
            .score_and_openings_many(batch))


def batches_per_step(items: Sequence, steps: Sequence[int], run) -> list:
    """``run(batch, step)`` once per distinct step, on the items at that step (it returns one
    result per item of its batch); the results in ``items`` order.

    >>> batches_per_step("abc", [60, 300, 60], lambda batch, step: [f"{x}@{step}" for x in batch])
    ['a@60', 'b@300', 'c@60']
    """
    out: list = [None] * len(items)
    for step in sorted(set(steps)):
        group = [k for k, s in enumerate(steps) if s == step]
        for k, result in zip(group, run([items[k] for k in group], step), strict=True):
            out[k] = result
    return out


class SeasonalNormaliser:
    """Remove a daily profile, then centre and scale: ``z = (y − D(hour) − m) / s``.

    ``D`` holds the hourly medians of the training steps (minus their overall median) and is
    used only when the training covers two days or more and it explains at least
    ``min_explained`` of the variance, so a series without a daily cycle gets none. ``m`` and
    ``s`` are the median and the scaled median absolute deviation of the deseasonalised
    training values; ``s`` is floored at ``scale_floor`` times the mean absolute step change
    (as the online detector does), so a nearly constant series does not score every blip at
    1e9σ.

    Examples
    --------
    >>> t = np.arange(4 * 288) * 300_000
    >>> y = 5 + 3 * np.sin(2 * np.pi * t / DAY_MS) + 0.1 * np.random.default_rng(0).normal(
    ...     size=len(t))
    >>> norm = SeasonalNormaliser().fit(y, t)
    >>> norm.seasonal_, bool(np.abs(norm.transform(y, t)).mean() < 2)
    (True, True)
    """

    def __init__(self, min_explained: float = 0.3, scale_floor: float = 0.25) -> None:
        self.min_explained = min_explained
        self.scale_floor = scale_floor

    def fit(self, values, ts_ms) -> SeasonalNormaliser:
        y = np.asarray(values, np.float64)
        hour = (np.asarray(ts_ms, np.int64) % DAY_MS) // 3_600_000
        profile = np.zeros(24)
        for h in np.unique(hour):
            profile[h] = np.median(y[hour == h])
        profile -= np.median(y)
        explained = 1.0 - np.var(y - profile[hour]) / max(np.var(y), 1e-300)
        # Time covered, counting the last row's own step (mean spacing).
        covered = (ts_ms[-1] - ts_ms[0]) * len(y) / (len(y) - 1) if len(y) > 1 else 0
        self.seasonal_ = bool(covered >= 2 * DAY_MS and explained >= self.min_explained)
        self.profile_ = profile if self.seasonal_ else np.zeros(24)
        rest = y - self.profile_[hour]
        self.center_ = float(np.median(rest))
        mad = 1.4826 * float(np.median(np.abs(rest - self.center_)))
        step = float(np.mean(np.abs(np.diff(y)))) if len(y) > 1 else 0.0
        self.scale_ = max(mad, self.scale_floor * step, 1e-9 * (abs(self.center_) + 1.0))
        return self

    def transform(self, values, ts_ms) -> np.ndarray:
        hour = (np.asarray(ts_ms, np.int64) % DAY_MS) // 3_600_000
        y = np.asarray(values, np.float64)
        return (y - self.profile_[hour] - self.center_) / self.scale_


def window_features(z: np.ndarray, window: int) -> np.ndarray:
    """Causal features of each step from the ``window`` steps up to and including it.

    Columns: the value ``z_t``; its jump from the mean of the previous ``window`` steps; the
    window's mean (level), standard deviation (variance) and total variation
    ``S = Σ|z(t+1) − z(t)|`` (the article's collective-anomaly statistic). Before the first
    full window the series' first value stands in for the missing past.

    >>> window_features(np.array([0.0, 0.0, 0.0, 4.0]), window=2)[-1].tolist()
    [4.0, 4.0, 2.0, 2.0, 4.0]
    """
    z = np.asarray(z, np.float64)
    padded = np.r_[np.full(window, z[0] if len(z) else 0.0), z]
    past = np.lib.stride_tricks.sliding_window_view(padded, window + 1)  # [t-w, ..., t]
    current = past[:, 1:]
    jump = z - past[:, :-1].mean(axis=1)
    tv = np.abs(np.diff(past, axis=1)).sum(axis=1)
    return np.column_stack([z, jump, current.mean(axis=1), current.std(axis=1), tv])


class _WindowModel:
    """Shared part of the models that score window features of normalised steps."""

    def __init__(self, step_s: int = 60, window: int = 12, max_fill_s: int = MAX_FILL_S) -> None:
        self.step_s = step_s
        self.window = window
        self.max_fill_s = max_fill_s

    def _steps(self, values, ts_ms) -> Steps:
        return resample_series(ts_ms, values, self.step_s * 1000, self.max_fill_s // self.step_s)

    def _features(self, steps: Steps) -> np.ndarray:
        return window_features(self.normaliser_.transform(steps.value, steps.ts_ms), self.window)

    def _fit_features(self, values, ts_ms) -> np.ndarray:
        steps = self._steps(values, ts_ms)
        self.normaliser_ = SeasonalNormaliser().fit(steps.value, steps.ts_ms)
        return self._features(steps)

    def _score_rows(self, values, ts_ms, score_steps: Callable[[np.ndarray], np.ndarray]):
        steps = self._steps(values, ts_ms)
        return _to_rows(
            ts_ms, steps.ts_ms, score_steps(self._features(steps)), self.step_s * 1000
        )


class IsolationForestModel(_WindowModel):
    """scikit-learn's IsolationForest on window features of the normalised steps.

    Score: ``−IsolationForest.score_samples`` (the average path length turned into an
    anomaly score in (0, 1]; about 0.5 is ordinary). Fitted on the training prefix only, so
    every later score is causal.

    Parameters
    ----------
    step_s
        Resampling step in seconds.
    window
        Steps in the feature window (:func:`window_features`).
    n_estimators, seed
        Trees of the forest and its random seed.

    Examples
    --------
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(800)
    >>> y = 10 + np.random.default_rng(1).normal(size=800)
    >>> y[700] = 30.0
    >>> model = IsolationForestModel(step_s=300).fit(y[:300], t[:300])
    >>> s = model.score_samples(y, t)
    >>> len(s), int(np.nanargmax(s))
    (800, 700)
    """

    def __init__(
        self,
        step_s: int = 60,
        window: int = 12,
        max_fill_s: int = MAX_FILL_S,
        n_estimators: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(step_s, window, max_fill_s)
        self.n_estimators = n_estimators
        self.seed = seed

    def fit(self, values, ts_ms) -> IsolationForestModel:
        from sklearn.ensemble import IsolationForest

        features = self._fit_features(values, ts_ms)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.seed
        ).fit(features)
        return self

    def score_samples(self, values, ts_ms) -> np.ndarray:
        return self._score_rows(values, ts_ms, lambda f: -self.forest_.score_samples(f))


class OneClassSVMModel(_WindowModel):
    """scikit-learn's One-Class SVM (RBF kernel) on standardised window features.

    Score: ``−decision_function`` (signed distance outside the learned support; positive =
    outside). Fitted on the training prefix only, so every later score is causal.

    Parameters
    ----------
    step_s
        Resampling step in seconds.
    window
        Steps in the feature window (:func:`window_features`).
    nu
        Upper bound on the share of training steps treated as outliers.

    Examples
    --------
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(800)
    >>> y = 10 + np.random.default_rng(1).normal(size=800)
    >>> y[700] = 30.0
    >>> model = OneClassSVMModel(step_s=300).fit(y[:300], t[:300])
    >>> s = model.score_samples(y, t)
    >>> len(s), int(np.nanargmax(s))
    (800, 700)
    """

    def __init__(
        self, step_s: int = 60, window: int = 12, max_fill_s: int = MAX_FILL_S, nu: float = 0.01
    ) -> None:
        super().__init__(step_s, window, max_fill_s)
        self.nu = nu

    def fit(self, values, ts_ms) -> OneClassSVMModel:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import OneClassSVM

        features = self._fit_features(values, ts_ms)
        self.svm_ = make_pipeline(StandardScaler(), OneClassSVM(nu=self.nu, gamma="scale"))
        self.svm_.fit(features)
        return self

    def score_samples(self, values, ts_ms) -> np.ndarray:
        return self._score_rows(values, ts_ms, lambda f: -self.svm_.decision_function(f))


class HalfSpaceTreesModel(_WindowModel):
    """river's HalfSpaceTrees, an online reference: score each step, then learn it.

    ``fit`` learns the normaliser and the feature ranges (river's ``limits``, widened by
    ``pad`` of the range on each side) from the training prefix; ``score_samples`` starts
    from fresh trees and runs prequentially over the whole series, so a score never sees its
    own step or later ones. Score in [0, 1], higher = more anomalous.

    Parameters
    ----------
    step_s
        Resampling step in seconds.
    window
        Steps in the feature window (:func:`window_features`).
    n_trees, height, window_size, seed
        river's ``HalfSpaceTrees`` parameters.
    pad
        Share of each feature's training range added on both sides of its limits.

    Examples
    --------
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(800)
    >>> y = 10 + np.random.default_rng(1).normal(size=800)
    >>> y[700] = 30.0
    >>> model = HalfSpaceTreesModel(step_s=300).fit(y[:300], t[:300])
    >>> s = model.score_samples(y, t)
    >>> len(s), bool(s[700] > np.nanquantile(s[300:], 0.99))
    (800, True)
    """

    def __init__(
        self,
        step_s: int = 60,
        window: int = 12,
        max_fill_s: int = MAX_FILL_S,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        seed: int = 0,
        pad: float = 0.5,
    ) -> None:
        super().__init__(step_s, window, max_fill_s)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.pad = pad

    def fit(self, values, ts_ms) -> HalfSpaceTreesModel:
        from river.anomaly import HalfSpaceTrees

        features = self._fit_features(values, ts_ms)
        low, high = features.min(axis=0), features.max(axis=0)
        width = np.maximum(high - low, 1e-9)
        limits = {
            j: (float(low[j] - self.pad * width[j]), float(high[j] + self.pad * width[j]))
            for j in range(features.shape[1])
        }
        self.trees_ = HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size,
            limits=limits, seed=self.seed,
        )
        return self

    def score_samples(self, values, ts_ms) -> np.ndarray:
        return self._score_rows(values, ts_ms, self._prequential)

    def _prequential(self, features: np.ndarray) -> np.ndarray:
        trees = copy.deepcopy(self.trees_)
        out = np.empty(len(features))
        for i, row in enumerate(features.tolist()):
            x = dict(enumerate(row))
            out[i] = trees.score_one(x)
            trees.learn_one(x)
        return out


class ProphetModel:
    """Prophet (Meta's additive forecaster) as a forecasting baseline: the residual from
    its forecast, in units of the training residuals' spread.

    ``fit`` resamples the training prefix (the stream path's resampling) and fits Prophet
    with a piecewise-linear trend, a daily seasonality when the prefix covers a day or
    more and a weekly one from two weeks on. ``score_samples`` forecasts every step from
    that fit alone (so the score is causal: it depends on the training prefix, the step's
    time and its value) and scores ``|y − ŷ| / σ``, σ = 1.4826 · MAD of the in-sample
    residuals (floored like :class:`SeasonalNormaliser`'s scale): how many interval
    half-widths of a ±1σ forecast interval the value lies from the forecast.

    Parameters
    ----------
    step_s
        Resampling step in seconds.
    max_fill_s
        Longest gap filled with the last value.
    changepoint_prior_scale
        Prophet's trend flexibility.
    growth
        Prophet's trend: ``linear`` (extrapolated from the training part) or ``flat``.
    residual_halflife_steps
        When positive, the residual is taken from its own recent level (an exponential
        average of the earlier steps' residuals with this half-life), so that a forecast
        that drifts away from the series over a long horizon is followed; 0: off.

    Examples
    --------
    >>> t = 1_700_006_400_000 + 300_000 * np.arange(800)
    >>> y = 10 + np.random.default_rng(1).normal(size=800)
    >>> y[700] = 30.0
    >>> model = ProphetModel(step_s=300).fit(y[:300], t[:300])
    >>> s = model.score_samples(y, t)
    >>> len(s), int(np.nanargmax(s))
    (800, 700)
    """

    def __init__(
        self,
        step_s: int = 60,
        max_fill_s: int = MAX_FILL_S,
        changepoint_prior_scale: float = 0.05,
        growth: str = "linear",
        residual_halflife_steps: int = 0,
    ) -> None:
        self.step_s = step_s
        self.max_fill_s = max_fill_s
        self.changepoint_prior_scale = changepoint_prior_scale
        self.growth = growth
        self.residual_halflife_steps = residual_halflife_steps

    def _steps(self, values, ts_ms) -> Steps:
        return resample_series(ts_ms, values, self.step_s * 1000, self.max_fill_s // self.step_s)

    def fit(self, values, ts_ms) -> ProphetModel:
        import logging

        # Prophet logs an ERROR on import when plotly (interactive plots only) is missing.
        logging.getLogger("prophet.plot").disabled = True
        import pandas as pd
        from cmdstanpy.utils import get_logger
        from prophet import Prophet

        # cmdstanpy sets its logger to DEBUG on first use, and logs every fit at INFO.
        get_logger().setLevel(logging.WARNING)
        logging.getLogger("prophet").setLevel(logging.WARNING)
        steps = self._steps(values, ts_ms)
        covered = (steps.ts_ms[-1] - steps.ts_ms[0]) if len(steps) else 0
        self.prophet_ = Prophet(
            daily_seasonality=bool(covered >= DAY_MS - self.step_s * 1000),
            weekly_seasonality=bool(covered >= 14 * DAY_MS),
            yearly_seasonality=False,
            changepoint_prior_scale=self.changepoint_prior_scale,
            growth=self.growth,
            uncertainty_samples=0,  # the interval comes from the residuals below
        )
        frame = pd.DataFrame({"ds": pd.to_datetime(steps.ts_ms, unit="ms"), "y": steps.value})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="prophet")  # pandas deprecations inside
            self.prophet_.fit(frame)
        resid = steps.value - self._forecast(steps.ts_ms)
        center = float(np.median(resid))
        mad = 1.4826 * float(np.median(np.abs(resid - center)))
        jump = float(np.mean(np.abs(np.diff(steps.value)))) if len(steps) > 1 else 0.0
        self.scale_ = max(mad, 0.25 * jump, 1e-9 * (float(np.median(np.abs(steps.value))) + 1))
        return self

    def _forecast(self, ts_ms: np.ndarray) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame({"ds": pd.to_datetime(np.asarray(ts_ms, np.int64), unit="ms")})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="prophet")
            return self.prophet_.predict(frame)["yhat"].to_numpy(np.float64)

    def score_samples(self, values, ts_ms) -> np.ndarray:
        steps = self._steps(values, ts_ms)
        resid = steps.value - self._forecast(steps.ts_ms)
        if self.residual_halflife_steps > 0 and len(resid):
            from scipy.signal import lfilter

            # m(t+1) = m(t) + a·(r(t) − m(t)): the residuals' recent level, from earlier
            # steps only, so a forecast that drifts away is followed and the score stays causal.
            a = 1.0 - 0.5 ** (1.0 / self.residual_halflife_steps)
            level = lfilter([a], [1.0, a - 1.0], resid)
            resid = resid - np.r_[0.0, level[:-1]]
        return _to_rows(ts_ms, steps.ts_ms, np.abs(resid) / self.scale_, self.step_s * 1000)


#: The lab's detector names and their classes (each takes ``step_s``).
MODELS: dict[str, type] = {
    "online": OnlineModel,
    "iforest": IsolationForestModel,
    "ocsvm": OneClassSVMModel,
    "hst": HalfSpaceTreesModel,
    "prophet": ProphetModel,
}
