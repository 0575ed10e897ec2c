"""The ``vigil`` command line: generate, replay and the demo, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tests.conftest import Stack, wait_until
from vigil.cli import app
from vigil.devtools.embedded import TopicCollector
from vigil.lab.datasets import load_dataset

NAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev"


def test_generate_writes_a_loadable_labelled_dataset(tmp_path: Path):
    out = tmp_path / "telemetry"
    result = CliRunner().invoke(
        app, ["generate", "--out", str(out), "--hosts", "2", "--days", "9",
              "--metrics", "cpu_usage_percent,load1", "--seed", "3", "--no-capacity-fill"],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"points.csv", "labels.csv", "manifest.json"}
    data = load_dataset(out)
    assert len(data.series) == 6  # and gone-01's two, which stop 15 min before the end
    assert data.n_points > 6 * 9 * 1440 * 0.95
    assert data.labels, "a 9-day recording has anomalies after the first week"
    assert f"{data.n_points:,} points of 6 series" in result.output
    gone = [s for s in data.series.values() if s.labels == {"host": "gone-01"}]
    web = [s for s in data.series.values() if s.labels == {"host": "web-01"}]
    assert len(gone) == 2
    assert max(int(s.ts_ms[-1]) for s in web) - int(gone[0].ts_ms[-1]) == 15 * 60_000
    bare = CliRunner().invoke(
        app, ["generate", "--out", str(tmp_path / "bare"), "--hosts", "2", "--days", "9",
              "--metrics", "cpu_usage_percent,load1", "--seed", "3", "--no-gone",
                  "--no-capacity-fill"])
    assert "points of 4 series" in bare.output


@pytest.mark.integration
def test_replay_sends_every_point_of_a_csv_in_order(stack: Stack, tmp_path: Path):
    csv = tmp_path / "cpu.csv"
    rows = [f"2024-05-01 12:{m:02d}:00,{m}.5" for m in range(60)]
    csv.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    collector = TopicCollector(stack.broker, [stack.input_topic])
    try:
        result = CliRunner().invoke(
            app, ["replay", str(csv), "--topic", stack.input_topic, "--bootstrap", stack.broker,
                  "--batch", "25"],
        )
        assert result.exit_code == 0, result.output
        messages = wait_until(
            lambda: len(collector.values(stack.input_topic)) >= 3
            and collector.values(stack.input_topic),
            30, "replayed messages",
        )
    finally:
        collector.close()
    points = [p for m in messages for p in orjson.loads(m)]
    assert len(points) == 60 and len(messages) == 3
    assert [p["value"] for p in points] == [m + 0.5 for m in range(60)]
    stamps = [p["timestamp"] for p in points]
    assert stamps == sorted(stamps) and stamps[1] - stamps[0] == 60_000
    assert {p["name"] for p in points} == {"cpu"}


@pytest.mark.integration
@pytest.mark.skipif(not NAB.exists(), reason="needs ../shared/data/nab-dev")
def test_replay_reads_a_nab_folder(stack: Stack):
    result = CliRunner().invoke(
        app, ["replay", str(NAB), "--topic", stack.input_topic, "--bootstrap", stack.broker,
              "--batch", "500"],
    )
    assert result.exit_code == 0, result.output
    assert "of 28 series" in result.output


@pytest.mark.integration
def test_demo_runs_end_to_end_on_embedded_services(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    done = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "demo", "--hosts", "1", "--days", "12"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "started embedded Kafka-protocol broker" in out
    assert "started embedded Redis" in out
    for line in ("found:", "missed:", "false alarms:", "kind          labelled"):
        assert line in out, out
    found = int(out.split("found:")[1].split("of")[0])
    assert found >= 1
    assert "stopped host gone-01: 7 of 7 series noticed (no_data)" in out, out
    assert "other no_data incidents: 0" in out, out
    assert "stopped series: WARNING gone-01: 7 series stopped reporting" in out, out


@pytest.mark.integration
def test_silence_add_list_expire_round_trip(redis_url: str, monkeypatch, tmp_path: Path):
    import uuid

    import redis as redis_sync

    prefix = f"vigil-test-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("VIGIL_REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_REDIS_PREFIX", prefix)
    monkeypatch.chdir(tmp_path)  # no vigil.yaml here
    runner = CliRunner()
    try:
        added = runner.invoke(app, ["silence", "add", 'host="db-1"', '__name__=~"disk_.*"',
                                    "--for", "2h", "--comment", "disk swap", "--author", "ann"])
        assert added.exit_code == 0, added.output
        silence_id = added.output.split()[0]
        listed = runner.invoke(app, ["silence", "list"])
        assert f"{silence_id}  active" in listed.output
        assert 'host="db-1", __name__=~"disk_.*"' in listed.output
        assert "(ann: disk swap)" in listed.output
        expired = runner.invoke(app, ["silence", "expire", silence_id])
        assert expired.exit_code == 0 and f"expired {silence_id}" in expired.output
        assert runner.invoke(app, ["silence", "list"]).output.strip() == "no silences"
        assert f"{silence_id}  expired" in runner.invoke(app, ["silence", "list", "--all"]).output
        missing = runner.invoke(app, ["silence", "expire", "nope"])
        assert missing.exit_code == 1
        bad = runner.invoke(app, ["silence", "add", "host~db", "--for", "1h"])
        assert bad.exit_code != 0 and "not a matcher" in bad.output
        bad = runner.invoke(app, ["silence", "add", 'host="a"', "--for", "soon"])
        assert bad.exit_code != 0 and "not a duration" in bad.output
    finally:
        client = redis_sync.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
