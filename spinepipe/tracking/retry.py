"""Retries of tracking-store calls: what a busy or briefly unreachable store answers (a
SQLite database locked by a parallel job, a connection refused or timed out, a 5xx from a
server) is retried with exponential backoff, ``mlflow.retry_attempts`` tries spread over
about ``mlflow.retry_seconds``; any other error is raised at once."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("spinepipe.tracking")  # the package's logger, one for all its modules

T = TypeVar("T")

# Text of the errors a busy or briefly unreachable store gives (matched lower-case, along
# the exception's cause chain: MLflow wraps the SQLite and HTTP errors in MlflowException).
_TRANSIENT_TEXT = (
    "database is locked", "database is busy", "database table is locked",
    "connection refused", "connection reset", "connection aborted", "connectionerror",
    "failed to establish a new connection", "max retries exceeded", "timed out",
    "temporarily unavailable", "service unavailable", "bad gateway", "gateway timeout",
    "too many requests", "remote end closed",
)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries; the waits between them double and add up to ``max_seconds``."""

    attempts: int
    max_seconds: float

    @classmethod
    def from_config(cls, tracking: Mapping[str, Any]) -> RetryPolicy:
        """The policy of the config's ``mlflow`` section (``retry_attempts``, ``retry_seconds``)."""
        return cls(int(tracking["retry_attempts"]), float(tracking["retry_seconds"]))

    def delay(self, attempt: int) -> float:
        """Wait after failed try ``attempt`` (1-based)."""
        waits = max(self.attempts - 1, 1)
        return self.max_seconds * 2 ** (attempt - 1) / (2 ** waits - 1)


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is what a locked SQLite store or a flaky server gives."""
    for cause in _causes(error):
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause).lower():
            return True
        text = f"{type(cause).__name__}: {cause}".lower()
        if any(fragment in text for fragment in _TRANSIENT_TEXT):
            return True
    return False


def call_with_retry(what: str, uri: str, policy: RetryPolicy, fn: Callable[..., T],
                    *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while it fails transiently;
    the last error (or a non-transient one) is raised."""
    start = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - classified just below
            delay = policy.delay(attempt)
            if (not is_transient(error) or attempt == policy.attempts
                    or time.monotonic() - start + delay > policy.max_seconds):
                raise
            log.warning("MLflow %s at %s failed (%s: %s); try %d of %d in %.1f s", what, uri,
                        type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
                        attempt + 1, policy.attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
