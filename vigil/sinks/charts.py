"""The chart in every alert: the last hours of a series, its expected band, the anomaly marked.

Drawn with matplotlib's object-oriented API on the Agg canvas (no global pyplot state, safe
to call from a worker thread) into PNG bytes that email inlines and Telegram sends as a photo.
The data is the ``context`` an anomaly event carries (see the README's event schema).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context

import numpy as np

__all__ = [
    "chart_figure", "chart_process_pool", "exit_with_parent", "forecast_path", "render_chart",
    "warm_up",
]


def forecast_path(forecast: Mapping | None) -> dict[str, list[float]] | None:
    """What a capacity forecast (an event's ``forecast`` field, docs/forecasts.md) adds to its
    chart: ``ts_ms`` and ``value`` of the forecast line from the last fitted level to the
    limit, ``band_ts_ms`` / ``band_low`` / ``band_high`` — the times the limit is reached at
    the band's ends, drawn as a wedge — and the ``limit``. None when there is nothing to draw
    (no limit, or no time to it).

    >>> f = {"limit": 100.0, "level": 80.0, "origin_ms": 0, "eta_ms": 36_000_000,
    ...      "eta_low_ms": 18_000_000, "eta_high_ms": 72_000_000}
    >>> p = forecast_path(f)
    >>> p["ts_ms"], p["value"], p["limit"]
    ([0, 36000000], [80.0, 100.0], 100.0)
    >>> p["band_ts_ms"], p["band_low"], p["band_high"]
    ([0, 18000000, 72000000], [80.0, 100.0, 100.0], [80.0, 100.0, 100.0])
    >>> forecast_path({"limit": None}) is None
    True
    """
    if not forecast or forecast.get("limit") is None or forecast.get("eta_ms") is None:
        return None
    limit, level = float(forecast["limit"]), float(forecast["level"])
    origin, eta = int(forecast["origin_ms"]), int(forecast["eta_ms"])
    out: dict = {"ts_ms": [origin, eta], "value": [level, limit], "limit": limit}
    low, high = forecast.get("eta_low_ms"), forecast.get("eta_high_ms")
    if low is not None and high is not None:
        out["band_ts_ms"] = [origin, int(low), int(high)]
        out["band_low"] = [level, limit, limit]
        out["band_high"] = [level, limit, limit]
    return out


def render_chart(
    context: Mapping[str, Sequence[float]],
    title: str,
    event_ts_ms: int | None = None,
    z_marked: float = 6.0,
    size: tuple[float, float] = (8.0, 3.2),
    dpi: int = 100,
    forecast: Mapping | None = None,
) -> bytes:
    """PNG bytes of ``context`` (``ts_ms``, ``value``, ``expected``, ``lower``, ``upper``,
    ``z``): the value as a line, the expected value dashed, the band shaded, steps with
    ``z ≥ z_marked`` as red dots and the event's own step as a ring. With a capacity
    ``forecast`` (a forecast event's field), the forecast line runs on to the limit, the
    band's times to it as a shaded wedge, and the limit as a red line (:func:`forecast_path`).

    >>> ctx = {"ts_ms": [0, 60_000, 120_000], "value": [1.0, 1.1, 5.0],
    ...        "expected": [1.0, 1.0, 1.0], "lower": [0.5] * 3, "upper": [1.5] * 3,
    ...        "z": [0.0, 0.4, 16.0]}
    >>> render_chart(ctx, "cpu", event_ts_ms=120_000)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    fig = chart_figure(context, title, event_ts_ms, z_marked, size, dpi, forecast)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def chart_figure(
    context: Mapping[str, Sequence[float]],
    title: str,
    event_ts_ms: int | None = None,
    z_marked: float = 6.0,
    size: tuple[float, float] = (8.0, 3.2),
    dpi: int = 100,
    forecast: Mapping | None = None,
):
    """The matplotlib ``Figure`` :func:`render_chart` saves (its arguments)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    ts = np.asarray(context["ts_ms"], dtype=np.int64)
    times = np.array(
        [datetime.fromtimestamp(t / 1000, timezone.utc) for t in ts.tolist()], dtype=object
    )
    value = np.asarray(context["value"], dtype=float)
    expected = np.asarray(context.get("expected", []), dtype=float)
    lower = np.asarray(context.get("lower", []), dtype=float)
    upper = np.asarray(context.get("upper", []), dtype=float)
    z = np.asarray(context.get("z", []), dtype=float)

    # Fixed margins: a layout engine would draw the figure twice (half the render time).
    fig = Figure(figsize=size, dpi=dpi)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.17)
    ax = fig.add_subplot()
    if len(lower) == len(ts) and len(upper) == len(ts):
        ax.fill_between(times, lower, upper, color="#90caf9", alpha=0.45, linewidth=0,
                        label="expected band")
    if len(expected) == len(ts):
        ax.plot(times, expected, color="#1565c0", linewidth=1, linestyle="--", label="expected")
    ax.plot(times, value, color="#212121", linewidth=1.2, label="value")
    if len(z) == len(ts):
        marked = np.abs(z) >= z_marked
        if marked.any():
            ax.scatter(times[marked], value[marked], color="#d50000", s=18, zorder=3,
                       label="anomalous")
    path = forecast_path(forecast)
    if path is not None:
        _draw_forecast(ax, path)
    if event_ts_ms is not None:
        hit = np.flatnonzero(ts == event_ts_ms)
        if len(hit):
            i = int(hit[-1])
            ax.scatter([times[i]], [value[i]], s=120, facecolors="none", edgecolors="#d50000",
                       linewidths=1.8, zorder=4)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("UTC", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncols=4, frameon=False)
    return fig


def _draw_forecast(ax, path: Mapping) -> None:
    def when(stamps):
        return [datetime.fromtimestamp(t / 1000, timezone.utc) for t in stamps]

    if "band_ts_ms" in path:
        band = when(path["band_ts_ms"])
        # The wedge between the earliest and the latest time the limit is reached.
        ax.fill([band[0], band[1], band[2]], [path["band_low"][0], path["limit"], path["limit"]],
                color="#ffb74d", alpha=0.35, linewidth=0, label="time to limit (band)")
    ax.plot(when(path["ts_ms"]), path["value"], color="#e65100", linewidth=1.2, linestyle=":",
            label="forecast")
    ax.axhline(path["limit"], color="#d50000", linewidth=1, linestyle="-.", label="limit")


def warm_up() -> None:
    """Import matplotlib ahead of the first chart (about a second on a small machine)."""
    import matplotlib.dates  # noqa: F401
    import matplotlib.figure  # noqa: F401


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make a chart-drawing child process exit when the process that started it is gone.

    A ``ProcessPoolExecutor`` worker outlives a parent killed with SIGKILL (it waits on its
    task queue forever); this initializer watches the parent instead.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def chart_process_pool(workers: int = 1) -> ProcessPoolExecutor:
    """Processes to draw charts in (the dashboard's and the notifier's), each importing
    matplotlib at once (:func:`warm_up`) and exiting with this process
    (:func:`exit_with_parent`).

    Spawned, not forked: a fork would copy the parent's event loop and threads mid-flight.
    Drawing is CPU-bound Python, so in a thread it would hold the GIL against the event loop.
    """
    pool = ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )
    pool.submit(warm_up)
    return pool
