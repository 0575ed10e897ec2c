"""A real ``vigil worker`` with the LSTM scorer: no model file, one that appears later, one
that is corrupt — the worker keeps detecting throughout and says what it runs on."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import Stack, wait_until
from vigil.detectors.lstm import WindowLSTM
from vigil.devtools.replay import replay
from vigil.lab.synthetic import generate_telemetry

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def _metric(worker, name: str) -> float:
    port = worker.env["VIGIL_WEB_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def _days(telemetry, first: float, last: float):
    """A copy of the telemetry with the points of days [first, last) only."""
    from copy import copy

    part = copy(telemetry)
    t0 = min(int(s.ts_ms[0]) for s in telemetry.series.values())
    part.series = {}
    for sid, s in telemetry.series.items():
        keep = (s.ts_ms >= t0 + first * DAY_MS) & (s.ts_ms < t0 + last * DAY_MS)
        part.series[sid] = type(s)(s.name, s.labels, s.ts_ms[keep], s.values[keep])
    return part


def test_worker_without_then_with_then_with_a_corrupt_model_file(stack: Stack, tmp_path):
    now = time.time_ns() // 1_000_000
    start = now - 3 * DAY_MS
    start -= start % 60_000
    telemetry = generate_telemetry(hosts=1, metrics=["cpu_usage_percent", "load1"], days=3,
                                   seed=5, start_ms=start)
    X = np.random.default_rng(0).normal(size=(400, 16))
    model = WindowLSTM(window=16, hidden=8, layers=1, epochs=1, device="cpu").fit_windows(X)
    path = tmp_path / "lstm.pt"
    worker = stack.start_worker(VIGIL_LSTM_MODEL=str(path), VIGIL_LSTM_RELOAD_S="0.5",
                                VIGIL_LSTM_DEVICE="cpu",
                                F_DATADIR=str(tmp_path / "{conf.name}-data"))
    sent = 0

    def feed(first: float, last: float) -> None:
        nonlocal sent
        sent += replay(_days(telemetry, first, last), stack.broker, stack.input_topic, batch=100)
        stack.wait_processed(sent, worker)

    # No model file: the seasonal detector alone, said in the log and in /metrics.
    feed(0, 1)
    assert "no LSTM model file at" in worker.log_tail(20_000)
    assert _metric(worker, "vigil_lstm_model_loaded") == 0
    assert _metric(worker, "vigil_lstm_windows_scored_total") == 0

    # The file appears: picked up, and the next points are scored by the LSTM too.
    model.save(path, {"data": {"summary": "test windows"}})
    wait_until(lambda: _metric(worker, "vigil_lstm_model_loaded") == 1, 60, "the model loaded")
    assert "LSTM model loaded from" in worker.log_tail(20_000)
    feed(1, 2)
    scored = _metric(worker, "vigil_lstm_windows_scored_total")
    assert scored > 0

    # A corrupt file: a clear error, the previous model is kept, detection goes on.
    path.write_bytes(b"this is not a model")
    wait_until(lambda: "LSTM model not loaded" in worker.log_tail(20_000), 60, "the error")
    assert "is not a vigil LSTM model file" in worker.log_tail(20_000)
    assert _metric(worker, "vigil_lstm_model_errors_total") == 1
    feed(2, 3)
    assert worker.alive()
    assert _metric(worker, "vigil_lstm_model_loaded") == 1
    assert _metric(worker, "vigil_lstm_windows_scored_total") > scored
