"""The presentation of a lab run: ``slides.pdf``, eleven slides drawn from the run's own figures.

The brief asks for a report and a presentation of the results. :func:`write_slides` turns a
several-corpora run (:func:`vigil.lab.report.evaluate_corpora`) into a PDF deck: the problem,
the data, seasonality and trend removal on a real series (its STL plot from the run), how
vigil detects, the models compared on every corpus, the protocol, the online detector's
cross-validation and test-period figures, an alert as on-call sees it
(a real opening of the detector on a labelled window, drawn by the alert chart of the
notifier) and the limits. Every number on a slide comes from the run's ``metrics.json``.
"""

from __future__ import annotations

import json
import textwrap
from datetime import date
from pathlib import Path

import numpy as np

from vigil.detectors.bank import new_state_bank
from vigil.detectors.online import EVENT_KINDS, DetectorParams, OnlineDetector, describe
from vigil.lab.datasets import load_dataset
from vigil.lab.nab import PROFILES
from vigil.sinks.charts import render_chart

__all__ = ["write_slides"]

SIZE = (11.0, 6.2)  # inches, 16:9-ish
CONTEXT_STEPS = 180  # steps of history on the alert slide's chart

_PROBLEM = [
    "Ops teams stream thousands of metrics (CPU, latency, request and error rates) through "
    "Kafka. A fixed threshold either pages on every daily peak or misses what matters.",
    "vigil learns each series' normal shape online — daily and weekly seasonality, slow "
    "trends, its own noise — and tells on-call people within seconds when a series behaves "
    "strangely: once per incident, with a chart, by email, Telegram or Alertmanager.",
    "The question of this deck: how well does it find labelled anomalies on real telemetry, "
    "compared with the offline models the brief names?",
]
_PIPELINE = [
    "1. Resample each series to its step (aggregate, fill short gaps, mark long ones).",
    "2. Baseline: level and trend (Holt), daily and weekly profiles switched on only when "
    "the series shows them; at steps over 5 minutes each estimate keeps the number of "
    "observations it holds at 5 minutes.",
    "3. Residual = value − baseline, divided by a robust scale; statistics over windows: "
    "point, level shift, variance, total variation Σ|Δx| (the article's S), flatline, drift.",
    "4. What is news for this series: rarity and recurrence memories, bursts.",
    "5. Incidents open, update and resolve with hysteresis: one incident = one alert.",
    "Strictly causal: a step is scored before it is learned. One parameter set for every "
    "series; state is ~1.8 KB per series in Redis.",
]
_PROTOCOL = [
    "NAB protocol: each series is a file; its first min(15 %, 750) rows are probation and "
    "never scored. A detection inside a labelled window earns up to 1 (more the earlier), "
    "each one outside costs 0.11 (standard), 0.22 (reward_low_FP); a missed window −1 "
    "(−2 for reward_low_FN). 0 = flags nothing, 100 = every window at its left edge.",
    "Detectors with a continuous score get one threshold per corpus and profile, the one "
    "that maximises the score (NAB's optimiser) — an advantage the online detector's "
    "incident openings (online_incidents) do not get: they are what the worker alerts on.",
    "Cross-validation: `vigil evaluate --protocol cv` (rolling-origin folds, then a held-out "
    "test period) chooses thresholds and window sizes on development rows only.",
]
_LIMITS = [
    "Tuned over many rounds on nab-dev: a corpus it never saw scores lower (held-out NAB "
    "files 56.7 standard, cloud telemetry 49.0 before the work of issue 16).",
    "Bursty, heavy-tailed counts (social-media volumes) open too many incidents.",
    "Short anomalies that recur every day (hourly crash rates) look ordinary to the rarity "
    "memory after a few days and are missed.",
    "A new series alerts only on gross anomalies in its first 60 steps (from step 10), and "
    "only on critical ones (12σ) until its daily profile may apply (1.5 days): before it "
    "has seen its daily cycle, the first morning's ramp looks like an anomaly.",
    "The offline models are scored with a threshold fitted on the labels of the same corpus: "
    "their figures are upper bounds.",
]


def write_slides(out_dir: str | Path, combined: dict | None = None) -> Path:
    """Write ``slides.pdf`` for the several-corpora run in ``out_dir`` (its ``metrics.json``
    unless ``combined`` is given) and return its path."""
    from matplotlib.backends.backend_pdf import PdfPages

    out = Path(out_dir)
    combined = combined or json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    corpora = {name: json.loads((out / name / "metrics.json").read_text(encoding="utf-8"))
               for name in combined["corpora"]}
    path = out / "slides.pdf"
    with PdfPages(path) as pdf:
        for draw in (_title, _problem, _data, _stl, _pipeline, _models, _results, _protocol,
                     _cross_validation, _alert, _limits):
            fig = _slide()
            draw(fig, combined, corpora, out)
            pdf.savefig(fig)
    return path


