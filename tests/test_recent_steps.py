"""The worker's in-memory recent steps (alert chart context) against a plain reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from vigil.streams.pipeline import RecentSteps


def _batch(rows: list[int], ts: list[int], rng) -> SimpleNamespace:
    """Results of one batch, ordered by series row then time as the detector gives them."""
    order = np.lexsort((ts, rows))
    index, ts_ms = np.asarray(rows)[order], np.asarray(ts, dtype=np.int64)[order]
    n = len(index)
    value = rng.normal(size=n)
    return SimpleNamespace(
        steps=SimpleNamespace(index=index, ts_ms=ts_ms, value=value),
        expected=value * 0.5, lower=value - 1, upper=value + 1, z=np.abs(value),
    )


def test_rings_match_a_plain_history_over_many_batches():
    rng = np.random.default_rng(4)
    names = [f"s{i}" for i in range(7)]
    ring = RecentSteps(steps=5)
    history: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    clock = dict.fromkeys(names, 0)
    for _ in range(40):
        touched = list(rng.choice(names, size=rng.integers(1, 6), replace=False))
        rows, ts = [], []
        for row, name in enumerate(touched):
            for _ in range(int(rng.integers(1, 9))):  # sometimes more steps than the ring
                clock[name] += 60_000
                rows.append(row)
                ts.append(clock[name])
        batch = _batch(rows, ts, rng)
        # An event inside this batch sees earlier batches plus this batch up to itself.
        i = int(rng.integers(0, len(rows)))
        name = touched[batch.steps.index[i]]
        upto = [t for t, _ in history[name]] + [
            int(t) for r, t in zip(batch.steps.index, batch.steps.ts_ms, strict=True)
            if touched[r] == name and t <= batch.steps.ts_ms[i]
        ]
        assert ring.context(name, batch, i)["ts_ms"] == upto[-5:]
        ring.record(touched, batch)
        for r, t, v in zip(batch.steps.index, batch.steps.ts_ms, batch.steps.value, strict=True):
            history[touched[r]].append((int(t), float(v)))
    for name in names:
        expected = history[name][-5:]
        got = ring.context(name)
        if not expected:
            assert got is None
            continue
        assert got["ts_ms"] == [t for t, _ in expected]
        np.testing.assert_allclose(got["value"], [v for _, v in expected], rtol=1e-5)
        assert len({len(column) for column in got.values()}) == 1


def test_zero_steps_keeps_nothing():
    ring = RecentSteps(steps=0)
    batch = _batch([0, 0], [60_000, 120_000], np.random.default_rng(0))
    ring.record(["a"], batch)
    assert ring.context("a") is None and ring.context("a", batch, 1) is None
