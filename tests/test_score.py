"""``vigil score``: one causal score in [0, 1] per input row, in order, that NAB can sweep."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.cli import app
from vigil.lab.datasets import load_dataset, parse_timestamps_ms
from vigil.lab.nab import normalised, sweep_threshold
from vigil.lab.run import run_detectors, summarise
from vigil.lab.score_files import Z_CAP, anomaly_score, opening_novelty, score_csv_files

NAB_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev"
SUBSET = [  # one with duplicate timestamps, one without anomalies, one short one
    "realAWSCloudwatch/ec2_network_in_5abac7.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "artificialNoAnomaly/art_daily_small_noise.csv",
]


@pytest.fixture(scope="module")
def nab_subset(tmp_path_factory) -> Path:
    """A NAB checkout of a few nab-dev files, in a temporary folder."""
    root = tmp_path_factory.mktemp("nab")
    windows = json.loads((NAB_DEV / "combined_windows.json").read_text())
    for rel in SUBSET:
        (root / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB_DEV / "data" / rel, root / "data" / rel)
    (root / "combined_windows.json").write_text(json.dumps({k: windows[k] for k in SUBSET}))
    return root


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_one_row_per_input_row_in_order_with_scores_in_0_1(nab_subset, tmp_path):
    result = CliRunner().invoke(app, ["score", str(nab_subset / "data"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for rel in SUBSET:
        src, out = _read(nab_subset / "data" / rel), _read(tmp_path / rel)
        assert out[0] == ["timestamp", "value", "anomaly_score"]
        assert len(out) == len(src)
        assert [r[:2] for r in out[1:]] == [r[:2] for r in src[1:]]
        scores = np.array([float(r[2]) for r in out[1:]])
        assert ((scores >= 0) & (scores <= 1)).all()
    # Some rows are incident openings (graded from the cap to 1 by their novelty), others lie
    # strictly below the cap.
    all_scores = np.concatenate([[float(r[2]) for r in _read(tmp_path / rel)[1:]]
                                 for rel in SUBSET])
    openings = all_scores[all_scores >= Z_CAP]
    assert len(openings) and len(np.unique(openings)) > 1  # graded, not all 1.0
    assert ((all_scores > 0) & (all_scores < Z_CAP)).any()


def test_nab_sweep_over_the_output_gives_the_labs_figure(nab_subset, tmp_path):
    score_csv_files(nab_subset / "data", tmp_path, progress=False)
    dataset = load_dataset(nab_subset)
    run = run_detectors(dataset, ["online"], 300, progress=False)
    summary, _ = summarise(run)
    # The output's scores on the rows the NAB loader keeps (of equal timestamps, the last).
    by_file = {}
    for rel in SUBSET:
        rows = _read(tmp_path / rel)[1:]
        ts = parse_timestamps_ms([r[0] for r in rows])
        last = {t: float(r[2]) for t, r in zip(ts.tolist(), rows, strict=True)}
        by_file[Path(rel).stem] = last
    scores = []
    for sid, f in zip(run.ids, run.files, strict=True):
        last = next(v for k, v in by_file.items() if sid.startswith(k.replace("-", "_")))
        scores.append(np.array([last[t] for t in f.ts_ms.tolist()]))
    n_windows = sum(len(f.windows) for f in run.files)
    _, raw = sweep_threshold(run.files, scores, "standard")
    ours = normalised(raw, n_windows, "standard")
    lab = summary["detectors"]["online_score"]["nab"]["standard"]["score"]
    assert ours == pytest.approx(lab)
    # The sweep can always keep just the incident openings, so it never does worse.
    assert ours >= summary["detectors"]["online_incidents"]["nab"]["standard"]["score"] - 1e-9


def test_a_single_file_to_a_file_and_bad_input(tmp_path):
    src = tmp_path / "one.csv"
    t = 1_700_006_400 + 300 * np.arange(400)
    y = 10 + np.sin(np.arange(400) / 5.0)
    y[350] = 40.0
    lines = [f"{ts},{v!r}" for ts, v in zip(t.tolist(), y.tolist(), strict=True)]
    lines[10] = f"{t[10]},n/a"  # no value: never seen by the detector, scores 0
    src.write_text("timestamp,value\n" + "\n".join(lines) + "\n")
    run = score_csv_files(src, tmp_path / "scored.csv", progress=False)
    out = _read(tmp_path / "scored.csv")
    assert run.rows == 400 and len(out) == 401 and out[11] == [str(t[10]), "n/a", "0.0"]
    scores = np.array([float(r[2]) for r in out[1:]])
    assert int(np.argmax(scores)) == 350 and scores[350] > Z_CAP  # the spike: an opening
    # NAB's results layout names files <detector>_<file>.csv.
    score_csv_files(tmp_path, tmp_path / "results" / "vigil", prefix="vigil_", progress=False)
    assert (tmp_path / "results" / "vigil" / "vigil_one.csv").read_text() == (
        tmp_path / "scored.csv").read_text()
    with pytest.raises(ValueError, match="overwrite"):
        score_csv_files(src, src, progress=False)
    (tmp_path / "bad.csv").write_text("time,v\n1,2\n")
    with pytest.raises(ValueError, match="timestamp"):
        score_csv_files(tmp_path / "bad.csv", tmp_path / "x.csv", progress=False)


def test_the_mapping_is_monotone_in_z_and_keeps_openings_on_top():
    z = np.linspace(-2, 60, 500)
    s = anomaly_score(z, np.zeros(500, bool))
    assert (np.diff(s) >= 0).all() and s.max() < Z_CAP and s.min() == 0.0
    assert anomaly_score(np.array([0.0]), np.array([True]))[0] == 1.0


def test_an_opening_scores_by_its_novelty_for_its_own_series():
    """A burst like the week's earlier ones scores under a record; only earlier rows count."""
    day = 86_400_000
    ts = np.arange(20) * day // 2
    z = np.zeros(20)
    opened = np.zeros(20, bool)
    for i, size in ((2, 9.0), (6, 9.0), (10, 8.0), (14, 30.0)):
        z[i], opened[i] = size, True
    z[13] = 4.0  # the record's rise (over z_close): its own excursion, not its history
    novelty = opening_novelty(z, ts, opened)
    assert novelty[2] == 1.0  # nothing before it
    assert novelty[6] == pytest.approx(0.5)  # as large as the earlier burst
    assert novelty[10] < 0.5 < novelty[14]  # smaller than the week's largest; a record
    assert novelty[14] == pytest.approx((30 / 9) / (1 + 30 / 9))
    scores = anomaly_score(z, opened, ts)
    assert Z_CAP < scores[10] < scores[6] < scores[14] < 1.0
    # Causal: what comes later changes nothing before it.
    later = z.copy()
    later[15:] = 100.0
    assert (opening_novelty(later, ts, opened)[:15] == novelty[:15]).all()
    # A week back only: two days apart, every opening is the first of its week.
    far = opening_novelty(z, np.arange(20) * 2 * day, opened)
    assert far[6] == far[14] == 1.0


