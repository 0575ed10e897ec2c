"""The lab's report: ``vigil evaluate`` runs the lab and writes what a person reads.

``metrics.json`` (every figure), ``report.html`` (tables, the protocol, each series' plots;
rendered from the Jinja2 template ``templates/report.html.j2``) and ``plots/`` (two PNGs per
series: the series with every entry's detections, and its STL decomposition). The experiment
itself is :mod:`vigil.lab.run`.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import jinja2
import numpy as np
from tqdm import tqdm

from vigil.lab.datasets import Dataset, infer_step_s, load_dataset, series_steps
from vigil.lab.decompose import ACF_THRESHOLD
from vigil.lab.models import (
    MODELS,
)
from vigil.lab.nab import (
    PROFILES,
    probation_length,
)
from vigil.lab.prepare import Preparation

__all__ = ["corpus_figures", "evaluate", "evaluate_corpora"]

from vigil.lab.run import (
    EARLIER_ONLINE,
    LSTM_EPOCHS,
    LSTM_MAX_WINDOWS,
    LSTM_WINDOW,
    LSTM_Z_OPEN,
    SUPERVISED_EPOCHS,
    SUPERVISED_FOLDS,
    SUPERVISED_MAX_WINDOWS,
    LabRun,
    _steps_text,
    _windows_of,
    decompose_series,
    run_cv,
    run_detectors,
    summarise,
)
from vigil.lab.slides import write_slides


def evaluate(
    path: str | Path | Dataset,
    out_dir: str | Path,
    names: Sequence[str] = tuple(MODELS),
    step_s: int | None = None,
    progress: bool = True,
    protocol: str | None = None,
    preparation: Preparation | None = None,
    folds: int = 3,
    gap: int = 24,
    test_fraction: float = 0.3,
) -> dict:
    """Run the lab on a dataset (or its path) and write ``metrics.json`` and ``report.html``.

    ``protocol`` is ``nab`` (the default on a NAB checkout) or ``cv`` (the default
    elsewhere); ``folds``, ``gap`` (rows) and ``test_fraction`` set up ``cv``. A NAB run
    cross-validates its online entries too (``metrics.json`` → ``cross_validation``,
    :func:`online_cross_validation`).
    """
    start = time.perf_counter()
    dataset = path if isinstance(path, Dataset) else load_dataset(path)
    protocol = protocol or ("nab" if dataset.source == "nab" else "cv")
    if protocol not in ("nab", "cv"):
        raise ValueError(f"protocol must be 'nab' or 'cv', not {protocol!r}")
    # Each series at its own step (or all at step_s); the median of the series' spacings
    # is the run's nominal step.
    step = step_s or infer_step_s(dataset)
    steps = series_steps(dataset, step_s)
    cross_validation = None  # of the online entries, beside a NAB-protocol run
    if protocol == "cv":
        run = run_cv(dataset, names, step, progress, preparation, folds, gap, test_fraction,
                     steps=steps)
    else:
        run = run_detectors(dataset, names, step, progress, preparation, steps=steps)
        cross_validation = online_cross_validation(dataset, names, step, steps, folds, gap,
                                                   test_fraction)
    run.decompositions = [
        decompose_series(dataset.series[sid].ts_ms, dataset.series[sid].values, steps[sid])
        for sid in tqdm(run.ids, desc="decompose", disable=not progress)
    ]
    summary, detections = summarise(run)
    if cross_validation is not None:
        summary["cross_validation"] = cross_validation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _write_plots(run, detections, out / "plots", progress)
    stl_plots = _write_decomposition_plots(run, out / "plots", progress)
    summary["run_seconds"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(_report_html(summary, plots, stl_plots), encoding="utf-8")
    return summary


#: The entries cross-validated beside a NAB-protocol run: the online detector's (it needs no
#: fit, so a cross-validation of its thresholds takes seconds).
CV_BESIDE_NAB = ("online", *EARLIER_ONLINE)


def online_cross_validation(dataset: Dataset, names: Sequence[str], step: int,
                            steps: dict[str, int], folds: int, gap: int,
                            test_fraction: float) -> dict | None:
    """Beside a NAB-protocol run, the online entries under ``--protocol cv`` as well: their
    thresholds chosen on rolling-origin validation blocks of each series' first part, then
    scored on its held-out test period (:func:`~vigil.lab.run.run_cv`). ``None`` when no
    online entry was asked for; ``{"error": …}`` when the series are too short to split.
    """
    chosen = [n for n in names if n in CV_BESIDE_NAB]
    if not chosen:
        return None
    try:
        run = run_cv(dataset, chosen, step, False, None, folds, gap, test_fraction,
                     steps=steps)
    except ValueError as exc:
        return {"error": str(exc)}
    summary, _ = summarise(run)
    chosen_by_cv = run.cv["detectors"]
    return {
        **{k: v for k, v in run.cv.items() if k != "detectors"},
        "detectors": {
            name: {"validation_standard": chosen_by_cv.get(name, {})
                   .get("validation_nab", {}).get("standard"),
                   "test": {p: v["score"] for p, v in entry["nab"].items()}}
            for name, entry in summary["detectors"].items()},
    }


def evaluate_corpora(
    paths: Sequence[str | Path], out_dir: str | Path, **options
) -> dict:
    """Run the lab on several corpora at once: each into ``out_dir/<corpus>/`` (as
    :func:`evaluate`), then ``out_dir/metrics.json`` and ``out_dir/report.html`` with every
    detector's figures per corpus and their mean, so one command judges a change on all, and
    the presentation ``out_dir/slides.pdf`` (:mod:`vigil.lab.slides`).

    ``options`` are :func:`evaluate`'s. The mean is the plain mean over corpora (each corpus
    counts once, whatever its number of series).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    names = _corpus_names(paths)
    corpora = {}
    for name, path in zip(names, paths, strict=True):
        summary = evaluate(path, out / name, **options)
        corpora[name] = {
            "path": str(path),
            "series": summary["dataset"]["series"],
            "windows": summary["dataset"]["scored_windows"],
            "detectors": {d: corpus_figures(e) for d, e in summary["detectors"].items()},
            **({"cross_validation": summary["cross_validation"]}
               if "cross_validation" in summary else {}),
        }
    combined = {
        "corpora": corpora,
        "mean": _mean_figures(corpora),
        "run_seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(combined, indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(
        _templates().get_template("corpora.html.j2").render(
            combined=combined, profiles=PROFILES), encoding="utf-8")
    write_slides(out, combined)
    return combined


