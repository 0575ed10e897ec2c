"""The global LSTM: training, scoring, files, the residual ring and its use in the pipeline."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import redis.asyncio as aioredis

from vigil.detectors.lstm import (
    LstmIncidents,
    ModelFileError,
    ResidualRing,
    WindowLSTM,
    sliding_windows,
)
from vigil.lab.datasets import AnomalyLabel, Dataset, SeriesData
from vigil.lab.lstm_training import series_residuals, train_on_dataset
from vigil.lab.synthetic import generate_telemetry
from vigil.sinks import metrics
from vigil.streams.lstm_scorer import LstmScorer
from vigil.streams.pipeline import DetectionPipeline
from vigil.streams.state import RedisStateStore

SMALL = {"window": 32, "hidden": 16, "layers": 1, "epochs": 4, "lr": 5e-3, "device": "cpu"}


@pytest.fixture(scope="module")
def telemetry():
    return generate_telemetry(
        hosts=1, metrics=["cpu_usage_percent", "load1", "http_latency_ms"], days=4, seed=3,
        anomalies_per_series=2,
    )


@pytest.fixture(scope="module")
def trained(telemetry):
    dataset = Dataset(dict(telemetry.series), list(telemetry.labels), "synthetic")
    model = WindowLSTM(seed=1, **SMALL)
    summary = train_on_dataset(dataset, 60, model, max_windows=4_000)
    return model, summary


def test_training_on_generated_data_reduces_the_validation_loss(trained):
    model, summary = trained
    assert model.val_loss_[-1] < 0.9 * model.val_loss_[0]
    assert model.loss_[-1] < model.loss_[0]
    assert summary["windows_used"] == 4_000 < summary["windows_available"]
    assert summary["normal_steps"] < summary["steps"]


def test_the_trained_model_ranks_a_planted_anomaly_above_normal_windows(trained, telemetry):
    model, _ = trained
    sid = next(iter(telemetry.series))
    s = telemetry.series[sid]
    seen = series_residuals([(s.values, s.ts_ms)], 60)[0]
    normal = sliding_windows(seen.residual, model.window)[-2_000:]
    planted = normal[::100].copy()
    # A burst of oscillation in the newest steps: ordinary size, abnormal shape.
    planted[:, -8:] = 3.0 * np.array([1, -1] * 4)
    normal_scores = model.score_windows(normal)
    planted_scores = model.score_windows(planted)
    assert np.median(planted_scores) > np.quantile(normal_scores, 0.99)


@pytest.mark.parametrize("kind", ["forecaster", "autoencoder"])
def test_batch_scoring_equals_one_by_one(kind):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 24)).astype(np.float32)
    model = WindowLSTM(**{**SMALL, "window": 24, "epochs": 1, "kind": kind}).fit_windows(X)
    batched = model.score_windows(X, batch=128)
    single = np.array([model.score_windows(X[i:i + 1], batch=1)[0] for i in range(len(X))])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_training_is_deterministic_with_a_seed():
    X = np.random.default_rng(0).normal(size=(200, 16))
    a = WindowLSTM(**{**SMALL, "window": 16, "epochs": 2}, seed=7).fit_windows(X)
    b = WindowLSTM(**{**SMALL, "window": 16, "epochs": 2}, seed=7).fit_windows(X)
    c = WindowLSTM(**{**SMALL, "window": 16, "epochs": 2}, seed=8).fit_windows(X)
    assert a.loss_ == b.loss_ and a.val_loss_ == b.val_loss_
    assert a.loss_ != c.loss_
    np.testing.assert_array_equal(a.score_windows(X), b.score_windows(X))


def test_a_saved_model_scores_the_same_and_keeps_its_metadata(trained, tmp_path):
    model, summary = trained
    path = model.save(tmp_path / "m.pt", {"data": summary})
    loaded = WindowLSTM.load(path, "cpu")
    X = np.random.default_rng(1).normal(size=(50, model.window))
    np.testing.assert_allclose(loaded.score_windows(X), model.score_windows(X), atol=1e-6)
    assert loaded.metadata_["data"]["windows_used"] == 4_000
    assert (loaded.window, loaded.kind, loaded.val_loss_) == (32, "autoencoder", model.val_loss_)


def test_unusable_model_files_raise_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        WindowLSTM.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a vigil LSTM model file"):
        WindowLSTM.load(tmp_path / "junk.pt")
    import torch

    torch.save({"format": "vigil-lstm", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="format version 99"):
        WindowLSTM.load(tmp_path / "future.pt")


def test_ring_windows_match_sliding_windows_whatever_the_batches():
    rng = np.random.default_rng(2)
    series = {s: rng.normal(size=n) for s, n in (("a", 40), ("b", 7), ("c", 25))}
    ring = ResidualRing(window=6)
    got: dict[str, list] = {s: [] for s in series}
    done = dict.fromkeys(series, 0)
    while any(done[s] < len(v) for s, v in series.items()):
        touched, index, r = [], [], []
        for s, v in series.items():
            take = int(rng.integers(0, 5))
            part = v[done[s]:done[s] + take]
            if len(part):
                index += [len(touched)] * len(part)
                touched.append(s)
                r.append(part)
                done[s] += len(part)
        if not touched:
            continue
        out = ring.windows(touched, np.array(index), np.concatenate(r))
        for pos, w in zip(out.positions, out.windows, strict=True):
            got[touched[index[pos]]].append(w)
    for s, v in series.items():
        expected = sliding_windows(v, 6)
        assert np.array_equal(np.array(got[s]).reshape(-1, 6), expected)


def test_lstm_incidents_open_only_where_the_seasonal_detector_has_none():
    inc = LstmIncidents(z_open=6, z_close=3, z_critical=12, resolve_steps=2)
    z = np.array([7.0, 7.0, 13.0, 1.0, 1.0])
    seasonal = np.array([5, -1, -1, -1, -1])  # a seasonal incident is open at step 0
    assert inc.step(["a"], np.zeros(5, int), np.arange(5), z, seasonal) == [
        (1, 1, 1), (2, 2, 1), (4, 3, 1)
    ]
    assert inc.open == {}


# ------------------------------------------------------------------ the worker's scorer


def _points(telemetry, days_from: float = 0.0):
    series, ts, values = [], [], []
    for sid, s in telemetry.series.items():
        keep = s.ts_ms >= s.ts_ms[0] + days_from * 86_400_000
        series += [sid] * int(keep.sum())
        ts.append(s.ts_ms[keep])
        values.append(s.values[keep])
    return series, np.concatenate(ts), np.concatenate(values)


def test_scorer_without_a_model_then_with_one_then_a_corrupt_one(
    trained, telemetry, tmp_path, redis_url, caplog
):
    model, summary = trained
    path = tmp_path / "lstm.pt"
    caplog.set_level(logging.INFO, logger="vigil.lstm")
    series, ts, values = _points(telemetry)
    order = np.argsort(ts, kind="stable")
    chunks = np.array_split(order, 6)

    async def run():
        client = aioredis.from_url(redis_url)
        try:
            store = RedisStateStore(client, f"vigil-test-lstm-{tmp_path.name}:")
            scorer = LstmScorer(path, device="cpu", batch=64)
            pipeline = DetectionPipeline(store, lstm=scorer)
            out = []
            for k, chunk in enumerate(chunks):
                if k == 2:
                    model.save(path, {"data": summary})  # the file appears later
                if k == 4:
                    path.write_bytes(b"\x00garbage")  # and is then broken
                changed = await scorer.refresh()
                loaded = metrics.LSTM_MODEL_LOADED._value.get()
                batch = await pipeline.process([series[i] for i in chunk], ts[chunk],
                                               values[chunk])
                await pipeline.save(batch)
                out.append((changed, loaded, scorer.loaded, batch))
            keys = [k async for k in client.scan_iter(f"vigil-test-lstm-{tmp_path.name}:*")]
            if keys:
                await client.delete(*keys)
            return out
        finally:
            await client.aclose()

    windows_before = metrics.LSTM_WINDOWS._value.get()
    out = asyncio.run(run())
    assert [(c, g, m) for c, g, m, _ in out] == [
        (False, 0, False), (False, 0, False),  # no model: the seasonal detector alone
        (True, 1, True), (False, 1, True),  # picked up when it appears
        (False, 1, True), (False, 1, True),  # corrupt: error logged, previous model kept
    ]
    assert "no LSTM model file at" in caplog.text
    assert "LSTM model loaded from" in caplog.text
    assert "LSTM model not loaded" in caplog.text and "keeping the previous model" in caplog.text
    assert metrics.LSTM_WINDOWS._value.get() > windows_before
    # Every point was processed throughout, with or without the model.
    assert sum(b.points for *_, b in out) == len(series)
    assert all(b.steps > 0 for *_, b in out)


def test_a_corrupt_model_file_at_start_leaves_the_seasonal_detector_alone(tmp_path, caplog):
    path = tmp_path / "lstm.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    caplog.set_level(logging.INFO, logger="vigil.lstm")
    scorer = LstmScorer(path, device="cpu")
    assert asyncio.run(scorer.refresh()) is False
    assert not scorer.loaded and metrics.LSTM_MODEL_LOADED._value.get() == 0
    assert "scoring with the seasonal detector alone" in caplog.text


def test_the_trained_model_scores_a_planted_spike_far_above_ordinary_steps(trained):
    """What training learns, with a wide margin (over training seeds 1–3: the spike scored
    18–23, the median step 1.2–1.5); the events that name the LSTM are tested below with a
    model of known weights."""
    model, _ = trained
    t = 1_700_006_400_000 + 60_000 * np.arange(400)
    y = 50 + np.random.default_rng(4).normal(size=400)
    y[300] = 90.0
    labels: list[AnomalyLabel] = []
    ds = Dataset({"x": SeriesData("x", {}, t, y)}, labels, "csv")
    seen = series_residuals([(ds.series["x"].values, ds.series["x"].ts_ms)], 60)[0]
    z = model.score_series(seen.residual)
    assert z[300] > 6 and np.nanmedian(z) < 3


def test_lstm_bench_figures_print_as_name_number_unit():
    from bench.lstm import lstm_figures
    from bench.report import FIGURE_LINE

    figures = list(lstm_figures(batches=(8, 16), windows=(8,), models=("default",),
                                device="cpu", min_seconds=0.0, min_passes=1))
    names = [f.name for f in figures]
    assert names == [
        "lstm_default_w8_b8_windows_per_s", "lstm_default_w8_b8_batch_ms",
        "lstm_default_w8_b16_windows_per_s", "lstm_default_w8_b16_batch_ms",
    ]
    assert all(FIGURE_LINE.match(f.line()) and f.value > 0 for f in figures)


def _model_scoring_the_newest_residuals(focus: int = 4, scale: float = 0.5) -> WindowLSTM:
    """A model with known weights, not learned ones: its output head is zero, so it
    reconstructs every window as zeros, a window's error is the mean square of its newest
    ``focus`` residuals, and its score is their root mean square / ``scale``. What the
    pipeline does with LSTM scores is then tested apart from what a training run reaches."""
    import torch

    model = WindowLSTM(window=32, hidden=4, focus=focus, epochs=0, device="cpu")
    model.fit_windows(np.zeros((10, 32)))  # no epochs: builds the network, learns nothing
    with torch.no_grad():
        model.net_.head.weight.zero_()
        model.net_.head.bias.zero_()
    model.scale_ = scale
    return model


def test_the_known_weights_model_scores_the_newest_residuals():
    model = _model_scoring_the_newest_residuals(focus=4, scale=0.5)
    X = np.random.default_rng(0).normal(size=(50, 32))
    X[0, -4:] = 12.0  # clipped to 10
    expected = np.sqrt((np.clip(X[:, -4:], -10, 10) ** 2).mean(axis=1)) / 0.5
    np.testing.assert_allclose(model.score_windows(X), expected, rtol=1e-5)


def test_pipeline_events_name_the_lstm_where_it_contributes_and_where_it_alone_opens(
    tmp_path, redis_url
):
    """The LSTM joins the seasonal detector's event at a spike both see, and opens an
    incident of its own at an oscillation the seasonal detector lets pass.

    The model's score is twice the root mean square of the newest 4 residuals (known weights,
    so the test does not depend on what training learns); the LSTM threshold is 5: a planted
    spike (residual 10, clipped) scores 10, the planted oscillation about 6, and no window of
    the ordinary noise reaches 4.
    """
    path = _model_scoring_the_newest_residuals(focus=4, scale=0.5).save(tmp_path / "lstm.pt")
    t = 1_700_006_400_000 + 60_000 * np.arange(600)
    rng = np.random.default_rng(4)
    y = 50 + rng.normal(size=600)
    y[400] = 90.0  # a spike: the seasonal detector opens; the LSTM agrees
    y[500:508] += 2.5 * np.array([1, -1] * 4)  # an oscillation under the seasonal threshold

    async def run():
        client = aioredis.from_url(redis_url)
        prefix = f"vigil-test-lstm-events-{tmp_path.name}:"
        try:
            scorer = LstmScorer(path, device="cpu", z_alert=5.0)
            assert await scorer.refresh()
            pipeline = DetectionPipeline(RedisStateStore(client, prefix), lstm=scorer)
            batch = await pipeline.process(["x"] * 600, t, y)
            keys = [k async for k in client.scan_iter(f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            return batch.events
        finally:
            await client.aclose()

    events = asyncio.run(run())
    spike = [e for e in events if e.ts_ms == t[400] and e.kind == "open"]
    assert spike and spike[0].detectors == ["seasonal", "lstm"]
    own = [e for e in events if e.detectors == ["lstm"]]
    assert own and own[0].kind == "open" and own[0].anomaly_type == "collective:lstm"
    assert t[500] <= own[0].ts_ms < t[508]  # at the oscillation, and nowhere before it
    assert all(e.incident_id != spike[0].incident_id for e in own)
    assert "LSTM" in own[0].reason
