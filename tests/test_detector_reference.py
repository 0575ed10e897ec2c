"""The compiled detector against the frozen numpy one it replaced (``bench/reference_online.py``,
commit 3b7ed60): the same steps, incidents and scores on generated telemetry.

``python -m bench.compare_detector`` runs the same comparison on nab-dev, cmd-dev and a
generated month.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import reference_online
from bench.compare_detector import (
    EXACT_FIELDS,
    TOLERANCE,
    compare,
    daily_batches,
    run_dataset,
    whole_batches,
)
from vigil.detectors import online
from vigil.lab.datasets import Dataset
from vigil.lab.synthetic import generate_telemetry

START_MS = 1_700_438_400_000  # Monday 2023-11-20 00:00 UTC


@pytest.fixture(scope="module")
def telemetry() -> Dataset:
    """Four days of one host's metrics, each series with a spike, a two-hour level shift and
    an hour of flatline added (besides the generator's own anomalies)."""
    t = generate_telemetry(hosts=1, days=4, start_ms=START_MS, seed=3, anomalies_per_series=4)
    for k, s in enumerate(t.series.values()):
        day = len(s.values) // 4
        sd = float(np.std(np.diff(s.values))) or 1.0
        at = 2 * day + 60 * k
        s.values[at] += 25 * sd
        s.values[at + 600 : at + 720] += 10 * sd
        s.values[at + 1000 : at + 1060] = s.values[at + 1000]
    return Dataset(series=dict(t.series), labels=[], source="synthetic")


@pytest.mark.parametrize("batches", [whole_batches, daily_batches])
def test_same_detections_as_the_numpy_reference(telemetry: Dataset, batches):
    ref = run_dataset(reference_online, telemetry, batches)
    new = run_dataset(online, telemetry, batches)

    diffs = compare(ref, new)
    assert {f: diffs[f] for f in EXACT_FIELDS} == dict.fromkeys(EXACT_FIELDS, 0.0)
    told = diffs.pop("distinct_anomaly_updates")  # issue 16's updates, set aside
    assert {f: v for f, v in diffs.items() if f not in EXACT_FIELDS and v > TOLERANCE} == {}
    assert told < np.count_nonzero(new["event"] == 1)
    # Something to compare: incidents open, and several kinds of anomaly fire.
    assert np.count_nonzero(new["event"] == 1) >= 3
    assert len(np.unique(new["anomaly_type"][new["anomaly_type"] > 0])) >= 3


def test_the_kernels_gammainc_is_scipys():
    from numba import njit
    from scipy.special import gammainc

    from vigil.detectors.kernel import GAMMAINC_ADDRESS, call_double_double

    @njit
    def each(a, b, address):
        return [call_double_double(address, a[i], b[i]) for i in range(len(a))]

    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 200.0, 2_000), rng.uniform(1e-6, 50.0, 2_000)
    assert np.array_equal(np.array(each(a, b, GAMMAINC_ADDRESS)), gammainc(a, b))


def test_the_kernels_t_and_gaussian_quantile_are_scipys():
    from numba import njit
    from scipy.special import ndtri, stdtr

    from vigil.detectors.kernel import NDTRI_ADDRESS, STDTR_ADDRESS, call_double, call_double_double

    @njit
    def each(df, t, p, a_t, a_q):
        return ([call_double_double(a_t, df[i], t[i]) for i in range(len(t))],
                [call_double(a_q, p[i]) for i in range(len(p))])

    rng = np.random.default_rng(1)
    df, t, p = rng.uniform(1, 60, 500), rng.uniform(-40, 40, 500), rng.uniform(1e-300, 1, 500)
    tails, quantiles = each(df, t, p, STDTR_ADDRESS, NDTRI_ADDRESS)
    assert np.array_equal(np.array(tails), stdtr(df, t))
    assert np.array_equal(np.array(quantiles), ndtri(p))
