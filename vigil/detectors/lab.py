"""The offline evaluation lab: every detector on every series, scored as NAB scores them.

Protocol (``vigil evaluate``):

1. Each series is one NAB *file*: its raw rows, its labelled windows, and NAB's probation
   (the first ``min(15 %, 750)`` rows), which is never scored.
2. Each model of :data:`~vigil.detectors.models.MODELS` is fitted on the series' probation
   rows (the only part NAB lets a detector learn from before it is scored) and then scores
   every row causally (:mod:`vigil.detectors.models`).
3. A model's scores become detections at one threshold for the whole corpus per NAB profile,
   the one that maximises that profile's raw score (:func:`~vigil.detectors.nab.sweep_threshold`,
   NAB's own optimiser). The online detector is also scored on its own incident openings,
   with no threshold at all — what the worker would actually alert on.
4. Metrics: the normalised NAB score of the three profiles, and at the standard profile's
   threshold the event-wise precision/recall/F1, point-wise F1, point-adjusted F1 (inflated)
   and mean detection delay (:mod:`vigil.detectors.evaluation`).

5. Each series, resampled to the lab's step, is decomposed once
   (:mod:`vigil.detectors.decompose`: detected period, STL, seasonal and trend strength).

The run writes ``metrics.json`` and ``report.html`` (with two PNGs per series in ``plots/``:
the series with every entry's detections, and its decomposition).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vigil.detectors.datasets import Dataset, load_dataset
from vigil.detectors.decompose import ACF_THRESHOLD, Decomposition, decompose
from vigil.detectors.evaluation import (
    event_metrics,
    mean_detection_delay_ms,
    point_adjusted_f1,
    point_f1,
)
from vigil.detectors.models import MODELS, OnlineModel, _to_rows, resample_series
from vigil.detectors.nab import (
    PROFILES,
    ScoredFile,
    normalised,
    probation_length,
    raw_score,
    sweep_threshold,
)
from vigil.detectors.perceptron import (
    SUPERVISED_MODELS,
    labelled_windows,
    series_folds,
    subsample,
)

__all__ = [
    "ENTRY_NAMES", "LabRun", "decompose_series", "evaluate", "infer_step_s", "run_detectors",
    "summarise",
]

#: What each table row is (the online detector gives two: its incidents and its z-score).
ENTRY_NAMES = {
    "online_incidents": "online detector, incident openings (no threshold)",
    "online": "online detector, equivalent z-score swept",
    "iforest": "IsolationForest on window features",
    "ocsvm": "One-Class SVM on window features",
    "hst": "river HalfSpaceTrees (reference)",
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

#: The global LSTM entries (:mod:`vigil.detectors.lstm`) and their kind; ``online+NAME`` is
#: the combination with the online detector's z-score.
LSTM_ENTRIES = {"lstm": "autoencoder", "lstm_forecast": "forecaster"}
#: Training of the LSTM entries per fold: most windows, epochs, window length.
LSTM_MAX_WINDOWS = 8_000
LSTM_EPOCHS = 3
LSTM_WINDOW = 64
#: The LSTM score from which the combination opens an incident (the worker's default,
#: ``VIGIL_LSTM_Z_OPEN``).
LSTM_Z_OPEN = 24.0

#: Series folds of the supervised detectors, the most training windows per fold, and the
#: training epochs (kept small so that nab-dev's 4 trainings stay within about a minute).
SUPERVISED_FOLDS = 4
SUPERVISED_MAX_WINDOWS = 20_000
SUPERVISED_EPOCHS = 8


@dataclass
class LabRun:
    """Per-series rows, labels and every detector's output, before summarising."""

    dataset: Dataset
    step_s: int
    ids: list[str]
    files: list[ScoredFile]
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    openings: list[np.ndarray] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: Per series: the start of each grid step (ms) and the decomposition on that grid.
    decompositions: list[tuple[np.ndarray, Decomposition]] = field(default_factory=list)


def infer_step_s(dataset: Dataset) -> int:
    """The dataset's typical spacing of rows, in whole seconds (the median over series)."""
    medians = [np.median(np.diff(s.ts_ms)) for s in dataset.series.values() if len(s) > 1]
    return max(1, int(round(float(np.median(medians)) / 1000.0)))


