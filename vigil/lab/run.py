"""The offline evaluation lab: every detector on every series, scored as NAB scores them.

Protocol (``vigil evaluate``):

1. Each series is one NAB *file*: its raw rows, its labelled windows, and NAB's probation
   (the first ``min(15 %, 750)`` rows), which is never scored.
2. Each model of :data:`~vigil.lab.models.MODELS` is fitted on the series' probation
   rows (the only part NAB lets a detector learn from before it is scored) and then scores
   every row causally (:mod:`vigil.lab.models`).
3. A model's scores become detections at one threshold for the whole corpus per NAB profile,
   the one that maximises that profile's raw score (:func:`~vigil.lab.nab.sweep_threshold`,
   NAB's own optimiser). The online detector is also scored on its own incident openings,
   with no threshold at all — what the worker would actually alert on.
4. Metrics: the normalised NAB score of the three profiles, and at the standard profile's
   threshold the event-wise precision/recall/F1, point-wise F1, point-adjusted F1 (inflated)
   and mean detection delay (:mod:`vigil.lab.evaluation`).

5. Each series, resampled to the lab's step, is decomposed once
   (:mod:`vigil.lab.decompose`: detected period, STL, seasonal and trend strength).

What a run writes (``metrics.json``, ``report.html``, plots) is :mod:`vigil.lab.report`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from vigil.detectors.lstm import LSTM_Z_OPEN  # the combination's threshold, as the worker's
from vigil.detectors.online import MAX_FILL_S, DetectorParams
from vigil.lab.datasets import Dataset
from vigil.lab.decompose import Decomposition, decompose
from vigil.lab.evaluation import (
    event_metrics,
    mean_detection_delay_ms,
    point_adjusted_f1,
    point_f1,
)
from vigil.lab.models import (
    MODELS,
    OnlineModel,
    _to_rows,
    batches_per_step,
    resample_series,
)
from vigil.lab.nab import (
    PROFILES,
    ScoredFile,
    normalised,
    probation_length,
    raw_score,
    sweep_threshold,
)
from vigil.lab.perceptron import (
    SUPERVISED_MODELS,
    labelled_windows,
    series_folds,
    subsample,
)
from vigil.lab.prepare import Preparation, PreparedModel
from vigil.lab.protocol import Splits, clip_windows, rolling_origin_splits
from vigil.lab.score_files import anomaly_score

__all__ = [
    "CV_GRID", "EARLIER_ONLINE", "ENTRY_NAMES", "LabRun", "decompose_series",
    "run_cv", "run_detectors", "summarise",
]

#: What each table row is (the online detector gives two: its incidents and its z-score).
ENTRY_NAMES = {
    "online_incidents": "online detector, incident openings (no threshold)",
    "online": "online detector, equivalent z-score swept",
    "online_score": "online detector, vigil score output (openings 0.99–1 by novelty) swept",
    "online_2026_12_04": "the online detector as shipped on 2026-12-04 (before issue 16), "
    "vigil score output of that day (every opening 1.0) swept",
    "iforest": "IsolationForest on window features",
    "ocsvm": "One-Class SVM on window features",
    "hst": "river HalfSpaceTrees (reference)",
    "prophet": "Prophet forecast residual (baseline)",
    "mlp": "the article's perceptron, trained on the other series' labels (series folds)",
    "lstm": "global LSTM autoencoder on residual windows, trained on the other series "
    "(series folds)",
    "lstm_forecast": "global LSTM forecaster on residual windows, trained on the other series "
    "(series folds)",
    "online+lstm": "the worker's combination with the LSTM autoencoder: online incident "
    "openings plus the LSTM's own (no threshold)",
    "online+lstm_forecast": "the worker's combination with the LSTM forecaster: online "
    "incident openings plus the LSTM's own (no threshold)",
}

#: ``online_2026_12_04``: today's detector with the switches of what came after 2026-12-04
#: set back (issue 16 was filed then): each step weighs as its own length in the estimates,
#: no alert before ``warmup_steps``, no first-days rule. ``python -m bench.compare_detector``
#: checks, step by step, that these settings give the numpy detector of that day (commit
#: 3b7ed60, kept verbatim in ``bench/reference_online.py``). The day's ``vigil score`` gave
#: every opening 1.0.
EARLIER_ONLINE = {"online_2026_12_04": {"estimate_max_step_s": math.inf,
                                        "first_alert_steps": DetectorParams().warmup_steps,
                                        "quiet_until_daily": False}}

#: The global LSTM entries (:mod:`vigil.detectors.lstm`) and their kind; ``online+NAME`` is
#: the combination with the online detector's z-score.
LSTM_ENTRIES = {"lstm": "autoencoder", "lstm_forecast": "forecaster"}
#: Training of the LSTM entries per fold: most windows, epochs, window length.
LSTM_MAX_WINDOWS = 8_000
LSTM_EPOCHS = 3
LSTM_WINDOW = 64
#: Series folds of the supervised detectors, the most training windows per fold, and the
#: training epochs (kept small so that nab-dev's 4 trainings stay within about a minute).
SUPERVISED_FOLDS = 4
SUPERVISED_MAX_WINDOWS = 20_000
SUPERVISED_EPOCHS = 8

#: Hyperparameters chosen by cross-validation (``--protocol cv``), with their candidates.
#: A detector not listed keeps its defaults; only its thresholds are chosen.
CV_GRID: dict[str, dict[str, tuple]] = {
    "iforest": {"window": (6, 12, 24)},
    "ocsvm": {"nu": (0.005, 0.01, 0.05)},
    "prophet": {"changepoint_prior_scale": (0.01, 0.05, 0.5),
                "residual_halflife_steps": (0, 12, 288)},
}


@dataclass
class LabRun:
    """Per-series rows, labels and every detector's output, before summarising."""

    dataset: Dataset
    #: The step given (``--step``), else the median of the series' own steps.
    step_s: int
    ids: list[str]
    files: list[ScoredFile]
    #: Each series' own step (every model resamples the series at it).
    series_step_s: dict[str, int]
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    openings: list[np.ndarray] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: Per series: the grid time of each step (ms) and the decomposition on that grid.
    decompositions: list[tuple[np.ndarray, Decomposition]] = field(default_factory=list)
    #: ``nab`` or ``cv``; under ``cv``, the scored rows of each series (its test period)
    #: and, per detector, the thresholds chosen on the validation folds.
    protocol: str = "nab"
    rows: list[range] | None = None
    thresholds: dict[str, dict[str, float]] | None = None
    preparation: Preparation = field(default_factory=Preparation)
    #: Under ``cv``: the splits' settings and each detector's choices (metrics.json "cv").
    cv: dict | None = None


