"""Read a Kafka topic from its start to its end as it is now, without a consumer group.

For the commands that look back over what vigil published (``vigil alerts redeliver`` on the
alerts' dead letters, ``vigil feedback`` on the anomalies topic): records are left for every
other reader, and nothing is committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from vigil.streams.settings import Settings

__all__ = ["read_to_end"]


def read_to_end(settings: Settings, topic: str, timeout_s: float = 30.0
                ) -> Iterator[tuple[int, int, bytes]]:
    """``(partition, offset, value)`` of every record of ``topic`` up to its end at the time
    of the call, each partition in offset order. Raises ``KafkaException`` when the topic is
    missing, ``TimeoutError`` when it cannot be read to its end within ``timeout_s``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        **settings.kafka_client_config(),
        "group.id": f"vigil-reader-{uuid.uuid4().hex[:8]}",  # never committed
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"no topic {topic}: {metadata.error if metadata else ''}")
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s)
            if high > low:
                ends[partition] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(ends)} not read to "
                                   f"their end within {timeout_s:.0f} s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            partition, offset = message.partition(), message.offset()
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            yield partition, offset, message.value() or b""
    finally:
        consumer.close()