def _scored_file(dataset: Dataset, sid: str) -> ScoredFile:
    windows = [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
    return ScoredFile(dataset.series[sid].ts_ms, sorted(windows))


def run_detectors(
    dataset: Dataset, names: Sequence[str], step_s: int, progress: bool = True
) -> LabRun:
    """Fit every model on each series' probation rows and score all its rows."""
    known = {**MODELS, **SUPERVISED_MODELS, **LSTM_ENTRIES,
             **{f"online+{n}": None for n in LSTM_ENTRIES}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown detectors {unknown}; choose from {list(known)}")
    if not dataset.labels:
        raise ValueError("the dataset has no labelled anomalies to evaluate against")
    ids = list(dataset.series)
    run = LabRun(dataset, step_s, ids, [_scored_file(dataset, sid) for sid in ids])
    run.scores = {name: [] for name in names}
    run.seconds = dict.fromkeys(names, 0.0)
    run.openings = [] if "online" in names else None
    for name in names:
        if name in SUPERVISED_MODELS:
            start = time.perf_counter()
            run.scores[name] = supervised_scores(dataset, ids, name, step_s, progress=progress)
            run.seconds[name] = time.perf_counter() - start
    lstm_names = [n for n in names if n.removeprefix("online+") in LSTM_ENTRIES]
    for kind_name in dict.fromkeys(n.removeprefix("online+") for n in lstm_names):
        start = time.perf_counter()
        alone, combined = lstm_scores(dataset, ids, LSTM_ENTRIES[kind_name], step_s,
                                      progress=progress)
        seconds = time.perf_counter() - start
        for name, scores in ((kind_name, alone), (f"online+{kind_name}", combined)):
            if name in names:
                run.scores[name], run.seconds[name] = scores, seconds
    if "online" in names:
        # All series in one batch (the detector learns as it goes: nothing to fit), and one
        # pass gives both its z-scores and its incident openings.
        start = time.perf_counter()
        model = OnlineModel(step_s=step_s).fit(None, None)
        for z, opened in model.score_and_openings_many(
            [(dataset.series[sid].values, dataset.series[sid].ts_ms) for sid in ids]
        ):
            run.scores["online"].append(z)
            run.openings.append(opened)
        run.seconds["online"] = time.perf_counter() - start
    names = [n for n in names if n in MODELS and n != "online"]
    with tqdm(total=len(ids) * len(names), desc="evaluate", unit="fit",
              disable=not progress or not names) as bar:
        for sid in ids:
            s = dataset.series[sid]
            train = probation_length(len(s))
            for name in names:
                bar.set_postfix_str(f"{name} {s.name}")
                start = time.perf_counter()
                model = MODELS[name](step_s=step_s).fit(s.values[:train], s.ts_ms[:train])
                run.scores[name].append(model.score_samples(s.values, s.ts_ms))
                run.seconds[name] += time.perf_counter() - start
                bar.update()
    return run


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
) -> list[np.ndarray]:
    """Scores of a supervised detector for every series (in ``ids`` order), by series folds.

    The series are split into ``folds`` groups (:func:`.perceptron.series_folds`); for each
    group a fresh model is trained on the labelled windows of every series *outside* it (at
    most ``max_windows``, positives kept first, :func:`.perceptron.subsample`) and scores
    the group's series. A series' own labels never reach the model that scores it.
    ``trained_on``, when given, receives for each series the ids its model trained on.
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
    proto = SUPERVISED_MODELS[name](step_s=step_s)
    data = {}
    for sid in ids:
        s = dataset.series[sid]
        data[sid] = labelled_windows(proto, s.values, s.ts_ms, windows[sid])
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
            scores[sid] = model.score_samples(s.values, s.ts_ms)
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
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-row scores of the global LSTM (``kind``) and of its combination with the online
    detector, for every series in ``ids`` order, by series folds.

    The online detector runs over every series once (as the worker would); its normalised
    residuals are the LSTM's input. For each fold (:func:`.perceptron.series_folds`) a fresh
    model is trained on the *other* series' windows that the detector considered normal and
    that touch no labelled window (at most ``max_windows``, drawn at random), then scores
    the fold's series. No series' own data or labels reach the model that scores it.

    The combination is what the worker alerts on with the model loaded: the seasonal
    detector's incident openings plus those of :class:`~vigil.detectors.lstm.LstmIncidents`
    (the LSTM score past :data:`LSTM_Z_OPEN` where no seasonal incident is open), as a 0/1
    score.
    """
    from vigil.detectors.lstm import (
        LstmIncidents,
        WindowLSTM,
        series_residuals,
        training_windows,
    )
    from vigil.detectors.online import DetectorParams

    folds = SUPERVISED_FOLDS if folds is None else folds
    max_windows = LSTM_MAX_WINDOWS if max_windows is None else max_windows
    epochs = LSTM_EPOCHS if epochs is None else epochs
    window = LSTM_WINDOW if window is None else window
    ids = list(ids)
    if len(ids) < 2:
        raise ValueError("the LSTM trains on other series: it needs two series or more")
    seen = dict(zip(ids, series_residuals(
        [(dataset.series[sid].values, dataset.series[sid].ts_ms) for sid in ids], step_s
    ), strict=True))
    windows = {sid: [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
               for sid in ids}
    train_x = {sid: training_windows(seen[sid], window, windows[sid]) for sid in ids}
    rng = np.random.default_rng(seed)
    alone: dict[str, np.ndarray] = {}
    combined: dict[str, np.ndarray] = {}
    step_ms = step_s * 1000
    for k, held_out in enumerate(tqdm(series_folds(ids, folds, seed), desc=f"{kind} folds",
                                      disable=not progress)):
        X = np.vstack([train_x[sid] for sid in ids if sid not in held_out])
        if len(X) > max_windows:
            X = X[np.sort(rng.choice(len(X), max_windows, replace=False))]
        model = WindowLSTM(window=window, kind=kind, epochs=epochs, seed=seed + k,
                           device="cpu").fit_windows(X)
        for sid in held_out:
            s, ts = seen[sid], dataset.series[sid].ts_ms
            z_lstm = model.score_series(s.residual)
            p = DetectorParams()
            incidents = LstmIncidents(LSTM_Z_OPEN, p.z_close, max(p.z_critical, LSTM_Z_OPEN),
                                      p.resolve_steps)
            found = incidents.step([sid], np.zeros(len(z_lstm), np.int64), s.ts_ms, z_lstm,
                                   s.incident_start_ms)
            both = s.opened.astype(float)
            both[[i for i, code, _ in found if code == 1]] = 1.0
            alone[sid] = _to_rows(ts, s.ts_ms, np.nan_to_num(z_lstm, nan=-1e9), step_ms)
            combined[sid] = _to_rows(ts, s.ts_ms, both, step_ms)
    return [alone[sid] for sid in ids], [combined[sid] for sid in ids]


def decompose_series(ts_ms, values, step_s: int) -> tuple[np.ndarray, Decomposition]:
    """One series resampled as the stream does, on a full grid, and decomposed.

    Steps a long gap left out (the stream fills at most ``max_fill_s`` = 300 s, as the
    models do) come back as ``nan`` on the grid; :func:`decompose` interpolates them.
    """
    step_ms = step_s * 1000
    steps = resample_series(ts_ms, values, step_ms, max(0, 300 // step_s))
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


def summarise(run: LabRun) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """The ``metrics.json`` content, and each entry's detections (standard profile)."""
    files = run.files
    n_windows = sum(len(f.windows) for f in files)
    entries: dict[str, dict] = {}
    detections: dict[str, list[np.ndarray]] = {}
    if run.openings is not None:
        nab = {
            p: {"score": normalised(raw_score(files, run.openings, p), n_windows, p),
                "threshold": None}
            for p in PROFILES
        }
        entries["online_incidents"] = _entry(files, run.openings, nab)
        entries["online_incidents"]["seconds"] = run.seconds["online"]
        detections["online_incidents"] = run.openings
    for name, scores in run.scores.items():
        # A row that closes no step has no verdict: it can never be a detection.
        scores = [np.where(np.isnan(s), -np.inf, s) for s in scores]
        nab, thresholds = {}, {}
        for p in PROFILES:
            thresholds[p], raw = sweep_threshold(files, scores, p)
            nab[p] = {"score": normalised(raw, n_windows, p), "threshold": _finite(thresholds[p])}
        # The sweep returns +inf when no threshold beats detecting nothing.
        standard = [s >= thresholds["standard"] for s in scores]
        entries[name] = _entry(files, standard, nab)
        entries[name]["seconds"] = run.seconds[name]
        detections[name] = standard
    ds = run.dataset
    summary = {
        "dataset": {
            "path": ds.meta.get("path"),
            "source": ds.source,
            "series": len(ds.series),
            "points": ds.n_points,
            "windows": n_windows,
            "step_s": run.step_s,
        },
        "protocol": {
            "training": "each model is fitted on its series' NAB probation rows; the "
            f"supervised ones ({', '.join(SUPERVISED_MODELS)}) instead on the labelled "
            f"windows of the other series, by {SUPERVISED_FOLDS} series folds; the LSTM "
            f"entries ({', '.join(LSTM_ENTRIES)}) on the other series' normal residual "
            f"windows (no labelled window), by {SUPERVISED_FOLDS} series folds",
            "threshold": "one per NAB profile over the corpus (NAB's sweep); event, point "
            "and delay metrics at the standard profile's threshold",
            "probation": "probation rows are never scored",
        },
        "detectors": {name: {"description": ENTRY_NAMES[name], **e} for name, e in entries.items()},
        "series": {
            sid: {
                "windows": len(f.windows),
                "detections": {name: int(d[k].sum()) for name, d in detections.items()},
                **_decomposition_entry(run, k),
            }
            for k, (sid, f) in enumerate(zip(run.ids, files, strict=True))
        },
    }
    return summary, detections


def evaluate(
    path: str | Path,
    out_dir: str | Path,
    names: Sequence[str] = tuple(MODELS),
    step_s: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the lab on a dataset folder and write ``metrics.json`` and ``report.html``."""
    start = time.perf_counter()
    dataset = load_dataset(path)
    step = step_s or infer_step_s(dataset)
    run = run_detectors(dataset, names, step, progress)
    run.decompositions = [
        decompose_series(dataset.series[sid].ts_ms, dataset.series[sid].values, step)
        for sid in tqdm(run.ids, desc="decompose", disable=not progress)
    ]
    summary, detections = summarise(run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _write_plots(run, detections, out / "plots", progress)
    stl_plots = _write_decomposition_plots(run, out / "plots", progress)
    summary["run_seconds"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(_report_html(summary, plots, stl_plots), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- report


def _write_plots(
    run: LabRun, detections: dict[str, list[np.ndarray]], folder: Path, progress: bool
) -> list[str]:
    """One PNG per series: values, probation and labelled windows, each entry's detections."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    names = list(detections)
    paths = []
    for k, sid in enumerate(tqdm(run.ids, desc="plots", disable=not progress)):
        s, f = run.dataset.series[sid], run.files[k]
        t = s.ts_ms.astype("datetime64[ms]")
        fig = Figure(figsize=(11, 2.4 + 0.25 * len(names)))
        top, bottom = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 0.4 + 0.3 * len(names)]}
        )
        top.plot(t, s.values, lw=0.6, color="#1f4e79")
        train = probation_length(len(s))
        if train:
            top.axvspan(t[0], t[train - 1], color="#999999", alpha=0.2, lw=0, label="probation")
        for j, (start, end) in enumerate(f.windows):
            top.axvspan(np.datetime64(start, "ms"), np.datetime64(end, "ms"), color="#e8a33d",
                        alpha=0.3, lw=0, label="labelled window" if j == 0 else None)
        top.set_title(sid, fontsize=9)
        top.legend(loc="upper left", fontsize=7)
        for row, name in enumerate(names):
            hit = detections[name][k]
            bottom.plot(t[hit], np.full(hit.sum(), row), "|", ms=8, color=f"C{row}")
        bottom.set_yticks(range(len(names)), names, fontsize=7)
        bottom.set_ylim(-0.7, len(names) - 0.3)
        bottom.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        rel = f"plots/{_plot_name(k, s.name)}.png"
        fig.savefig(folder.parent / rel, dpi=80)
        paths.append(rel)
    return paths


def _plot_name(k: int, name: str) -> str:
    return f"{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


def _write_decomposition_plots(run: LabRun, folder: Path, progress: bool) -> list[str]:
    """One PNG per series: observed (labelled windows shaded), trend, seasonal, residual."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, sid in enumerate(tqdm(run.ids, desc="decomposition plots", disable=not progress)):
        grid_ms, d = run.decompositions[k]
        t = grid_ms.astype("datetime64[ms]")
        fig = Figure(figsize=(11, 6))
        axes = fig.subplots(4, 1, sharex=True)
        period = "none" if d.period is None else f"{d.period} steps"
        axes[0].set_title(f"{sid} — period {period}, seasonal strength "
                          f"{d.seasonal_strength:.2f}, trend strength {d.trend_strength:.2f}",
                          fontsize=9)
        for j, (start, end) in enumerate(run.files[k].windows):
            axes[0].axvspan(np.datetime64(start, "ms"), np.datetime64(end, "ms"),
                            color="#e8a33d", alpha=0.3, lw=0,
                            label="labelled window" if j == 0 else None)
        for ax, y, label in zip(axes, (d.observed, d.trend, d.seasonal, d.resid),
                                ("observed", "trend", "seasonal", "residual"), strict=True):
            ax.plot(t, y, lw=0.6, color="#1f4e79")
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
        if run.files[k].windows:
            axes[0].legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        rel = f"plots/{_plot_name(k, run.dataset.series[sid].name)}_stl.png"
        fig.savefig(folder.parent / rel, dpi=80)
        paths.append(rel)
    return paths


def _fmt(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _period_text(steps: int | None, step_s: int) -> str:
    if steps is None:
        return "none"
    return f"{steps} ({steps * step_s / 86_400:g} d)"


def _series_table(summary: dict, plots: list[str], stl_plots: list[str]) -> str:
    """One row per series: windows, detected period, strengths, links to both plots."""
    step_s = summary["dataset"]["step_s"]
    rows = []
    for (sid, e), plot, stl in zip(summary["series"].items(), plots, stl_plots, strict=True):
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape(sid), e["windows"], _period_text(e["period_steps"], step_s),
            _fmt(e["seasonal_strength"]), _fmt(e["trend_strength"]),
            f'<a href="{html.escape(plot)}">series</a> · '
            f'<a href="{html.escape(stl)}">decomposition</a>',
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "series", "windows", "period (steps)", "seasonal strength", "trend strength", "plots"))
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _report_html(summary: dict, plots: list[str], stl_plots: list[str]) -> str:
    ds = summary["dataset"]
    rows = []
    for name, e in summary["detectors"].items():
        nab, ev = e["nab"], e["event"]
        rows.append(
            "<tr>" + "".join(
                f"<td>{c}</td>" for c in (
                    f"<b>{html.escape(name)}</b><br><small>{html.escape(e['description'])}</small>",
                    *(_fmt(nab[p]["score"], 1) for p in PROFILES),
                    _fmt(ev["precision"]), _fmt(ev["recall"]), _fmt(ev["f1"]),
                    f"{ev['windows_found']}/{ev['windows']}",
                    _fmt(e["point_f1"]), _fmt(e["point_adjusted_f1_inflated"]),
                    _fmt(e["mean_delay_min"], 0), _fmt(e["seconds"], 1),
                )
            ) + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in (
            "detector", *(f"NAB {p}" for p in PROFILES), "event precision", "event recall",
            "event F1", "windows found", "point F1", "point-adjusted F1 (inflated)",
            "mean delay (min)", "time (s)",
        )
    )
    images = "\n".join(
        f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}">'
        f'<br><a href="{html.escape(d)}">decomposition</a><br>'
        f'<img src="{html.escape(d)}" alt="{html.escape(d)}"></p>'
        for p, d in zip(plots, stl_plots, strict=True)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vigil evaluation</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>vigil evaluation lab</h1>
<p>Data: <code>{html.escape(str(ds['path']))}</code> ({html.escape(ds['source'])}):
{ds['series']} series, {ds['points']:,} points, {ds['windows']} labelled windows, resampled
to a {ds['step_s']} s step. Run time {summary['run_seconds']:.0f} s.</p>
<h2>Method</h2>
<p>Each series is scored as one file of the Numenta Anomaly Benchmark (NAB v1.1). Its first
min(15&nbsp;%, 750) rows are <em>probation</em>: never scored, and the only rows a model may
be fitted on. The online detector learns as it goes, from the first row, exactly as the
worker does; IsolationForest and One-Class SVM are fitted on the probation rows and then
score window features (value, jump, level, spread and total variation over the last steps)
of the series after removing a daily profile and scaling, both learned on the probation
rows; river's HalfSpaceTrees scores the same features and learns each step after scoring it.
Every score is causal: it depends on no later point.</p>
<p>The article's perceptron (<code>mlp</code>, when run) is supervised: 101 inputs (the last
100 steps min-max scaled within their window, and their total variation S), hidden layers
of 55 and 1024 sigmoid units, cross-entropy, Adam. It needs labels, so it never learns from
the series it scores: the series are split into {SUPERVISED_FOLDS} folds, and each fold is
scored by a network trained on the labelled windows of the other folds' series (a window is
positive when its last step lies in a labelled window; at most {SUPERVISED_MAX_WINDOWS:,}
windows per fold, positives first, the rest weighted by class in the loss;
{SUPERVISED_EPOCHS} epochs). Its first 99 steps, with no full window, score 0.</p>
<p>The global LSTM (<code>lstm</code>, the autoencoder, and <code>lstm_forecast</code>, when
run) scores {LSTM_WINDOW}-step windows of the online detector's normalised residual. It is
trained, like the perceptron, only on series it does not score ({SUPERVISED_FOLDS} series
folds), on the windows the online detector considered normal and that touch no labelled
window (at most {LSTM_MAX_WINDOWS:,}, {LSTM_EPOCHS} epochs). <code>online+lstm</code> is what
the worker alerts on with a model loaded: the online detector's incident openings plus the
LSTM's own where its score reaches {LSTM_Z_OPEN:g} and no online incident is open (a 0/1
score, no threshold of its own).</p>
<p>A detector with a continuous score is turned into detections by one threshold for the
whole corpus per NAB profile, the one that maximises that profile's score (NAB's own sweep),
so its NAB figures are the best it can reach with a single threshold. The online detector is
also scored on its incident openings, with no threshold: that row is what on-call would get.
NAB rewards an early detection inside a labelled window (weight falling from 1 at the left
edge to 0 at the right), charges each missed window and each detection outside windows; the
normalised score is 0 for a detector that never fires and 100 for a perfect one. The three
profiles weigh false positives and false negatives differently.</p>
<p>The other columns use the standard profile's threshold. Event-wise: a window is found if
any detection falls in it (recall); an alarm is a run of consecutive detections, true when it
touches a window (precision). Point-wise F1 treats every row as a sample. Point-adjusted F1
counts a whole window as detected once one row of it is; it is widely reported and
<b>inflated</b> (one lucky detection in a long window earns full marks), so read it with
care. The delay runs from a window's first row to its first detection; NAB windows are wide
and start well before the anomaly, so it is not a reaction time.</p>
<h2>Results</h2>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
<h2>Series</h2>
<p>Each series resampled to the lab's step is decomposed once: a seasonal period (1 day or
1 week) is kept when the autocorrelation at that lag, after removing a moving average of one
period, is at least {ACF_THRESHOLD}; STL (robust) then splits it into trend, seasonal and
residual; with no period the trend is a rolling median and the seasonal part zero.
Strengths (Wang, Smith &amp; Hyndman): seasonal 1&nbsp;&minus;&nbsp;Var(R)/Var(S+R), trend
1&nbsp;&minus;&nbsp;Var(R)/Var(T+R).</p>
{_series_table(summary, plots, stl_plots)}
<p>Grey: probation; orange: labelled windows; below each series, the detections of every
detector at its standard-profile threshold (the online incidents as opened); then its
decomposition (observed, trend, seasonal, residual).</p>
{images}
</body></html>
"""
