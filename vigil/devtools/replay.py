"""Send recorded telemetry (CSV, a NAB folder, generator output) into a Kafka topic.

Points go out in time order, many per message (``--batch``), as JSON batch lists or Influx
line protocol — the formats the worker reads from real metric topics. ``speed`` paces the
replay against the data's own clock (``speed=10_000`` plays a month in about four minutes);
``speed=0`` sends as fast as the broker takes it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import orjson
from confluent_kafka import Producer

from vigil.detectors.resample import iter_points_in_time_order
from vigil.lab.datasets import Dataset
from vigil.series import parse_series

if TYPE_CHECKING:
    from vigil.streams.settings import Settings

__all__ = ["encode_messages", "make_producer", "replay"]


def encode_messages(
    series: list[str], ts_ms: np.ndarray, values: np.ndarray, batch: int, fmt: str = "json"
) -> Iterator[tuple[bytes, int]]:
    """Messages of at most ``batch`` points: ``(payload, number of points)``.

    >>> list(encode_messages(['up{job="a"}'], np.array([1_700_000_000_000]), np.array([1.0]), 10))
    [(b'[{"name":"up","labels":{"job":"a"},"timestamp":1700000000000,"value":1.0}]', 1)]
    """
    ts_list = ts_ms.tolist()
    value_list = values.tolist()
    for lo in range(0, len(series), batch):
        hi = min(lo + batch, len(series))
        if fmt == "json":
            items = []
            for i in range(lo, hi):
                name, labels = parse_series(series[i])
                point = {"name": name, "labels": labels, "timestamp": ts_list[i]}
                point["value"] = value_list[i]
                items.append(point)
            yield orjson.dumps(items), hi - lo
        elif fmt == "influx":
            lines = []
            for i in range(lo, hi):
                name, labels = parse_series(series[i])
                tags = "".join(f",{k}={_influx_escape(v)}" for k, v in sorted(labels.items()))
                lines.append(f"{name}{tags} value={value_list[i]!r} {ts_list[i] * 1_000_000}")
            yield "\n".join(lines).encode(), hi - lo
        else:
            raise ValueError(f"unknown replay format {fmt!r}; use json or influx")


def _key_groups(series: list[str], groups: int) -> list[tuple[bytes, np.ndarray]]:
    """Rows of a chunk grouped by the message key of their series (order kept)."""
    keys = np.fromiter((zlib.crc32(s.encode()) % groups for s in series), np.int64, len(series))
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    return [(str(keys[order[lo]]).encode(), order[lo:hi]) for lo, hi in spans]


def _influx_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def make_producer(bootstrap: str, settings: Settings | None = None) -> Producer:
    """A fast producer for ``bootstrap``, with the Kafka security settings of ``settings``
    (default: the environment's, ``VIGIL_KAFKA_*``)."""
    if settings is None:
        from vigil.streams.settings import Settings

        settings = Settings()
    return Producer(
        {
            **settings.kafka_client_config(bootstrap),
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 200_000,
            "compression.type": "none",
            "enable.idempotence": False,
        }
    )


def replay(
    dataset: Dataset,
    bootstrap: str,
    topic: str,
    *,
    speed: float = 0.0,
    batch: int = 100,
    fmt: str = "json",
    shift_to_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
    key_groups: int = 64,
) -> int:
    """Produce every point of ``dataset`` to ``topic``; returns the number of points sent.

    Like a real exporter, every series keeps to one message key (one of ``key_groups``), so
    its points stay on one partition and in time order — the worker drops points older
    than a series' watermark.
    """
    producer = make_producer(bootstrap)
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    sent = 0
    wall_start = time.monotonic()
    data_start: int | None = None
    for series, ts, values in iter_points_in_time_order(
        dataset, chunk=max(batch * 50, 1000), shift_to_ms=shift_to_ms
    ):
        if data_start is None and len(ts):
            data_start = int(ts[0])
        for key, rows in _key_groups(series, key_groups):
            payloads = encode_messages(
                [series[i] for i in rows], ts[rows], values[rows], batch, fmt
            )
            for payload, n in payloads:
                while True:
                    try:
                        producer.produce(topic, payload, key=key, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
                sent += n
                if progress:
                    progress(n)
        if speed > 0 and data_start is not None:
            due = (int(ts[-1]) - data_start) / 1000 / speed
            ahead = due - (time.monotonic() - wall_start)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} messages were not delivered: {errors[0]}")
    return sent
