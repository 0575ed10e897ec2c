"""The worker's in-memory recent steps (alert chart context) against a plain reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from vigil.streams.pipeline import RecentSteps


def _batch(rows: list[int], ts: list[int], rng) -> SimpleNamespace:
    """Results of one batch, ordered by series row then time as the detector gives them
    (its band symmetric around the expected value, as the detector's is)."""
    order = np.lexsort((ts, rows))
    index, ts_ms = np.asarray(rows)[order], np.asarray(ts, dtype=np.int64)[order]
    n = len(index)
    value = rng.normal(size=n)
    return SimpleNamespace(
        steps=SimpleNamespace(index=index, ts_ms=ts_ms, value=value),
        expected=value * 0.5, lower=value * 0.5 - 1, upper=value * 0.5 + 1, z=np.abs(value),
    )


def test_rings_match_a_plain_history_over_many_batches():
    rng = np.random.default_rng(4)
    names = [f"s{i}" for i in range(7)]
    ring = RecentSteps(steps=5)
    history: dict[str, list[tuple[int, float, float, float, float]]] = {n: [] for n in names}
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
        upto = [t for t, *_ in history[name]] + [
            int(t) for r, t in zip(batch.steps.index, batch.steps.ts_ms, strict=True)
            if touched[r] == name and t <= batch.steps.ts_ms[i]
        ]
        assert ring.context(name, batch, i)["ts_ms"] == upto[-5:]
        ring.record(touched, batch)
        columns = (batch.steps.index, batch.steps.ts_ms, batch.steps.value, batch.lower,
                   batch.upper, batch.z)
        for r, t, v, lo, hi, z in zip(*columns, strict=True):
            history[touched[r]].append((int(t), float(v), float(lo), float(hi), float(z)))
    for name in names:
        expected = history[name][-5:]
        got = ring.context(name)
        if not expected:
            assert got is None
            continue
        assert got["ts_ms"] == [row[0] for row in expected]
        # Stored as float32 (value, expected, band) and float16 (z): charts, not arithmetic.
        for k, field in enumerate(("value", "lower", "upper"), start=1):
            np.testing.assert_allclose(got[field], [row[k] for row in expected], rtol=1e-5,
                                       atol=1e-6)
        np.testing.assert_allclose(got["z"], [row[4] for row in expected], rtol=1e-3)
        assert len({len(column) for column in got.values()}) == 1


def test_zero_steps_keeps_nothing():
    ring = RecentSteps(steps=0)
    batch = _batch([0, 0], [60_000, 120_000], np.random.default_rng(0))
    ring.record(["a"], batch)
    assert ring.context("a") is None and ring.context("a", batch, 1) is None


def test_a_step_reads_the_same_from_its_batch_and_from_the_ring():
    """An event's chart is the same whether its steps were still in the batch or already in
    the rings (a restarted worker splits batches differently)."""
    rng = np.random.default_rng(9)
    batch = _batch([0] * 6, [60_000 * k for k in range(1, 7)], rng)
    batch.z = batch.z * 1e5  # beyond float16: clipped the same way on both paths
    ring = RecentSteps(steps=10)
    from_batch = ring.context("a", batch, 5)
    ring.record(["a"], batch)
    assert ring.context("a") == from_batch
    assert max(from_batch["z"]) == 60_000.0


def test_the_rings_take_eighteen_bytes_a_step():
    ring = RecentSteps(steps=120)
    ring.record([f"s{i}" for i in range(3)],
                _batch([0, 1, 2], [60_000] * 3, np.random.default_rng(1)))
    per_series = sum(a.nbytes for a in ring._rings()[:5]) / ring.capacity
    assert per_series == 120 * RecentSteps.STEP_BYTES == 2160
