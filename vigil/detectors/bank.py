"""Series states: the record layout (:data:`STATE_DTYPE`) and :class:`StateBank`.

A state is one fixed-size record per series (about 1.8 KB): the resampling bucket and
watermark, baseline, window statistics, incident, and the seasonal profiles as float32. It
is stored as those record bytes (Redis) and worked on as the same records: the compiled
step (:mod:`vigil.detectors.kernel`) updates one series' record at a time, so a series'
fields sit together in a few cache lines.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "ADDED_IN_V3",
    "ADDED_IN_V4",
    "ADDED_IN_V5",
    "ADDED_IN_V6",
    "ADDED_IN_V7",
    "DAILY_SLOTS",
    "RARITY_LEVELS",
    "STATE_DTYPE",
    "StateBank",
    "TAUGHT_SLOTS",
    "WEEKLY_SLOTS",
    "new_state_bank",
]

DAILY_SLOTS = 96  # 15-minute slots
WEEKLY_SLOTS = 168  # hourly slots, Monday 00:00 UTC first
RARITY_LEVELS = 24  # score levels z_open·√2^k whose recent up-crossings are counted
TAUGHT_SLOTS = 4  # patterns operators marked "not an anomaly" (vigil.detectors.teaching)

STATE_DTYPE = np.dtype(
    [
        # resampling (see resample.py)
        ("watermark_ms", "i8"),
        ("bucket_ms", "i8"),
        ("bucket_sum", "f8"),
        ("bucket_count", "i8"),
        ("last_step_ms", "i8"),
        ("last_value", "f8"),
        # baseline
        ("n_steps", "i8"),
        ("level", "f8"),
        ("trend", "f8"),
        ("slow_level", "f8"),
        ("mad", "f8"),
        ("var_none", "f8"),
        ("var_daily", "f8"),
        ("var_weekly", "f8"),
        ("daily_on", "u1"),
        ("weekly_on", "u1"),
        # window statistics
        ("prev_value", "f8"),
        ("level_short", "f8"),
        ("level_spread", "f8"),
        ("var_short", "f8"),
        ("var_center", "f8"),
        ("var_spread", "f8"),
        ("tv_short", "f8"),
        ("tv_long", "f8"),
        ("tv_spread", "f8"),
        ("zero_rate", "f8"),
        ("flat_run", "i4"),
        ("dy_all", "f8"),
        ("z_peak", "f4"),
        ("rare_ts_ms", "i8"),
        ("exceed", "f4", (RARITY_LEVELS,)),
        ("z_hour_max", "f4", (24,)),
        ("z_hour_count", "f4", (24,)),
        ("burst_short", "f4"),
        ("burst_mean", "f4"),
        ("drift_short", "f8"),
        ("drift_spread", "f8"),
        ("drift_armed", "u1"),
        # incident
        ("incident_open", "u1"),
        ("incident_severity", "u1"),
        ("incident_calm", "i4"),
        ("incident_start_ms", "i8"),
        ("incident_peak", "f4"),
        ("incident_family", "u1"),  # FAMILY of the anomaly last told (kernel.py)
        ("incident_direction", "i1"),  # and its direction (+1 up, −1 down, 0 none)
        # what operators taught ("not an anomaly"): a pattern per slot, see teaching.py
        ("taught_family", "u1", (TAUGHT_SLOTS,)),  # FAMILY (kernel.py); 0 = free slot
        ("taught_direction", "i1", (TAUGHT_SLOTS,)),  # +1 up, −1 down, 0 either
        ("taught_z", "f4", (TAUGHT_SLOTS,)),  # the marked incident's peak score
        ("taught_minute", "i2", (TAUGHT_SLOTS,)),  # minute of the day (UTC), −1 any time
        ("taught_until_ms", "i8", (TAUGHT_SLOTS,)),  # forgotten from this data time on
        ("quiet_calm", "i4"),  # a withheld excursion: calm steps left until it is over
        ("quiet_z", "f4"),  # and the size of the pattern that withheld it
        # the capacity forecast's trend (kernel.learn_trend, forecast.py): an EW linear fit
        # of the deseasonalised value against time in hours (weights, means, co-moments)
        ("fit_weight", "f8"),  # Σw
        ("fit_weight2", "f8"),  # Σw² (the fit's effective sample size is (Σw)²/Σw²)
        ("fit_t_mean", "f8"),  # EW mean time, hours since the epoch
        ("fit_y_mean", "f8"),  # EW mean deseasonalised value
        ("fit_tt", "f8"),  # Σw(t − t̄)²
        ("fit_ty", "f8"),  # Σw(t − t̄)(y − ȳ)
        ("fit_yy", "f8"),  # Σw(y − ȳ)²
        # the same over a 4× longer half-life: the trend must hold over a day, not only hours
        ("fit_long_weight", "f8"),
        ("fit_long_weight2", "f8"),
        ("fit_long_t_mean", "f8"),
        ("fit_long_y_mean", "f8"),
        ("fit_long_tt", "f8"),
        ("fit_long_ty", "f8"),
        ("fit_long_yy", "f8"),
        ("fit_season", "u1"),  # the seasonality removed (1 daily + 2 weekly); a switch resets
        ("forecast_severity", "u1"),  # the open forecast warning: 0 none, 1 warning, 2 critical
        ("forecast_start_ms", "i8"),  # and when it opened (−1 none)
        # seasonal profiles
        ("daily", "f4", (DAILY_SLOTS,)),
        ("weekly", "f4", (WEEKLY_SLOTS,)),
        ("weekly_hour_sum", "f4", (24,)),
        ("mad_hourly", "f4", (24,)),
    ]
)

#: Fields added in state format 3 (a format-2 record is the layout without them).
ADDED_IN_V3 = ("burst_short", "burst_mean")
#: Fields added in state format 4.
ADDED_IN_V4 = ("drift_short", "drift_spread", "drift_armed")
#: Fields added in state format 5.
ADDED_IN_V5 = ("incident_family", "incident_direction")
#: Fields added in state format 6 (operators' teaching).
ADDED_IN_V6 = ("taught_family", "taught_direction", "taught_z", "taught_minute",
               "taught_until_ms", "quiet_calm", "quiet_z")
#: Fields added in state format 7 (the capacity forecast's trend and warning).
ADDED_IN_V7 = ("fit_weight", "fit_weight2", "fit_t_mean", "fit_y_mean", "fit_tt", "fit_ty",
               "fit_yy", "fit_long_weight", "fit_long_weight2", "fit_long_t_mean",
               "fit_long_y_mean", "fit_long_tt", "fit_long_ty", "fit_long_yy", "fit_season",
               "forecast_severity", "forecast_start_ms")

# -1 = none yet
_UNSET = ("watermark_ms", "bucket_ms", "last_step_ms", "incident_start_ms", "rare_ts_ms",
          "forecast_start_ms")


class StateBank:
    """The states of ``n`` series: one contiguous array of :data:`STATE_DTYPE` records.

    ``bank["level"]`` is the level of every series (a strided view you may update in place);
    ``bank.records`` the records themselves, which the compiled step
    (:mod:`vigil.detectors.kernel`) updates one series at a time; ``bank.take(rows)`` /
    ``bank.put(rows, other)`` gather and scatter series; ``to_records`` / ``from_records``
    convert to and from the stored layout (the same records).

    >>> bank = new_state_bank(3)
    >>> bank["n_steps"][1] = 7
    >>> len(bank), bank.take([1])["n_steps"].tolist(), bank.to_records()[1]["n_steps"]
    (3, [7], np.int64(7))
    """

    __slots__ = ("records",)

    def __init__(self, records: np.ndarray) -> None:
        self.records = records

    @classmethod
    def empty(cls, n: int) -> StateBank:
        records = np.zeros(n, STATE_DTYPE)
        for name in _UNSET:
            records[name] = -1
        return cls(records)

    @classmethod
    def from_records(cls, records: np.ndarray) -> StateBank:
        """A bank owning a copy of the records (``records`` may be read-only or strided)."""
        return cls(np.array(records, dtype=STATE_DTYPE, order="C"))

    def to_records(self) -> np.ndarray:
        return self.records.copy()

    def tobytes(self) -> bytes:
        return self.records.tobytes()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.records[key]
        return self.records[key].copy()

    def __setitem__(self, key: str, value) -> None:
        self.records[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(STATE_DTYPE.names)

    def take(self, rows) -> StateBank:
        """A new bank with the given series (a copy)."""
        return StateBank(self.records[np.asarray(rows, np.int64)])

    def put(self, rows, other: StateBank) -> None:
        """Write ``other``'s series back at ``rows``."""
        self.records[np.asarray(rows, np.int64)] = other.records

    def prefix(self, k: int) -> StateBank:
        """The first ``k`` series as a view (no copy)."""
        return StateBank(self.records[:k])

    def copy(self) -> StateBank:
        return StateBank(self.records.copy())


def new_state_bank(n: int) -> StateBank:
    """``n`` fresh series states (nothing learned yet)."""
    return StateBank.empty(n)