def _slide():
    from matplotlib.figure import Figure

    return Figure(figsize=SIZE)


def _heading(fig, text: str) -> None:
    fig.text(0.05, 0.92, text, fontsize=22, weight="bold", color="#1f4e79")


def _bullets(fig, lines: list[str], top: float = 0.82, width: int = 95, size: int = 13) -> None:
    y = top
    for line in lines:
        wrapped = textwrap.fill(line, width)
        fig.text(0.06, y, wrapped, fontsize=size, va="top")
        y -= 0.055 * (wrapped.count("\n") + 1) + 0.03


def _title(fig, combined, corpora, out) -> None:
    fig.text(0.5, 0.62, "vigil", fontsize=44, weight="bold", ha="center", color="#1f4e79")
    fig.text(0.5, 0.5, "Real-time anomaly detection for IT telemetry", fontsize=20,
             ha="center")
    names = ", ".join(combined["corpora"])
    fig.text(0.5, 0.36, f"Results on {names} — {date.today().isoformat()}", fontsize=14,
             ha="center", color="#555555")


def _problem(fig, combined, corpora, out) -> None:
    _heading(fig, "The problem")
    _bullets(fig, _PROBLEM)


def _data(fig, combined, corpora, out) -> None:
    _heading(fig, "The data: real labelled telemetry")
    rows = []
    for name, m in corpora.items():
        d = m["dataset"]
        steps = ", ".join(f"{int(s) // 60} min × {n}" if int(s) < 3600 else
                          f"{int(s) // 3600} h × {n}" for s, n in d["series_steps_s"].items())
        rows.append([name, str(d["series"]), f"{d['points']:,}", str(d["scored_windows"]),
                     steps])
    ax = fig.add_axes((0.05, 0.35, 0.9, 0.45))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["corpus", "series", "points", "windows", "steps"],
                     loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(12)
    table.scale(1, 2)
    _bullets(fig, ["Windows are the labellers' intervals around each anomaly; a detection "
                   "counts only inside one. Other corpora, never given to the developers, "
                   "judge whether the detector generalises."], top=0.28)


def _stl(fig, combined, corpora, out) -> None:
    _heading(fig, "Seasonality and trend removal (STL)")
    name, sid, entry, k = _most_seasonal(corpora)
    if sid is None:
        _bullets(fig, ["No series of this run shows a seasonal period."])
        return
    stl = sorted((out / name / "plots").glob(f"{k:03d}_*_stl.png"))
    if stl:
        from matplotlib.image import imread

        ax = fig.add_axes((0.03, 0.12, 0.94, 0.75))
        ax.imshow(imread(stl[0]))
        ax.axis("off")
    fig.text(0.05, 0.05, textwrap.fill(
        f"{sid} ({name}): period {entry['period_steps']} steps, seasonal strength "
        f"{entry['seasonal_strength']:.2f}, trend strength {entry['trend_strength']:.2f}. "
        "The detector removes level, trend and profiles online; what is left is scored.",
        130), fontsize=10)


def _most_seasonal(corpora: dict) -> tuple:
    """The labelled series with the strongest seasonality (its corpus, id, entry, index)."""
    best = (None, None, None, -1)
    strength = -1.0
    for name, m in corpora.items():
        for k, (sid, e) in enumerate(m["series"].items()):
            s = e.get("seasonal_strength")
            if e.get("period_steps") and e.get("windows") and s is not None and s > strength:
                best, strength = (name, sid, e, k), s
    return best


def _pipeline(fig, combined, corpora, out) -> None:
    _heading(fig, "How vigil detects, per series, online")
    _bullets(fig, _PIPELINE)


def _models(fig, combined, corpora, out) -> None:
    _heading(fig, "The models compared (NAB standard profile)")
    detectors = list(combined["mean"])
    names = [*combined["corpora"], "mean"]
    ax = fig.add_axes((0.08, 0.14, 0.88, 0.7))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        figures = combined["mean"] if name == "mean" else combined["corpora"][name]["detectors"]
        values = [(figures.get(d) or {}).get("nab", {}).get("standard") for d in detectors]
        ax.bar(np.arange(len(detectors)) + j * width, [v or 0.0 for v in values], width,
               label=name, color=None if name != "mean" else "#444444")
    ax.set_xticks(np.arange(len(detectors)) + 0.4 - width / 2, detectors, fontsize=9,
                  rotation=20)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("NAB score (standard)")
    ax.legend(fontsize=9)


