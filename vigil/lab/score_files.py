"""``vigil score``: the online detector's causal anomaly scores written beside NAB-style CSVs.

For every ``timestamp,value`` CSV under a folder (or one file) this writes a CSV at the same
relative path with the columns ``timestamp,value,anomaly_score``: one row per input row, in
the same order, with the input's own text for ``timestamp`` and ``value``, so that NAB's own
scorer (which expects exactly this) can be run on the output.

Scores come from :class:`~vigil.lab.models.OnlineModel` with its shipped defaults
(all files in one batch, as the lab runs it) and are mapped into [0, 1] by
:func:`anomaly_score`: an incident opening scores from :data:`Z_CAP` to 1 by its *novelty*
for its own series (:func:`opening_novelty`: its z against the largest z the series reached
in the week before it, so a burst like last week's scores lower than a new record); any
other row is its equivalent z-score squashed below :data:`Z_CAP`. A threshold sweep over
them (NAB's optimiser) can then pick every opening (a threshold at the cap), only the novel
ones (above it), or add the rows with the highest z-scores.

Rows the detector never saw — a non-numeric value, or an earlier row with the same timestamp
as a later one (the loader keeps the last) — score 0, as does a row that closes no step of
the resampling grid.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigil.detectors.online import DetectorParams
from vigil.lab.datasets import read_series_csv, typical_step_s

__all__ = [
    "NOVELTY_WINDOW_MS",
    "OPENING_SCORE",
    "Z_CAP",
    "Z_HALF",
    "ScoreRun",
    "anomaly_score",
    "opening_novelty",
    "score_csv_files",
]

#: The score of a row where the detector opened an incident.
OPENING_SCORE = 1.0
#: Every other row scores below this.
Z_CAP = 0.99
#: The z-score that maps to half the cap.
Z_HALF = 5.0
#: How far back an opening's novelty looks: a week, so that a weekly pattern counts as seen.
NOVELTY_WINDOW_MS = 7 * 86_400_000
#: A score under this ends an excursion (the shipped detector's ``z_close``): the excursion an
#: opening belongs to is not part of its own history.
_Z_CLOSE = DetectorParams().z_close


def opening_novelty(z: np.ndarray, ts_ms: np.ndarray, opened: np.ndarray,
                    window_ms: int = NOVELTY_WINDOW_MS) -> np.ndarray:
    """Per row: ``r / (1 + r)`` at an opening, where ``r`` is its z over the largest z of
    the same series in the ``window_ms`` before its excursion began (1 when there is none);
    0 elsewhere. Causal: it reads only earlier rows.

    Bursty series reach z 6–10 every day; an opening there is rarely bigger than the week's
    largest (r ≈ 1, novelty ≈ 0.5), while an anomaly no other week had is (r ≫ 1, → 1).

    >>> z = np.array([0, 8, 0, 0, 9, 0, 0, 20, 0], float)
    >>> ts = np.arange(9) * 86_400_000
    >>> opening_novelty(z, ts, z > 5).round(2).tolist()  # 9 vs 8; 20 vs 9
    [0.0, 1.0, 0.0, 0.0, 0.53, 0.0, 0.0, 0.69, 0.0]
    """
    z = np.nan_to_num(np.asarray(z, np.float64), nan=0.0, posinf=1e12)
    ts = np.asarray(ts_ms, np.int64)
    out = np.zeros(len(z))
    for i in np.flatnonzero(np.asarray(opened, bool)):
        start = i
        while start > 0 and z[start - 1] >= _Z_CLOSE:
            start -= 1  # the rise of this very excursion
        lo = int(np.searchsorted(ts, ts[i] - window_ms))
        before = z[lo:start].max() if start > lo else 0.0
        out[i] = 1.0 if before <= 0.0 else (r := z[i] / before) / (1.0 + r)
    return out


def anomaly_score(z: np.ndarray, opened: np.ndarray,
                  ts_ms: np.ndarray | None = None) -> np.ndarray:
    """Where an incident opened, ``Z_CAP + (1 − Z_CAP) · novelty`` (:func:`opening_novelty`
    over the rows' times ``ts_ms``; 1 without them); elsewhere ``Z_CAP · z⁺ / (z⁺ +
    Z_HALF)`` (``nan`` → 0).

    Monotone in ``z`` off the openings, so a threshold under the cap is a threshold on ``z``.

    >>> anomaly_score(np.array([0.0, 5.0, 100.0, np.nan, -3.0]),
    ...               np.array([False, False, False, False, True])).round(3).tolist()
    [0.0, 0.495, 0.943, 0.0, 1.0]
    """
    zp = np.clip(np.nan_to_num(np.asarray(z, np.float64), nan=0.0, posinf=1e12), 0.0, None)
    opening = (OPENING_SCORE if ts_ms is None
               else Z_CAP + (1.0 - Z_CAP) * opening_novelty(z, ts_ms, opened))
    return np.where(np.asarray(opened, bool), opening, Z_CAP * zp / (zp + Z_HALF))


@dataclass
class ScoreRun:
    """What :func:`score_csv_files` wrote: input and output files, rows, steps and time."""

    inputs: list[Path]
    outputs: list[Path]
    rows: int
    step_s: list[int]  # the step each input file was resampled to
    seconds: float


def _csv_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if src.is_dir():
        return sorted(p for p in src.rglob("*.csv") if p.is_file())
    raise ValueError(f"{src}: no such file or folder")


def score_csv_files(
    src: str | Path,
    dst: str | Path,
    step_s: int | None = None,
    progress: bool = True,
    prefix: str = "",
) -> ScoreRun:
    """Score every CSV under ``src`` (or the file ``src``) into ``dst``.

    ``dst`` is a folder (outputs at the inputs' relative paths, each file name preceded by
    ``prefix``: NAB's results layout wants ``<detector>_<file>.csv``) — or, when ``src`` is
    one file, the output file itself if it ends in ``.csv``. ``step_s`` defaults to each
    file's own typical spacing (:func:`~vigil.lab.datasets.typical_step_s`).
    """
    from tqdm import tqdm

    from vigil.lab.models import OnlineModel

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    files = _csv_files(src)
    if not files:
        raise ValueError(f"{src}: no CSV files")
    if src.is_file():
        outputs = [dst if dst.suffix.lower() == ".csv" else dst / (prefix + src.name)]
    else:
        outputs = [dst / f.relative_to(src).with_name(prefix + f.name) for f in files]
    if any(o.resolve() == f.resolve() for o, f in zip(outputs, files, strict=True)):
        raise ValueError("the output would overwrite an input file")
    read = []
    for f in tqdm(files, desc="read", unit="file", disable=not progress):
        s, _, rows, _ = read_series_csv(f)
        read.append((s, rows))
    # Each file at its own step (hourly, 5-minute and 1-minute files may share a folder);
    # files with the same step run in one batch.
    steps = [step_s or typical_step_s(s.ts_ms) for s, _ in read]
    results = OnlineModel.score_and_openings_at_steps(
        [(s.values, s.ts_ms) for s, _ in read], steps)
    total = 0
    for f, out, (s, rows), (z, opened) in tqdm(
        list(zip(files, outputs, read, results, strict=True)), desc="write", unit="file",
        disable=not progress,
    ):
        total += _write_scores(f, out, rows, anomaly_score(z, opened, s.ts_ms))
    return ScoreRun(files, outputs, total, steps, time.perf_counter() - start)


def _write_scores(src: Path, out: Path, rows: np.ndarray, scores: np.ndarray) -> int:
    """Copy ``src``'s timestamp and value text with each row's score; returns rows written."""
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        i_ts, i_val = header.index("timestamp"), header.index("value")
        lines = list(reader)
    per_line = np.zeros(len(lines))
    per_line[rows] = scores
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score"])
        for row, score in zip(lines, per_line.tolist(), strict=True):
            writer.writerow([_cell(row, i_ts), _cell(row, i_val), repr(score)])
    return len(lines)


def _cell(row: Sequence[str], i: int) -> str:
    return row[i] if i < len(row) else ""
