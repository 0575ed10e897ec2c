"""``vigil train``: from dataset files and from the history stored in ClickHouse."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from vigil.cli import app as cli
from vigil.detectors.lstm import WindowLSTM
from vigil.lab.datasets import load_dataset, write_telemetry
from vigil.lab.synthetic import generate_telemetry

SMALL = ["--window", "16", "--hidden", "8", "--epochs", "2", "--max-windows", "800",
         "--device", "cpu"]


def test_train_from_files_writes_a_model_with_its_metadata(tmp_path):
    t = generate_telemetry(hosts=1, metrics=["cpu_usage_percent", "load1"], days=2, seed=2)
    folder = write_telemetry(t, tmp_path / "telemetry")
    out = tmp_path / "lstm.pt"
    result = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    assert "800 normal windows" in result.output
    model = WindowLSTM.load(out, "cpu")
    meta = model.metadata_
    assert meta["data"]["series"] == 2 and meta["data"]["windows_used"] == 800
    assert meta["data"]["labelled_windows_excluded"] == len(t.labels)
    assert meta["validation_loss"] == model.val_loss_[-1]
    assert "z_open" in meta["normalisation"] and meta["vigil_version"]
    assert (model.window, model.kind, model.hidden) == (16, "autoencoder", 8)
    # Same data, same seed: the same model.
    again = tmp_path / "again.pt"
    assert CliRunner().invoke(
        cli, ["train", "--data", str(folder), "--out", str(again), *SMALL]).exit_code == 0
    assert WindowLSTM.load(again, "cpu").val_loss_ == model.val_loss_


def test_train_refuses_too_little_data_and_asks_for_one_source(tmp_path):
    t = generate_telemetry(hosts=1, metrics=["load1"], days=1, seed=2)
    folder = write_telemetry(t, tmp_path / "telemetry")
    result = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out",
                                      str(tmp_path / "m.pt"), "--window", "4096"])
    assert result.exit_code != 0 and "too little" in result.output
    assert not (tmp_path / "m.pt").exists()
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0 and "--data or --store" in result.output


def test_train_from_clickhouse_history(clickhouse_url: str, tmp_path):
    from vigil.sinks.clickhouse import ClickHouseStore
    from vigil.streams.backfill import backfill

    url = clickhouse_url.rsplit("/", 1)[0] + f"/t_{uuid.uuid4().hex[:10]}"
    dataset = load_dataset("../shared/data/nab-dev")
    chosen = list(dataset.series)[:3]
    small = type(dataset)({k: dataset.series[k] for k in chosen},
                          [lab for lab in dataset.labels if lab.series in chosen], "nab")
    backfill(small, url, step_s=300)
    out = tmp_path / "lstm.pt"
    try:
        result = CliRunner().invoke(cli, ["train", "--clickhouse", url, "--out", str(out),
                                          *SMALL])
        assert result.exit_code == 0, result.output
        meta = WindowLSTM.load(out, "cpu").metadata_["data"]
        assert meta["source"] == "clickhouse" and meta["series"] == 3
        assert meta["step_s"] == 300
    finally:
        store = ClickHouseStore(url)
        store.execute(f"DROP DATABASE IF EXISTS {store.database}")
        store.close()