def test_each_file_is_scored_at_its_own_step(nab_subset, tmp_path):
    # An hourly file beside 5-minute ones (NAB's realAdExchange beside realAWSCloudwatch):
    # scored as if alone, at 3600 s, not at the folder's typical 300 s.
    src = tmp_path / "in"
    shutil.copytree(nab_subset / "data", src)
    rows = _read(nab_subset / "data" / SUBSET[2])[1:]
    hourly = src / "hourly" / "cpu_hourly.csv"
    hourly.parent.mkdir()
    values = np.array([float(r[1]) for r in rows])[: len(rows) // 12 * 12].reshape(-1, 12)
    stamps = [r[0] for r in rows][::12][: len(values)]
    hourly.write_text("timestamp,value\n" + "".join(
        f"{t},{v!r}\n" for t, v in zip(stamps, values.mean(axis=1).tolist(), strict=True)))
    run = score_csv_files(src, tmp_path / "together", progress=False)
    assert sorted(set(run.step_s)) == [300, 3600]
    assert run.step_s[run.inputs.index(hourly)] == 3600
    alone = score_csv_files(hourly, tmp_path / "alone.csv", progress=False)
    assert alone.step_s == [3600]
    together = (tmp_path / "together" / "hourly" / "cpu_hourly.csv").read_text()
    assert together == (tmp_path / "alone.csv").read_text()
    # At the folder's 300 s the same file would be mostly filled gaps: different scores.
    score_csv_files(hourly, tmp_path / "at300.csv", step_s=300, progress=False)
    assert (tmp_path / "at300.csv").read_text() != together
