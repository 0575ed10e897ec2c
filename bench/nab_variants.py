"""How the online detector holds up when a NAB corpus is made less tidy (generalisation check).

nab-dev's files are clean: one row every 5 minutes on the grid, no gaps. Telemetry in the
wild is not, and the detector will be scored on series it has never seen. This writes
variants of a NAB folder to a temporary directory — rows dropped, timestamps jittered,
coarser steps, values rescaled, the clock shifted — and scores each exactly as a user would:
``vigil score`` (each file at its own inferred step), then NAB's threshold sweep over the
written scores, per profile. Labelled windows are moved onto the variant's rows (widened
outwards to the nearest row). Run::

    PYTHONPATH=. python -m bench.nab_variants ../shared/data/nab-dev ../shared/data/cmd-dev

It prints, per corpus, one line per variant: the three NAB profiles, windows detected and
incident openings outside windows; with several corpora, then the mean over them. A variant
that keeps the anomalies (gaps, jitter, scale, shift) should score close to the original;
coarser steps average short anomalies away, so they score lower on any detector. The coarse
variants average 3, 6 and 12 rows: 15 minutes, 30 minutes and an hour on nab-dev's 5-minute
files (hence their names), 3, 6 and 12 hours on cmd-dev's hourly ones. Rows with an empty
value (cmd-dev has some) are left out, as the loader does.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vigil.lab.datasets import load_dataset, parse_timestamps_ms
from vigil.lab.nab import PROFILES, detection_counts, normalised, sweep_threshold
from vigil.lab.run import _scored_file
from vigil.lab.score_files import Z_CAP, score_csv_files

Rows = tuple[np.ndarray, np.ndarray]  # (timestamps in ms, values)
SHIFT_MS = (7 * 60 + 35) * 60_000


def _drop(rng: np.random.Generator, ts: np.ndarray, y: np.ndarray, share: float) -> Rows:
    keep = rng.random(len(ts)) >= share
    return ts[keep], y[keep]


def _jitter(rng: np.random.Generator, ts: np.ndarray, y: np.ndarray, jitter_s: int) -> Rows:
    ts = ts + 1000 * rng.integers(-jitter_s, jitter_s + 1, len(ts))
    order = np.argsort(ts, kind="stable")
    ts, y = ts[order], y[order]
    keep = np.r_[True, np.diff(ts) > 0]
    return ts[keep], y[keep]


def _mean_of(k: int) -> Callable[[np.random.Generator, np.ndarray, np.ndarray], Rows]:
    def coarser(rng, ts, y):
        n = len(ts) // k * k
        return ts[:n:k], y[:n].reshape(-1, k).mean(axis=1)
    return coarser


#: name → how each file's rows are changed (a seeded generator, timestamps, values).
VARIANTS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], Rows]] = {
    "original": lambda rng, ts, y: (ts, y),
    "10% of rows missing": lambda rng, ts, y: _drop(rng, ts, y, 0.10),
    "timestamps ±40 s, 10% missing": lambda rng, ts, y: _jitter(
        rng, *_drop(rng, ts, y, 0.10), 40),
    "values ×1000 + 10⁶": lambda rng, ts, y: (ts, 1000.0 * y + 1e6),
    "clock shifted +7 h 35 min": lambda rng, ts, y: (ts + SHIFT_MS, y),
    "15-minute means": _mean_of(3),
    "30-minute means": _mean_of(6),
    "hourly means": _mean_of(12),
}


def _fmt_ts(ms: np.ndarray) -> list[str]:
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit="s").tolist()


def write_variant(src: Path, dst: Path, name: str, seed: int = 0) -> None:
    """A NAB folder at ``dst``: every file of ``src`` changed, windows moved onto its rows."""
    change = VARIANTS[name]
    rng = np.random.default_rng(seed)
    windows = json.loads((src / "combined_windows.json").read_text())
    moved = {}
    for rel, wins in windows.items():
        with open(src / "data" / rel, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if len(r) > 1 and r[1].strip()]
        ts = parse_timestamps_ms([r[0] for r in rows])
        y = np.array([float(r[1]) for r in rows])
        ts, y = change(rng, ts, y)
        out = dst / "data" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp", "value"])
            w.writerows(zip(_fmt_ts(ts), (repr(v) for v in y.tolist()), strict=True))
        shift = SHIFT_MS if name.startswith("clock shifted") else 0
        new = []
        for start, end in wins:
            a, b = parse_timestamps_ms([start, end]) + shift
            i = max(int(np.searchsorted(ts, a, "right")) - 1, 0)  # last row at or before
            j = min(int(np.searchsorted(ts, b, "left")), len(ts) - 1)  # first at or after
            new.append([f"{s}.000000" for s in _fmt_ts(ts[[i, j]])])
        moved[rel] = new
    (dst / "combined_windows.json").write_text(json.dumps(moved, indent=1))


def score_variant(folder: Path, out: Path) -> dict:
    """``vigil score`` on ``folder``, then NAB's sweep per profile over the written scores."""
    run = score_csv_files(folder / "data", out, progress=False)
    dataset = load_dataset(folder)
    ids = list(dataset.series)
    files = [_scored_file(dataset, sid) for sid in ids]
    by_stem = {}
    for src, dst in zip(run.inputs, run.outputs, strict=True):
        with open(dst, newline="") as f:
            rows = list(csv.reader(f))[1:]
        ts = parse_timestamps_ms([r[0] for r in rows])
        by_stem[src.stem.replace("-", "_")] = dict(zip(ts.tolist(),
                                                       (float(r[2]) for r in rows), strict=True))
    scores = []
    for sid, f in zip(ids, files, strict=True):
        last = next(v for k, v in by_stem.items() if sid.startswith(k + "{"))
        scores.append(np.array([last[t] for t in f.ts_ms.tolist()]))
    n_windows = sum(len(f.windows) for f in files)
    result = {"steps": sorted(set(run.step_s))}
    for profile in PROFILES:
        _, raw = sweep_threshold(files, scores, profile)
        result[profile] = normalised(raw, n_windows, profile)
    hit, outside = detection_counts(files, [s > Z_CAP for s in scores])  # the openings
    result["windows"] = f"{hit}/{n_windows}"
    result["outside"] = outside
    return result


