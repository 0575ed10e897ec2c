"""Cumulative counters as per-second rates, before detection.

A counter (collectd ``derive``/``counter``, a Prometheus ``counter`` or ``_total`` series, a
JSON point with ``"type": "counter"``, or a name matching ``VIGIL_RATE_METRICS``) grows
forever: detecting on its raw value is meaningless, its rate is what people watch.

Where: a rate needs the previous sample of the *same* series. The parse stage is stateless
and runs on whichever worker owns the input partition — an unkeyed producer spreads one
series over all of them — so the rate is computed after routing, in the detection stage,
where one worker owns each series. The previous ``(ts_ms, value)`` of each counter lives in
a bounded map in that worker's memory (16 bytes plus the id per counter), not in the
Redis state: after a restart or a rebalance a counter's first sample only primes the map
(one step without a rate), which costs far less than a Redis field per point.

Like Prometheus' ``rate()``, a decrease is a counter reset (a restarted process), never an
anomaly: that step gets no rate and the new value primes the next. A sample at or before
the previous one's time (a replay, a late point) is skipped. With an allowed lateness the
detection pipeline applies the rates after its hold-back, to the samples it releases in time
order (:class:`~vigil.streams.pipeline.DetectionPipeline`), so only samples later than the
lateness are skipped.

>>> rates = CounterRates(patterns=["*_bytes_total"])
>>> s, t, v, held = rates.apply(
...     ["rx_bytes_total", "rx_bytes_total", "load", "rx_bytes_total", "rx_bytes_total"],
...     np.array([0, 10_000, 10_000, 20_000, 30_000]), np.array([100., 600., 0.5, 50., 250.]))
>>> s, t.tolist(), v.tolist(), held
(['load', 'rx_bytes_total', 'rx_bytes_total'], [10000, 10000, 30000], [0.5, 50.0, 20.0], 2)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import numpy as np

from vigil.series import parse_series

__all__ = ["CounterRates"]


class CounterRates:
    """Turn the counter points of a batch into per-second rates (see the module docstring)."""

    def __init__(self, patterns: Sequence[str] = (), max_series: int = 500_000) -> None:
        self.patterns = tuple(patterns)
        self.max_series = max_series
        self._last: dict[str, tuple[int, float]] = {}
        self._by_name: dict[str, bool] = {}
        self.resets = 0

    def configured(self, series: str) -> bool:
        """Whether ``series``' metric name matches a ``VIGIL_RATE_METRICS`` pattern (cached)."""
        if not self.patterns:
            return False
        known = self._by_name.get(series)
        if known is None:
            name = parse_series(series)[0]
            known = any(fnmatch.fnmatchcase(name, p) for p in self.patterns)
            if len(self._by_name) >= self.max_series:
                self._by_name.clear()
            self._by_name[series] = known
        return known

    def apply(
        self,
        series: list[str],
        ts_ms: np.ndarray,
        values: np.ndarray,
        counters: Iterable[str] = (),
    ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
        """The batch with every counter point replaced by its rate, and how many points were
        held back (a counter's first sample, a reset, or a sample not after the previous).

        Gauges pass through untouched (in order, before the rates); a counter's points are
        taken in time order.
        """
        marked = set(counters)
        is_counter = [s in marked or self.configured(s) for s in series]
        if not any(is_counter):
            return series, ts_ms, values, 0
        flags = np.fromiter(is_counter, bool, len(series))
        gauge = np.flatnonzero(~flags)
        out_s = [series[i] for i in gauge]
        out_t, out_v = [ts_ms[gauge]], [values[gauge]]
        rate_s, rate_t, rate_v = self._rates(series, ts_ms, values, np.flatnonzero(flags))
        out_s += rate_s
        out_t.append(np.asarray(rate_t, np.int64))
        out_v.append(np.asarray(rate_v, np.float64))
        held = int(flags.sum()) - len(rate_s)
        return out_s, np.concatenate(out_t), np.concatenate(out_v), held

    def _rates(
        self, series: list[str], ts_ms: np.ndarray, values: np.ndarray, rows: np.ndarray
    ) -> tuple[list[str], list[int], list[float]]:
        order = rows[np.argsort(ts_ms[rows], kind="stable")]
        last = self._last
        if len(last) + len(order) > self.max_series:
            last.clear()  # bounded memory: every counter re-primes on its next sample
        out_s: list[str] = []
        out_t: list[int] = []
        out_v: list[float] = []
        for i in order.tolist():
            s, t, v = series[i], int(ts_ms[i]), float(values[i])
            previous = last.get(s)
            if previous is not None:
                pt, pv = previous
                if t <= pt:
                    continue  # a replayed or late sample: its step has passed
                if v >= pv:
                    out_s.append(s)
                    out_t.append(t)
                    out_v.append((v - pv) * 1000.0 / (t - pt))
                else:
                    self.resets += 1
            last[s] = (t, v)
        return out_s, out_t, out_v

    def forget(self) -> None:
        """Drop the previous samples (on rebalance: another worker may own the series)."""
        self._last.clear()
