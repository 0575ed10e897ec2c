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

__all__ = ["chart_process_pool", "exit_with_parent", "render_chart", "warm_up"]


def render_chart(
    context: Mapping[str, Sequence[float]],
    title: str,
    event_ts_ms: int | None = None,
    z_marked: float = 6.0,
    size: tuple[float, float] = (8.0, 3.2),
    dpi: int = 100,
) -> bytes:
    """PNG bytes of ``context`` (``ts_ms``, ``value``, ``expected``, ``lower``, ``upper``,
    ``z``): the value as a line, the expected value dashed, the band shaded, steps with
    ``z ≥ z_marked`` as red dots and the event's own step as a ring.

    >>> ctx = {"ts_ms": [0, 60_000, 120_000], "value": [1.0, 1.1, 5.0],
    ...        "expected": [1.0, 1.0, 1.0], "lower": [0.5] * 3, "upper": [1.5] * 3,
    ...        "z": [0.0, 0.4, 16.0]}
    >>> render_chart(ctx, "cpu", event_ts_ms=120_000)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
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
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


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
