"""Retrying while Redis is away: the backoff schedule, the one retry loop, one log line per outage.

Once running, an unreachable Redis never ends anything: the publisher and the
reader each call :func:`retry`, which retries with capped exponential backoff
and jitter (:class:`Backoff`, pure) and logs once when Redis goes away and once
when it is back (:class:`Link`). Nothing here imports coredis: what counts as
"unreachable" is the caller's ``errors``.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

log = logging.getLogger("trio_broadcast")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with "equal jitter".

    Attempt ``n`` (from 0) waits between half and all of
    ``min(cap, first * factor ** n)``: never less than half the schedule, so a
    dead server is not hammered, and spread out, so many instances that lost
    Redis together do not come back in lock step.
    """

    first: float = 0.05
    cap: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.first <= self.cap and math.isfinite(self.cap) and self.factor >= 1):
            raise ValueError(f"bad backoff schedule: {self}")

    def delay(self, attempt: int, spread: float) -> float:
        """Seconds to wait before retry ``attempt``; ``spread`` in [0, 1) picks the jitter."""
        ceiling = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return ceiling / 2 + ceiling / 2 * spread


def why(exc: BaseException) -> str:
    """One line for a connection failure, from the deepest useful cause."""
    seen: BaseException | None = exc
    message = str(exc) or type(exc).__name__
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return f"cannot resolve the host ({seen.strerror})"
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused (is redis-server running there?)"
            return (seen.strerror or str(seen)).lower()
        if isinstance(seen, trio.TooSlowError | TimeoutError):
            return "no answer in time"
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        seen = seen.__cause__ or seen.__context__
    return message


class Link:
    """Whether Redis answers, as one side sees it; logs only the changes of state."""

    def __init__(self, role: str, where: str) -> None:
        self._role = role
        self._where = where
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def lost(self, exc: BaseException, consequence: str) -> None:
        if self._down_since is None:
            self._down_since = trio.current_time()
            log.warning(
                "%s: Redis at %s unreachable (%s); %s, retrying with backoff",
                self._role,
                self._where,
                why(exc),
                consequence,
            )

    def back(self) -> None:
        if self._down_since is not None:
            log.info(
                "%s: Redis at %s is back after %.1f s",
                self._role,
                self._where,
                trio.current_time() - self._down_since,
            )
            self._down_since = None


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...],
    link: Link,
    backoff: Backoff,
    consequence: str,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    """``await call()`` until it returns; only ``errors`` are retried.

    Each failure is reported to ``link`` (which logs the first of an outage,
    saying ``consequence``) and to ``on_error`` (a side that must do something
    more before its next attempt, such as look for entries trimmed meanwhile),
    then waits its turn in ``backoff``. A success after failures is logged once.
    """
    attempt = 0
    while True:
        try:
            result = await call()
        except errors as exc:
            link.lost(exc, consequence)
            if on_error is not None:
                on_error(exc)
            await trio.sleep(backoff.delay(attempt, random.random()))
            attempt += 1
        else:
            link.back()
            return result
