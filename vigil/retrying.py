"""Retry policies shared by the rooms that talk to Redis (the worker's state, the notifier)."""

from __future__ import annotations

import logging
import time

from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

__all__ = ["STORE_OUTAGE", "StoreOutage", "is_transient", "redis_retrying"]

log = logging.getLogger("vigil.redis")

_TRANSIENT = (ConnectionError, TimeoutError, BusyLoadingError, OSError, OutOfMemoryError,
              ReadOnlyError, TryAgainError)
# Errors a Redis answers while it cannot write for now: out of memory (maxmemory), a replica
# being promoted (READONLY), a failed RDB save blocking writes (MISCONF).
_TRANSIENT_CODES = ("OOM", "READONLY", "MISCONF", "LOADING", "TRYAGAIN", "CLUSTERDOWN")


def is_transient(exc: BaseException) -> bool:
    """Whether waiting may cure ``exc``: Redis away, or unable to write for now.

    >>> is_transient(ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    True
    >>> is_transient(ResponseError("WRONGTYPE Operation against a key"))
    False
    """
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, ResponseError):
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        return code in _TRANSIENT_CODES
    return False


class StoreOutage:
    """Whether this process is waiting out a failing Redis (``/health`` reports 503)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.since_s: float | None = None

    def failing(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        if self.since_s is None:
            self.since_s = time.monotonic()
        log.warning("Redis failing (%s); retrying in %.1f s (attempt %d)", self.error,
                    state.next_action.sleep if state.next_action else 0, state.attempt_number)

    def recovered(self) -> None:
        if self.error is not None:
            log.warning("Redis answering again after %.1f s", time.monotonic() - self.since_s)
        self.error = None
        self.since_s = None


STORE_OUTAGE = StoreOutage()


def redis_retrying() -> AsyncRetrying:
    """Retry with capped backoff for as long as Redis is away or cannot write: losing state
    would be worse than waiting. Other errors (a permission, a wrong type) are raised."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
        before_sleep=STORE_OUTAGE.failing,
        reraise=True,
    )
