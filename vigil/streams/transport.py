"""Faust's aiokafka transport with a configurable consumer fetch wait.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded. A broker may
hold a fetch request that long when too little data has arrived, and each point crosses two
topics inside the worker (metrics → points), so produce-to-event latency at moderate load
was 1.5–2 s. Here the wait is a setting (``VIGIL_FETCH_MAX_WAIT_MS``, default 100 ms).
"""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["VigilApp"]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its fetcher in start().
        consumer._fetch_max_wait_ms = int(self.app.vigil_fetch_max_wait_ms)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class VigilApp(faust.App):
    """A Faust app whose consumers use :class:`_Transport` (``kafka://`` URLs only)."""

    vigil_fetch_max_wait_ms: int = 100

    def _new_transport(self):
        return _Transport(self.conf.broker_consumer, self)
