"""Retry policies shared by the rooms that talk to Redis (the worker's state, the notifier)."""

from __future__ import annotations

import logging

from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    wait_exponential_jitter,
)

__all__ = ["redis_retrying"]

log = logging.getLogger("vigil.redis")


def redis_retrying() -> AsyncRetrying:
    """Retry for as long as Redis is away: losing state would be worse than waiting."""
    return AsyncRetrying(
        retry=retry_if_exception_type((ConnectionError, TimeoutError, BusyLoadingError, OSError)),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
