"""The lab's report: ``vigil evaluate`` runs the lab and writes what a person reads.

``metrics.json`` (every figure), ``report.html`` (tables, the protocol, each series' plots)
and ``plots/`` (two PNGs per series: the series with every entry's detections, and its STL
decomposition). The experiment itself is :mod:`vigil.lab.run`.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

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

__all__ = ["evaluate"]

#: What each table row is (the online detector gives two: its incidents and its z-score).
from vigil.lab.run import (
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
    elsewhere); ``folds``, ``gap`` (rows) and ``test_fraction`` set up ``cv``.
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
    if protocol == "cv":
        run = run_cv(dataset, names, step, progress, preparation, folds, gap, test_fraction,
                     steps=steps)
    else:
        run = run_detectors(dataset, names, step, progress, preparation, steps=steps)
    run.decompositions = [
        decompose_series(dataset.series[sid].ts_ms, dataset.series[sid].values, steps[sid])
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


def _series_table(summary: dict, plots: list[str], stl_plots: list[str]) -> str:
    """One row per series: windows, detected period, strengths, links to both plots."""
    rows = []
    for (sid, e), plot, stl in zip(summary["series"].items(), plots, stl_plots, strict=True):
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape(sid), e["windows"], _period_text(e["period_steps"], e["step_s"]),
            _fmt(e["seasonal_strength"]), _fmt(e["trend_strength"]),
            f'<a href="{html.escape(plot)}">series</a> · '
            f'<a href="{html.escape(stl)}">decomposition</a>',
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "series", "windows", "period (steps)", "seasonal strength", "trend strength", "plots"))
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _table(head: Sequence[str], rows: list[Sequence]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>\n{body}\n</table>"


def _params_text(params: dict) -> str:
    return html.escape(", ".join(f"{k}={v}" for k, v in params.items()) or "defaults")


def _protocol_html(summary: dict) -> str:
    """The method paragraph on training, scoring and thresholds, per protocol."""
    if summary["protocol"]["name"] == "cv":
        cv = summary["cv"]
        return f"""<p><b>Protocol: rolling-origin cross-validation, then an untouched test
period.</b> Each series is split by time. Its first {1 - cv['test_fraction']:.0%} of rows
(the development part) holds {cv['folds']} rolling-origin folds: fold <i>k</i> fits each
model on the rows from the start up to an origin, skips a gap of {cv['gap_rows']} rows, and
scores the next block (validation); the origin moves one block on per fold, so training
grows and no validation row precedes a training row. Per detector, the thresholds (one per
NAB profile for the whole corpus) and the hyperparameters listed below are those with the
best NAB score over all {cv['validation_blocks']} validation blocks
({cv['validation_windows']} labelled windows fall in them). Each detector is then refitted on
the whole development part of each series and scores the series; only its last rows, after
the same gap, are measured (the test period: {cv['test_windows']} labelled windows). No value
of the test period reaches a fit, a threshold or a choice. The online detector learns as it
goes from the first row, as the worker does; only its threshold is chosen. The models trained
on other series (the perceptron, the LSTM) keep their series folds: each fold's model is
trained only on the development parts of the other series, and scores both the validation
blocks and the test period of its own series.</p>"""
    return f"""<p><b>Protocol: NAB.</b> Each series is scored as one file of the Numenta