def _results(fig, combined, corpora, out) -> None:
    _heading(fig, "Results: the mean over corpora")
    rows = []
    for d, m in combined["mean"].items():
        rows.append([d, *(_num(m["nab"][p]) for p in PROFILES), _num(m["f1"], 2),
                     str(m["outside"])])
    ax = fig.add_axes((0.04, 0.1, 0.92, 0.72))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["detector", "standard", "low FP", "low FN",
                                               "event F1", "outside windows"],
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    table.scale(1, 1.6)


def _num(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _protocol(fig, combined, corpora, out) -> None:
    _heading(fig, "Protocol: NAB scoring, cross-validation")
    _bullets(fig, _PROTOCOL, size=12)


def _cross_validation(fig, combined, corpora, out) -> None:
    _heading(fig, "Cross-validation and test results")
    rows, notes = [], []
    for name, corpus in combined["corpora"].items():
        cv = corpus.get("cross_validation")
        if cv is None:
            continue
        if "error" in cv:
            notes.append(f"{name}: not cross-validated ({cv['error']}).")
            continue
        for entry, r in cv["detectors"].items():
            rows.append([name, entry, _num(r["validation_standard"]),
                         *(_num(r["test"][p]) for p in PROFILES)])
        if cv.get("warning"):
            notes.append(f"{name}: {cv['warning']}")
    if not rows:
        _bullets(fig, [*notes, "Run with --protocol cv, every detector is cross-validated: "
                       "the tables of this deck are then test-period figures."])
        return
    first = next(c["cross_validation"] for c in combined["corpora"].values()
                 if "folds" in c.get("cross_validation", {}))
    _bullets(fig, [
        f"The online entries again under `--protocol cv`: each series' first "
        f"{1 - first['test_fraction']:.0%} is split into {first['folds']} rolling-origin "
        f"folds ({first['gap_rows']} rows' gap before each validation block); the threshold "
        "per profile that scores best over the validation blocks is kept and the held-out "
        "rest of each series (the test period, which no choice saw) is scored with it. "
        "online_incidents needs no threshold.", *notes], top=0.84, size=11)
    ax = fig.add_axes((0.04, 0.06, 0.92, 0.58))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["corpus", "entry", "validation (standard)",
                                               "test: standard", "low FP", "low FN"],
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 1.4)


def _alert(fig, combined, corpora, out) -> None:
    _heading(fig, "An alert as on-call sees it")
    found = _an_opening(combined)
    if found is None:
        _bullets(fig, ["The detector opened no incident on these corpora."])
        return
    sid, context, ts_ms, reason = found
    from matplotlib.image import imread

    png = out / "alert-example.png"
    png.write_bytes(render_chart(context, sid, event_ts_ms=ts_ms, size=(10, 3.6)))
    ax = fig.add_axes((0.04, 0.2, 0.92, 0.62))
    ax.imshow(imread(png))
    ax.axis("off")
    fig.text(0.05, 0.13, textwrap.fill(f"[vigil] {sid}: {reason}", 105), fontsize=10,
             family="monospace", va="top")


def _an_opening(combined: dict):
    """The first incident the detector opens inside a labelled window, on a real series
    before an artificial one: ``(series, chart context, ts_ms, reason)``."""
    for corpus in combined["corpora"].values():
        dataset = load_dataset(corpus["path"])
        for sid in sorted(dataset.series, key=lambda sid: "artificial" in sid):
            s = dataset.series[sid]
            windows = [(lab.start_ms, lab.end_ms) for lab in dataset.labels if lab.series == sid]
            if not windows or len(s) < 2:
                continue
            step_s = max(1, int(np.median(np.diff(s.ts_ms))) // 1000)
            result = OnlineDetector(DetectorParams(step_s=step_s)).process(
                new_state_bank(1), np.zeros(len(s), np.int64), s.ts_ms, s.values)
            ts = result.steps.ts_ms
            for i in np.flatnonzero(result.event == EVENT_KINDS.index("open")):
                if any(a <= ts[i] <= b for a, b in windows):
                    lo = max(0, i - CONTEXT_STEPS + 1)
                    context = {
                        "ts_ms": ts[lo:i + 1].tolist(),
                        "value": result.steps.value[lo:i + 1].tolist(),
                        "expected": result.expected[lo:i + 1].tolist(),
                        "lower": result.lower[lo:i + 1].tolist(),
                        "upper": result.upper[lo:i + 1].tolist(),
                        "z": result.z[lo:i + 1].tolist(),
                    }
                    return sid, context, int(ts[i]), describe(result, int(i))
    return None


def _limits(fig, combined, corpora, out) -> None:
    _heading(fig, "Limits, and what comes next")
    _bullets(fig, _LIMITS, size=12)