def corpus_figures(entry: dict) -> dict:
    """The figures a change is judged by, from one detector's entry of ``metrics.json``:
    the three NAB profiles, event precision/recall/F1, mean delay and the detections outside
    every window.

    >>> e = {"nab": {"standard": {"score": 70.0}}, "mean_delay_min": 3.0, "event": {
    ...     "precision": 0.5, "recall": 1.0, "f1": 0.67, "alarms": 4, "true_alarms": 2}}
    >>> corpus_figures(e)["outside"]
    2
    """
    event = entry["event"]
    return {
        "nab": {p: v["score"] for p, v in entry["nab"].items()},
        "precision": event["precision"],
        "recall": event["recall"],
        "f1": event["f1"],
        "delay_min": entry.get("mean_delay_min"),
        "outside": int(event["alarms"]) - int(event["true_alarms"]),
    }


def _corpus_names(paths: Sequence[str | Path]) -> list[str]:
    """Folder names of the corpora, made unique (``nab-dev``, ``cmd-dev``, ``x-2``)."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(p).resolve().name) or "corpus"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _mean_figures(corpora: dict) -> dict:
    """Each detector's figures averaged over the corpora that ran it (None where any is)."""
    detectors = dict.fromkeys(d for c in corpora.values() for d in c["detectors"])
    mean = {}
    for d in detectors:
        runs = [c["detectors"][d] for c in corpora.values() if d in c["detectors"]]

        def avg(values):
            values = list(values)
            return None if any(v is None for v in values) else float(np.mean(values))

        mean[d] = {
            "nab": {p: avg(r["nab"][p] for r in runs) for p in runs[0]["nab"]},
            **{k: avg(r[k] for r in runs) for k in ("precision", "recall", "f1", "delay_min")},
            "outside": int(sum(r["outside"] for r in runs)),
            "corpora": len(runs),
        }
    return mean


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
        s = run.dataset.series[sid]
        t = s.ts_ms.astype("datetime64[ms]")
        # Detections cover the scored rows: all rows (NAB) or the test period (CV).
        first = run.rows[k].start if run.rows is not None else 0
        fig = Figure(figsize=(11, 2.4 + 0.25 * len(names)))
        top, bottom = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 0.4 + 0.3 * len(names)]}
        )
        top.plot(t, s.values, lw=0.6, color="#1f4e79")
        train = probation_length(len(s)) if run.rows is None else first
        if train:
            top.axvspan(t[0], t[train - 1], color="#999999", alpha=0.2, lw=0,
                        label="probation" if run.rows is None else "development (CV folds)")
        for j, (start, end) in enumerate(_windows_of(run.dataset, sid)):
            top.axvspan(np.datetime64(start, "ms"), np.datetime64(end, "ms"), color="#e8a33d",
                        alpha=0.3, lw=0, label="labelled window" if j == 0 else None)
        top.set_title(sid, fontsize=9)
        top.legend(loc="upper left", fontsize=7)
        for row, name in enumerate(names):
            hit = first + np.flatnonzero(detections[name][k])
            bottom.plot(t[hit], np.full(len(hit), row), "|", ms=8, color=f"C{row}")
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
        for j, (start, end) in enumerate(_windows_of(run.dataset, sid)):
            axes[0].axvspan(np.datetime64(start, "ms"), np.datetime64(end, "ms"),
                            color="#e8a33d", alpha=0.3, lw=0,
                            label="labelled window" if j == 0 else None)
        for ax, y, label in zip(axes, (d.observed, d.trend, d.seasonal, d.resid),
                                ("observed", "trend", "seasonal", "residual"), strict=True):
            ax.plot(t, y, lw=0.6, color="#1f4e79")
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
        if _windows_of(run.dataset, sid):
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


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


@functools.cache
def _templates() -> jinja2.Environment:
    """The report's templates (package data under ``vigil/lab/templates``), autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vigil.lab", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(
        fmt=_fmt, f=format, period=_period_text, params=_params_text, steps=_steps_text
    )
    return env


def _report_html(summary: dict, plots: list[str], stl_plots: list[str]) -> str:
    """``report.html``: the summary's tables, the method, and each series' plots."""
    return _templates().get_template("report.html.j2").render(
        summary=summary,
        profiles=PROFILES,
        plot_of=dict(zip(summary["series"], plots, strict=True)),
        series_rows=[
            (sid, entry, plot, stl)
            for (sid, entry), plot, stl in zip(
                summary["series"].items(), plots, stl_plots, strict=True
            )
        ],
        acf_threshold=ACF_THRESHOLD,
        lab={
            "supervised_folds": SUPERVISED_FOLDS,
            "supervised_max_windows": SUPERVISED_MAX_WINDOWS,
            "supervised_epochs": SUPERVISED_EPOCHS,
            "lstm_window": LSTM_WINDOW,
            "lstm_max_windows": LSTM_MAX_WINDOWS,
            "lstm_epochs": LSTM_EPOCHS,
            "lstm_z_open": LSTM_Z_OPEN,
        },
    )