Anomaly Benchmark (NAB v1.1). Its first min(15&nbsp;%, 750) rows are <em>probation</em>: never
scored, and the only rows a model may be fitted on. The online detector learns as it goes,
from the first row, exactly as the worker does; IsolationForest, One-Class SVM and Prophet
are fitted on the probation rows; river's HalfSpaceTrees learns its feature ranges there and
then learns each step after scoring it. One parameter set serves the whole corpus, and a
detector with a continuous score is turned into detections by one threshold for the whole
corpus per NAB profile, the one that maximises that profile's score (NAB's own sweep), so its
NAB figures are the best it can reach with a single threshold.</p>
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
score, no threshold of its own).</p>"""


def _preparation_html(summary: dict) -> str:
    p = summary["preparation"]
    clip = p["clip_outliers"]
    clip_text = ("none" if clip is None else
                 f"training values clipped to their {clip['quantiles'][0]:g} and "
                 f"{clip['quantiles'][1]:g} quantiles before fitting (scored values are never "
                 "clipped: that would hide the anomalies)")
    return f"""<p><b>Preparation.</b> {html.escape(p['resampling'])}. Outlier clipping:
{html.escape(clip_text)}. Normalisation: <code>{html.escape(p['normalise'])}</code>
(learned on the training values, applied to all). These apply to
{html.escape(p['applies_to'])}. IsolationForest, One-Class SVM and HalfSpaceTrees then score
window features (value, jump, level, spread and total variation over the last steps) of the
series after removing a daily profile and scaling, both learned on the training rows; Prophet
scores the residual from its forecast. Every score is causal: it depends on no later
point.</p>"""


def _thresholds_html(summary: dict) -> str:
    rows = [(html.escape(name), *(_fmt(e["nab"][p]["threshold"], 4) for p in PROFILES))
            for name, e in summary["detectors"].items()]
    return _table(("detector", *(f"threshold ({p})" for p in PROFILES)), rows)


def _cv_html(summary: dict) -> str:
    if "cv" not in summary:
        return ""
    rows = []
    for name, c in summary["cv"]["detectors"].items():
        tried = "<br>".join(f"{_params_text(t['params'])}: {_fmt(t['validation_nab_standard'], 1)}"
                            for t in c.get("candidates", []) if t["params"]) or "—"
        rows.append((html.escape(name), _params_text(c["params"]), tried,
                     *(_fmt(c["validation_nab"][p], 1) for p in PROFILES),
                     *(_fmt(c["thresholds"][p], 4) for p in PROFILES)))
    head = ("detector", "chosen", "candidates (validation NAB standard)",
            *(f"validation NAB {p}" for p in PROFILES), *(f"threshold {p}" for p in PROFILES))
    warning = summary["cv"].get("warning")
    warning = f"<p><b>Warning: {html.escape(warning)}.</b></p>\n" if warning else ""
    return ("<h2>Cross-validation</h2>\n" + warning + "<p>Scores over the validation blocks "
            "of every series (the development part only), at the threshold chosen there.</p>\n"
            + _table(head, rows))


def _best_worst_html(summary: dict, plots: list[str]) -> str:
    plot_of = dict(zip(summary["series"], plots, strict=True))
    parts = ["<h2>Best and worst cases</h2>",
             "<p>Per detector, the series with the highest and the lowest standard NAB score "
             "(series with at least one scored labelled window), with its plot.</p>"]
    for name, bw in summary["best_worst"].items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        for which in ("best", "worst"):
            sid, score = bw[which]["series"], bw[which]["nab_standard"]
            plot = html.escape(plot_of[sid])
            parts.append(f"<p>{which}: <code>{html.escape(sid)}</code>, NAB standard "
                         f"{_fmt(score, 1)}<br><img src=\"{plot}\" alt=\"{plot}\"></p>")
    return "\n".join(parts)


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
{ds['series']} series, {ds['points']:,} points, {ds['windows']} labelled windows
({ds['scored_windows']} in the scored rows), resampled to {_steps_text(ds['series_steps_s'])}.
Protocol
<code>{summary['protocol']['name']}</code>. Run time {summary['run_seconds']:.0f} s.</p>
<h2>Method</h2>
{_protocol_html(summary)}
{_preparation_html(summary)}
<p>The online detector is also scored on its incident openings, with no threshold: that row
is what on-call would get; <code>online_score</code> is what <code>vigil score</code> writes
for NAB's own scorer (incident openings 1, other rows their z-score squashed below 0.99).
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
<p>Thresholds (a detection is a score at or above it; — : none beats detecting nothing):</p>
{_thresholds_html(summary)}
{_cv_html(summary)}
{_best_worst_html(summary, plots)}
<h2>Series</h2>
<p>Each series resampled to the lab's step is decomposed once: a seasonal period (1 day or
1 week) is kept when the autocorrelation at that lag, after removing a moving average of one
period, is at least {ACF_THRESHOLD}; STL (robust) then splits it into trend, seasonal and
residual; with no period the trend is a rolling median and the seasonal part zero.
Strengths (Wang, Smith &amp; Hyndman): seasonal 1&nbsp;&minus;&nbsp;Var(R)/Var(S+R), trend
1&nbsp;&minus;&nbsp;Var(R)/Var(T+R).</p>
{_series_table(summary, plots, stl_plots)}
<p>Grey: probation (NAB) or the development part (CV); orange: labelled windows; below
each series, the detections of every detector at its standard-profile threshold (the online
incidents as opened); then its
decomposition (observed, trend, seasonal, residual).</p>
{images}
</body></html>
"""