_HEAD = (f"{'variant':32} {'standard':>8} {'low FP':>7} {'low FN':>7} {'windows':>8} "
         f"{'outside':>7}  steps (s)")


def main(*paths: str) -> None:
    paths = paths or ("../shared/data/nab-dev", "../shared/data/cmd-dev")
    start = time.perf_counter()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for c, path in enumerate(paths):
            print(f"== {path}\n{_HEAD}")
            for k, name in enumerate(VARIANTS):
                folder = Path(tmp) / f"c{c}v{k}"
                write_variant(Path(path), folder, name)
                r = score_variant(folder, Path(tmp) / f"c{c}scored{k}")
                results[name].append(r)
                print(f"{name:32} {r['standard']:8.1f} {r['reward_low_FP_rate']:7.1f} "
                      f"{r['reward_low_FN_rate']:7.1f} {r['windows']:>8} {r['outside']:7d}  "
                      f"{','.join(map(str, r['steps']))}", flush=True)
    if len(paths) > 1:
        print(f"== mean of {len(paths)} corpora\n{_HEAD[:57]}")
        for name, rs in results.items():
            mean = {p: float(np.mean([r[p] for r in rs])) for p in PROFILES}
            print(f"{name:32} {mean['standard']:8.1f} {mean['reward_low_FP_rate']:7.1f} "
                  f"{mean['reward_low_FN_rate']:7.1f} {'':>8} {sum(r['outside'] for r in rs):7d}")
    print(f"({time.perf_counter() - start:.0f} s; NAB sweep over `vigil score` output; windows "
          "and outside count incident openings)")


if __name__ == "__main__":
    main(*sys.argv[1:])