def _online_many(dataset: Dataset, ids: Sequence[str], steps: dict[str, int],
                 stop: dict[str, int] | None = None, params: DetectorParams | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The online detector's ``(z, openings)`` per series (``ids`` order), each at its own
    step, on rows up to ``stop[sid]`` if given, with ``params`` (the defaults if ``None``)."""
    series = []
    for sid in ids:
        s = dataset.series[sid]
        end = len(s) if stop is None else stop[sid]
        series.append((s.values[:end], s.ts_ms[:end]))
    return OnlineModel.score_and_openings_at_steps(series, [steps[sid] for sid in ids],
                                                   params)


def _earlier_params(name: str) -> DetectorParams:
    return replace(DetectorParams(), **EARLIER_ONLINE[name])


def _scored_file(dataset: Dataset, sid: str) -> ScoredFile:
    windows = [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
    return ScoredFile(dataset.series[sid].ts_ms, sorted(windows))


def make_model(name: str, step_s: int, preparation: Preparation | None = None, **params):
    """A fresh lab model; the offline ones behind ``preparation`` when it does anything.

    The online detector is never prepared: it is run as the worker runs it.
    """
    model = MODELS[name](step_s=step_s, **params)
    if name != "online" and preparation is not None and preparation.active:
        return PreparedModel(model, preparation)
    return model


def _check_names(dataset: Dataset, names: Sequence[str]) -> None:
    known = {**MODELS, **SUPERVISED_MODELS, **LSTM_ENTRIES, **EARLIER_ONLINE,
             **{f"online+{n}": None for n in LSTM_ENTRIES}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown detectors {unknown}; choose from {list(known)}")
    if not dataset.labels:
        raise ValueError("the dataset has no labelled anomalies to evaluate against")


def run_detectors(
    dataset: Dataset,
    names: Sequence[str],
    step_s: int,
    progress: bool = True,
    preparation: Preparation | None = None,
    steps: dict[str, int] | None = None,
) -> LabRun:
    """Fit every model on each series' probation rows and score all its rows.

    ``steps`` gives each series its own step (:func:`series_steps`) for every model; by
    default every series is resampled at ``step_s``.
    """
    _check_names(dataset, names)
    ids = list(dataset.series)
    steps = steps or dict.fromkeys(ids, step_s)
    run = LabRun(dataset, step_s, ids, [_scored_file(dataset, sid) for sid in ids], steps)
    run.preparation = preparation or Preparation()
    run.scores = {name: [] for name in names}
    run.seconds = dict.fromkeys(names, 0.0)
    run.openings = [] if "online" in names else None
    for name, scores, seconds in _cross_series_scores(dataset, ids, names, step_s, progress,
                                                      steps=steps):
        run.scores[name], run.seconds[name] = scores, seconds
    if "online" in names:
        # All series in one batch (the detector learns as it goes: nothing to fit), and one
        # pass gives both its z-scores and its incident openings.
        start = time.perf_counter()
        run.scores["online_score"] = []
        for sid, (z, opened) in zip(ids, _online_many(dataset, ids, steps), strict=True):
            run.scores["online"].append(z)
            run.scores["online_score"].append(
                anomaly_score(z, opened, dataset.series[sid].ts_ms))
            run.openings.append(opened)
        run.seconds["online"] = run.seconds["online_score"] = time.perf_counter() - start
    for name in (n for n in names if n in EARLIER_ONLINE):
        start = time.perf_counter()
        run.scores[name] = [anomaly_score(z, opened) for z, opened in
                            _online_many(dataset, ids, steps, params=_earlier_params(name))]
        run.seconds[name] = time.perf_counter() - start
    names = [n for n in names if n in MODELS and n != "online"]
    with tqdm(total=len(ids) * len(names), desc="evaluate", unit="fit",
              disable=not progress or not names) as bar:
        for sid in ids:
            s = dataset.series[sid]
            train = probation_length(len(s))
            for name in names:
                bar.set_postfix_str(f"{name} {s.name}")
                start = time.perf_counter()
                model = make_model(name, steps[sid], preparation).fit(
                    s.values[:train], s.ts_ms[:train]
                )
                run.scores[name].append(model.score_samples(s.values, s.ts_ms))
                run.seconds[name] += time.perf_counter() - start
                bar.update()
    # online_score next to online in the tables
    order = [n for name in run.scores if name != "online_score"
             for n in ((name, "online_score") if name == "online" else (name,))]
    run.scores = {n: run.scores[n] for n in order}
    return run


def _windows_of(dataset: Dataset, sid: str) -> list[tuple[int, int]]:
    return sorted((lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid)


def _no_nan(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    # A row that closes no step has no verdict: it can never be a detection.
    return [np.where(np.isnan(s), -np.inf, s) for s in scores]


def _candidates(name: str) -> list[dict]:
    grid = CV_GRID.get(name, {})
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def run_cv(
    dataset: Dataset,
    names: Sequence[str],
    step_s: int,
    progress: bool = True,
    preparation: Preparation | None = None,
    n_folds: int = 3,
    gap: int = 24,
    test_fraction: float = 0.3,
    steps: dict[str, int] | None = None,
) -> LabRun:
    """Rolling-origin cross-validation on each series' earlier part, then its test period.

    Per series (:func:`~vigil.lab.protocol.rolling_origin_splits`): fold ``k`` fits a
    model on rows ``[0, t_k)`` and scores rows up to the end of its validation block (so it
    sees nothing later); per detector, each hyperparameter candidate of :data:`CV_GRID` gets
    the corpus-wide threshold per NAB profile that maximises the raw NAB score over every
    validation block of every series, and the candidate with the best standard-profile
    score wins. Then each detector, with its chosen hyperparameters, is refitted on the
    whole development part of each series and scores the series; only the test rows are
    kept, and the metrics use the thresholds chosen above. No value of the test period
    reaches a fit, a threshold or a choice. ``steps`` as in :func:`run_detectors`.
    """
    _check_names(dataset, names)
    preparation = preparation or Preparation()
    ids = list(dataset.series)
    steps = steps or dict.fromkeys(ids, step_s)
    splits: dict[str, Splits] = {}
    for sid in ids:
        try:
            splits[sid] = rolling_origin_splits(len(dataset.series[sid]), n_folds, gap,
                                                test_fraction)
        except ValueError as exc:
            raise ValueError(f"{sid}: {exc}") from None
    windows = {sid: _windows_of(dataset, sid) for sid in ids}

    def block(sid: str, rows: range) -> ScoredFile:
        ts = dataset.series[sid].ts_ms
        return ScoredFile(ts[rows.start:rows.stop], clip_windows(ts, windows[sid], rows), 0)

    pairs = [(sid, fold) for sid in ids for fold in splits[sid].folds]
    val_files = [block(sid, fold.validation) for sid, fold in pairs]
    test_files = [block(sid, splits[sid].test) for sid in ids]
    run = LabRun(dataset, step_s, ids, test_files, steps, protocol="cv",
                 rows=[splits[sid].test for sid in ids], preparation=preparation)
    run.thresholds, choices = {}, {}
    run.seconds = {}
    val_windows = sum(len(f.windows) for f in val_files)

    def choose(val_scores: list[np.ndarray]) -> tuple[dict, float]:
        thresholds, nab = {}, {}
        for p in PROFILES:
            thresholds[p], raw = sweep_threshold(val_files, _no_nan(val_scores), p)
            nab[p] = normalised(raw, val_windows, p) if val_windows else None
        return {"thresholds": thresholds, "validation_nab": nab}, (
            -math.inf if nab["standard"] is None else nab["standard"])

    if "online" in names:
        start = time.perf_counter()
        # A fresh detector for each pass: the development run must not see the full one.
        dev = _online_many(dataset, ids, steps,
                           {sid: splits[sid].development.stop for sid in ids})
        full = _online_many(dataset, ids, steps)
        by_sid = dict(zip(ids, dev, strict=True))

        def graded(sid: str, z: np.ndarray, o: np.ndarray) -> np.ndarray:
            return anomaly_score(z, o, dataset.series[sid].ts_ms[:len(z)])

        for entry, mapping in (("online", lambda sid, z, o: z), ("online_score", graded)):
            val = [mapping(sid, *by_sid[sid])[fold.validation.start:fold.validation.stop]
                   for sid, fold in pairs]
            choices[entry], _ = choose(val)
            choices[entry]["params"] = {}
            run.scores[entry] = [mapping(sid, z, o)[r.start:r.stop]
                                 for sid, (z, o), r in zip(ids, full, run.rows, strict=True)]
        run.openings = [o[r.start:r.stop] for (_, o), r in zip(full, run.rows, strict=True)]
        run.seconds["online"] = run.seconds["online_score"] = time.perf_counter() - start
    for name in (n for n in names if n in EARLIER_ONLINE):
        start = time.perf_counter()
        params = _earlier_params(name)
        dev = _online_many(dataset, ids, steps,
                           {sid: splits[sid].development.stop for sid in ids}, params)
        full = _online_many(dataset, ids, steps, params=params)
        by_sid = dict(zip(ids, dev, strict=True))
        choices[name], _ = choose([anomaly_score(*by_sid[sid])[fold.validation.start:
                                                               fold.validation.stop]
                                   for sid, fold in pairs])
        choices[name]["params"] = {}
        run.scores[name] = [anomaly_score(z, o)[r.start:r.stop]
                            for (z, o), r in zip(full, run.rows, strict=True)]
        run.seconds[name] = time.perf_counter() - start

    # The models trained on other series (the perceptron, the LSTM): series folds as under
    # the NAB protocol, each fold's model trained only on the other series' development
    # parts. No series' own rows reach the model that scores it and no test row reaches any
    # model, so one model per fold scores both the validation blocks (threshold) and the
    # test period of its series.
    until = {sid: int(dataset.series[sid].ts_ms[splits[sid].development.stop]) for sid in ids}

    for name, full, seconds in _cross_series_scores(dataset, ids, names, step_s, progress,
                                                    train_until_ms=until, steps=steps):
        by_sid = dict(zip(ids, full, strict=True))
        choices[name], _ = choose([by_sid[sid][fold.validation.start:fold.validation.stop]
                                   for sid, fold in pairs])
        choices[name]["params"] = {}
        run.scores[name] = [by_sid[sid][r.start:r.stop]
                            for sid, r in zip(ids, run.rows, strict=True)]
        run.seconds[name] = seconds

    offline = [n for n in names if n in MODELS and n != "online"]
    total = sum(len(_candidates(n)) * len(pairs) + len(ids) for n in offline)
    with tqdm(total=total, desc="cross-validate", unit="fit",
              disable=not progress or not offline) as bar:
        for name in offline:
            start = time.perf_counter()
            tried = []
            for params in _candidates(name):
                val = []
                for sid, fold in pairs:
                    bar.set_postfix_str(f"{name} {dataset.series[sid].name}")
                    s, train, val_rows = dataset.series[sid], fold.train, fold.validation
                    model = make_model(name, steps[sid], preparation, **params).fit(
                        s.values[train.start:train.stop], s.ts_ms[train.start:train.stop])
                    scored = model.score_samples(s.values[: val_rows.stop],
                                                 s.ts_ms[: val_rows.stop])
                    val.append(scored[val_rows.start:])
                    bar.update()
                choice, rank = choose(val)
                tried.append((rank, params, choice))
            best = max(tried, key=lambda t: t[0])  # the first of equals
            params = best[1]
            choices[name] = {**best[2], "params": params, "candidates": [
                {"params": p, "validation_nab_standard": c["validation_nab"]["standard"]}
                for _, p, c in tried]}
            run.scores[name] = []
            for sid, rows in zip(ids, run.rows, strict=True):
                s, dev = dataset.series[sid], splits[sid].development
                model = make_model(name, steps[sid], preparation, **params).fit(
                    s.values[dev.start:dev.stop], s.ts_ms[dev.start:dev.stop])
                run.scores[name].append(model.score_samples(s.values, s.ts_ms)[rows.start:])
                bar.update()
            run.seconds[name] = time.perf_counter() - start
    ordered = [n for n in dict.fromkeys(("online", "online_score", *names)) if n in choices]
    run.thresholds = {n: choices[n]["thresholds"] for n in ordered}
    run.scores = {n: run.scores[n] for n in ordered}
    run.cv = {
        **({"warning": "no labelled window falls in any validation block, so no threshold "
            "can be chosen: every detector with a threshold detects nothing on the test "
            "period (use longer series, a smaller --test-fraction, or --protocol nab)"}
           if not val_windows else {}),
        "folds": n_folds, "gap_rows": gap, "test_fraction": test_fraction,
        "validation_blocks": len(val_files), "validation_windows": val_windows,
        "test_windows": sum(len(f.windows) for f in test_files),
        "detectors": {n: {"params": choices[n]["params"],
                          "thresholds": {p: _finite(t) for p, t in
                                         choices[n]["thresholds"].items()},
                          "validation_nab": choices[n]["validation_nab"],
                          **({"candidates": choices[n]["candidates"]}
                             if "candidates" in choices[n] else {})}
                      for n in ordered},
    }
    return run


def _cross_series_scores(
    dataset: Dataset,
    ids: list[str],
    names: Sequence[str],
    step_s: int,
    progress: bool,
    train_until_ms: dict[str, int] | None = None,
    steps: dict[str, int] | None = None,
):
    """``(name, per-series scores, seconds)`` of each entry of ``names`` trained on other
    series (the perceptron, the LSTM alone and combined; an LSTM kind is trained once for
    both of its entries, which share its time), each series at its step in ``steps``
    (default: all at ``step_s``)."""
    for name in (n for n in names if n in SUPERVISED_MODELS):
        start = time.perf_counter()
        scores = supervised_scores(dataset, ids, name, step_s, progress=progress,
                                   train_until_ms=train_until_ms, steps=steps)
        yield name, scores, time.perf_counter() - start
    lstm_names = [n for n in names if n.removeprefix("online+") in LSTM_ENTRIES]
    for kind_name in dict.fromkeys(n.removeprefix("online+") for n in lstm_names):
        start = time.perf_counter()
        alone, combined = lstm_scores(dataset, ids, LSTM_ENTRIES[kind_name], step_s,
                                      progress=progress, train_until_ms=train_until_ms,
                                      steps=steps)
        seconds = time.perf_counter() - start
        for name, scores in ((kind_name, alone), (f"online+{kind_name}", combined)):
            if name in names:
                yield name, scores, seconds


def supervised_scores(
    dataset: Dataset,
    ids: Sequence[str],
    name: str,
    step_s: int,
    folds: int | None = None,
    max_windows: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = False,
    trained_on: dict[str, list[str]] | None = None,
    train_until_ms: dict[str, int] | None = None,
    steps: dict[str, int] | None = None,
) -> list[np.ndarray]:
    """Scores of a supervised detector for every series (in ``ids`` order), by series folds.

    The series are split into ``folds`` groups (:func:`.perceptron.series_folds`); for each
    group a fresh model is trained on the labelled windows of every series *outside* it (at
    most ``max_windows``, positives kept first, :func:`.perceptron.subsample`) and scores
    the group's series. A series' own labels never reach the model that scores it.
    ``trained_on``, when given, receives for each series the ids its model trained on.
    ``train_until_ms``, when given, keeps each series' training windows to those ending
    before its time there (the cross-validation protocol's development part).
    ``steps``, when given, resamples each series at its own step (the model's inputs count
    steps, so one network serves every step); otherwise every series is at ``step_s``.
    ``folds``, ``max_windows`` and ``epochs`` default to the module's ``SUPERVISED_*``.
    """
    folds = SUPERVISED_FOLDS if folds is None else folds
    max_windows = SUPERVISED_MAX_WINDOWS if max_windows is None else max_windows
    epochs = SUPERVISED_EPOCHS if epochs is None else epochs
    ids = list(ids)
    if len(ids) < 2:
        raise ValueError(f"{name} trains on other series' labels: it needs two series or more")
    windows = {sid: [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
               for sid in ids}
    steps = steps or dict.fromkeys(ids, step_s)
    proto = SUPERVISED_MODELS[name](step_s=step_s)
    data = {}
    for sid in ids:
        s = dataset.series[sid]
        n = len(s) if train_until_ms is None else int(
            np.searchsorted(s.ts_ms, train_until_ms[sid]))
        data[sid] = labelled_windows(proto.at_step(steps[sid]), s.values[:n], s.ts_ms[:n],
                                     windows[sid])
    scores: dict[str, np.ndarray] = {}
    groups = series_folds(ids, folds, seed)
    for k, held_out in enumerate(tqdm(groups, desc=f"{name} folds", disable=not progress)):
        train = [sid for sid in ids if sid not in held_out]
        X = np.vstack([data[sid][0] for sid in train])
        y = np.concatenate([data[sid][1] for sid in train])
        X, y = subsample(X, y, max_windows, seed + k)
        model = SUPERVISED_MODELS[name](step_s=step_s, epochs=epochs, seed=seed + k)
        model.fit_windows(X, y)
        for sid in held_out:
            s = dataset.series[sid]
            scores[sid] = model.at_step(steps[sid]).score_samples(s.values, s.ts_ms)
            if trained_on is not None:
                trained_on[sid] = train
    return [scores[sid] for sid in ids]


def lstm_scores(
    dataset: Dataset,
    ids: Sequence[str],
    kind: str,
    step_s: int,
    folds: int | None = None,
    max_windows: int | None = None,
    epochs: int | None = None,
    window: int | None = None,
    seed: int = 0,
    progress: bool = False,
    train_until_ms: dict[str, int] | None = None,
    steps: dict[str, int] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-row scores of the global LSTM (``kind``) and of its combination with the online
    detector, for every series in ``ids`` order, by series folds.

    The online detector runs over every series once (as the worker would); its normalised
    residuals are the LSTM's input. For each fold (:func:`.perceptron.series_folds`) a fresh
    model is trained on the *other* series' windows that the detector considered normal and
    that touch no labelled window (at most ``max_windows``, drawn at random), then scores
    the fold's series. No series' own data or labels reach the model that scores it.
    ``train_until_ms`` keeps each series' training windows before its time there; ``steps``
    resamples each series at its own step (default: all at ``step_s``).

    The combination is what the worker alerts on with the model loaded: the seasonal
    detector's incident openings plus those of :class:`~vigil.detectors.lstm.LstmIncidents`
    (the LSTM score past :data:`LSTM_Z_OPEN` where no seasonal incident is open), as a 0/1
    score.
    """
    ids = list(ids)
    steps = steps or dict.fromkeys(ids, step_s)
    seen, z = lstm_fold_scores(dataset, ids, kind, step_s, folds=folds,
                               max_windows=max_windows, epochs=epochs, window=window,
                               seed=seed, progress=progress, train_until_ms=train_until_ms,
                               steps=steps)
    alone, combined = [], []
    for sid in ids:
        s, ts, step_ms = seen[sid], dataset.series[sid].ts_ms, steps[sid] * 1000
        alone.append(_to_rows(ts, s.ts_ms, np.nan_to_num(z[sid], nan=-1e9), step_ms))
        opened = combined_openings(sid, s, z[sid], step_s=steps[sid])
        combined.append(_to_rows(ts, s.ts_ms, opened, step_ms))
    return alone, combined


def lstm_fold_scores(
    dataset: Dataset,
    ids: Sequence[str],
    kind: str,
    step_s: int,
    folds: int | None = None,
    max_windows: int | None = None,
    epochs: int | None = None,
    window: int | None = None,
    seed: int = 0,
    progress: bool = False,
    train_until_ms: dict[str, int] | None = None,
    steps: dict[str, int] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The online detector's residuals of every series and the LSTM's per-step ``z`` on them,
    each series scored by the model of its fold (trained on the other series only; with
    ``train_until_ms``, on their windows that end before the time given for them). Each
    series is at its step in ``steps`` (default: all at ``step_s``): the LSTM's windows count
    steps of normalised residual, so one model serves every step."""
    from vigil.detectors.lstm import WindowLSTM
    from vigil.lab.lstm_training import series_residuals, training_windows

    folds = SUPERVISED_FOLDS if folds is None else folds
    max_windows = LSTM_MAX_WINDOWS if max_windows is None else max_windows
    epochs = LSTM_EPOCHS if epochs is None else epochs
    window = LSTM_WINDOW if window is None else window
    ids = list(ids)
    if len(ids) < 2:
        raise ValueError("the LSTM trains on other series: it needs two series or more")
    steps = steps or dict.fromkeys(ids, step_s)
    seen = dict(zip(ids, batches_per_step(  # one batch of the online detector per step
        [(dataset.series[sid].values, dataset.series[sid].ts_ms) for sid in ids],
        [steps[sid] for sid in ids], series_residuals), strict=True))
    windows = {sid: [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
               for sid in ids}
    # Steps from a series' training cut-off on are excluded like labelled windows.
    cut = {sid: [] if train_until_ms is None else [(train_until_ms[sid], np.iinfo(np.int64).max)]
           for sid in ids}
    train_x = {sid: training_windows(seen[sid], window, windows[sid] + cut[sid]) for sid in ids}
    rng = np.random.default_rng(seed)
    z: dict[str, np.ndarray] = {}
    for k, held_out in enumerate(tqdm(series_folds(ids, folds, seed), desc=f"{kind} folds",
                                      disable=not progress)):
        X = np.vstack([train_x[sid] for sid in ids if sid not in held_out])
        if len(X) > max_windows:
            X = X[np.sort(rng.choice(len(X), max_windows, replace=False))]
        model = WindowLSTM(window=window, kind=kind, epochs=epochs, seed=seed + k,
                           device="cpu").fit_windows(X)
        for sid in held_out:
            z[sid] = model.score_series(seen[sid].residual)
    return seen, z


def combined_openings(sid: str, seen, z_lstm: np.ndarray, z_open: float = LSTM_Z_OPEN,
                      step_s: int = 300) -> np.ndarray:
    """Per step, 1.0 where the worker would open an incident with the LSTM at ``z_open``: the
    online detector's openings plus :class:`~vigil.detectors.lstm.LstmIncidents`' own."""
    from vigil.detectors.lstm import LstmIncidents
    from vigil.detectors.online import DetectorParams

    p = DetectorParams(step_s=step_s)
    incidents = LstmIncidents(z_open, p.z_close, max(p.z_critical, z_open), p.calm_steps_to_resolve)
    found = incidents.step([sid], np.zeros(len(z_lstm), np.int64), seen.ts_ms, z_lstm,
                           seen.incident_start_ms)
    both = seen.opened.astype(float)
    both[[i for i, code, _ in found if code == 1]] = 1.0
    return both


def decompose_series(ts_ms, values, step_s: int) -> tuple[np.ndarray, Decomposition]:
    """One series resampled as the stream does, on a full grid, and decomposed.

    Steps a long gap left out (the stream fills at most ``MAX_FILL_S`` = 300 s, as the
    models do) come back as ``nan`` on the grid; :func:`decompose` interpolates them.
    """
    step_ms = step_s * 1000
    steps = resample_series(ts_ms, values, step_ms, max(0, MAX_FILL_S // step_s))
    if len(steps) == 0:
        return np.empty(0, np.int64), decompose(np.empty(0), step_s)
    slot = (steps.ts_ms - steps.ts_ms[0]) // step_ms
    grid = np.full(int(slot[-1]) + 1, np.nan)
    grid[slot] = steps.value
    return steps.ts_ms[0] + step_ms * np.arange(len(grid)), decompose(grid, step_s)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _entry(files: list[ScoredFile], standard: list[np.ndarray], nab: dict) -> dict:
    events = event_metrics(files, standard)
    delay = mean_detection_delay_ms(files, standard)
    return {
        "nab": nab,
        "event": {
            "precision": events.precision,
            "recall": events.recall,
            "f1": events.f1,
            "windows_found": events.found,
            "windows": events.windows,
            "alarms": events.alarms,
            "true_alarms": events.true_alarms,
        },
        "point_f1": point_f1(files, standard),
        "point_adjusted_f1_inflated": point_adjusted_f1(files, standard),
        "mean_delay_min": _finite(delay / 60_000.0),
    }


def _decomposition_entry(run: LabRun, k: int) -> dict:
    if not run.decompositions:
        return {}
    d = run.decompositions[k][1]
    return {"period_steps": d.period, "seasonal_strength": d.seasonal_strength,
            "trend_strength": d.trend_strength}


def _step_counts(run: LabRun) -> dict[str, int]:
    """How many series were resampled at each step, e.g. ``{"300": 26, "3600": 2}``."""
    steps = [run.series_step_s[sid] for sid in run.ids]
    return {str(step): steps.count(step) for step in sorted(set(steps))}


def _steps_text(counts: dict[str, int]) -> str:
    if len(counts) == 1:
        return f"a {next(iter(counts))} s step"
    return "each series' own step (" + ", ".join(
        f"{step} s × {n}" for step, n in counts.items()) + ")"


def _normalised(raw: float, n_windows: int, profile: str) -> float | None:
    """NAB's normalised score; undefined (``None``) without any labelled window."""
    return normalised(raw, n_windows, profile) if n_windows else None


def _protocol(run: LabRun) -> dict:
    if run.protocol == "cv":
        cv = run.cv or {}
        return {
            "name": "cv",
            "training": f"per series, rolling-origin cross-validation on the first "
            f"{1 - cv.get('test_fraction', 0):.0%} of its rows ({cv.get('folds')} folds, a gap "
            f"of {cv.get('gap_rows')} rows before each validation block); each detector is "
            "refitted on that whole development part and scored on the rest (the test "
            f"period, after the same gap); hyperparameters tried: {CV_GRID}",
            "threshold": "one per NAB profile over the corpus, the one that maximises that "
            "profile's score over every validation block; event, point and delay metrics "
            "at the standard profile's threshold",
            "scored_rows": "the test period of each series only; no probation",
        }
    return {
        "name": "nab",
        "training": "each model is fitted on its series' NAB probation rows; the "
        f"supervised ones ({', '.join(SUPERVISED_MODELS)}) instead on the labelled "
        f"windows of the other series, by {SUPERVISED_FOLDS} series folds; the LSTM "
        f"entries ({', '.join(LSTM_ENTRIES)}) on the other series' normal residual "
        f"windows (no labelled window), by {SUPERVISED_FOLDS} series folds",
        "threshold": "one per NAB profile over the corpus (NAB's sweep); event, point "
        "and delay metrics at the standard profile's threshold",
        "probation": "probation rows are never scored",
    }


def _preparation(run: LabRun) -> dict:
    p = run.preparation
    return {
        "resampling": f"Every model resamples raw rows to {_steps_text(_step_counts(run))} "
        "with the stream path's code "
        "(vigil.detectors.resample: mean per step, gaps up to 300 s filled with the last "
        "value — the online detector fills at least one step — longer gaps left open); "
        "each step's score goes on its last row",
        **p.describe(),
        "applies_to": "the offline models' input (iforest, ocsvm, hst, prophet); the online "
        "detector runs as the worker does, the supervised perceptron scales each window itself",
    }


def _best_and_worst(per_series: dict[str, dict[str, float | None]]) -> dict:
    """Per detector, the series with the highest and the lowest standard NAB score."""
    out = {}
    names = dict.fromkeys(name for scores in per_series.values() for name in scores)
    for name in names:  # in the results table's order
        ranked = [(v, sid) for sid, scores in per_series.items()
                  if (v := scores.get(name)) is not None]
        if not ranked:
            continue
        best = max(ranked, key=lambda r: r[0])
        worst = min(ranked, key=lambda r: r[0])
        out[name] = {"best": {"series": best[1], "nab_standard": best[0]},
                     "worst": {"series": worst[1], "nab_standard": worst[0]}}
    return out


def summarise(run: LabRun) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """The ``metrics.json`` content, and each entry's detections (standard profile).

    Thresholds are swept over the scored rows (NAB protocol) or, when ``run.thresholds``
    has them (cross-validation), taken from there.
    """
    files = run.files
    n_windows = sum(len(f.windows) for f in files)
    entries: dict[str, dict] = {}
    detections: dict[str, list[np.ndarray]] = {}
    if run.openings is not None:
        nab = {
            p: {"score": _normalised(raw_score(files, run.openings, p), n_windows, p),
                "threshold": None}
            for p in PROFILES
        }
        entries["online_incidents"] = _entry(files, run.openings, nab)
        entries["online_incidents"]["seconds"] = run.seconds["online"]
        detections["online_incidents"] = run.openings
    for name, scores in run.scores.items():
        scores = _no_nan(scores)
        nab, thresholds = {}, {}
        for p in PROFILES:
            if run.thresholds is not None:
                thresholds[p] = run.thresholds[name][p]
                raw = raw_score(files, [s >= thresholds[p] for s in scores], p)
            else:
                thresholds[p], raw = sweep_threshold(files, scores, p)
            nab[p] = {"score": _normalised(raw, n_windows, p), "threshold": _finite(thresholds[p])}
        # The sweep returns +inf when no threshold beats detecting nothing.
        standard = [s >= thresholds["standard"] for s in scores]
        entries[name] = _entry(files, standard, nab)
        entries[name]["seconds"] = run.seconds[name]
        detections[name] = standard
    per_series = {
        sid: {name: _normalised(raw_score([f], [d[k]], "standard"), len(f.windows), "standard")
              for name, d in detections.items()}
        for k, (sid, f) in enumerate(zip(run.ids, files, strict=True))
    }
    ds = run.dataset
    summary = {
        "dataset": {
            "path": ds.meta.get("path"),
            "source": ds.source,
            "series": len(ds.series),
            "points": ds.n_points,
            "windows": len(ds.labels),
            "scored_windows": n_windows,
            "step_s": run.step_s,
            "series_steps_s": _step_counts(run),
        },
        "protocol": _protocol(run),
        "preparation": _preparation(run),
        "detectors": {name: {"description": ENTRY_NAMES[name], **e} for name, e in entries.items()},
        "series": {
            sid: {
                "windows": len(f.windows),
                "step_s": run.series_step_s[sid],
                "scored_rows": len(f.ts_ms),
                "detections": {name: int(d[k].sum()) for name, d in detections.items()},
                "nab_standard": per_series[sid],
                **_decomposition_entry(run, k),
            }
            for k, (sid, f) in enumerate(zip(run.ids, files, strict=True))
        },
        "best_worst": _best_and_worst(per_series),
    }
    if run.cv is not None:
        summary["cv"] = run.cv
    return summary, detections
