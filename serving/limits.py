"""Bounded scoring work: a fixed number of slots, a small bounded wait, and a per-request deadline.

``ScoringLimiter.run(fn, ...)`` runs blocking scoring work on its own thread pool of
``IQA_MAX_CONCURRENCY`` threads. A request takes a slot at once when one is free; otherwise it may
wait, if fewer than ``IQA_MAX_QUEUE`` others are waiting, for at most ``IQA_QUEUE_TIMEOUT_S``. Past
that it gets 429 ``overloaded`` with ``Retry-After``: the gateway sheds work, it never queues
without bound. (429, not 503: an overloaded replica is healthy, and proxies that eject replicas on
5xx, such as Envoy's outlier detection, should not eject it.)

The deadline (``IQA_REQUEST_TIMEOUT_S``, counted from the moment the route starts) answers the client
with 504 ``deadline_exceeded``. A Python thread cannot be killed, so work that overruns keeps running
to its end, and its slot is released only then (a done-callback on the thread's future, not the
client's answer). The limit on concurrent work therefore holds even for abandoned requests: a slow
image can cost its slot, never an extra thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from serving.errors import DeadlineExceeded, Overloaded
from serving.settings import Settings, get_settings

__all__ = ["LimiterDep", "RequestGuard", "ScoringLimiter", "get_request_guard"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ScoringLimiter:
    """At most ``max_concurrency`` scoring jobs at a time, at most ``max_queue`` waiting for one."""

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout_s: float = 0.0,
        request_timeout_s: float = 30.0,
        retry_after_s: int = 1,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._running = 0
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="iqa-score")

    @classmethod
    def from_settings(cls, settings: Settings) -> ScoringLimiter:
        return cls(
            settings.max_concurrency,
            settings.max_queue,
            settings.queue_timeout_s,
            settings.request_timeout_s,
            settings.retry_after_s,
        )

    @property
    def running(self) -> int:
        """Scoring jobs whose thread has not returned yet (abandoned ones included)."""
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def saturated(self) -> bool:
        """True when a new request would be turned away at once (every slot busy, the queue full)."""
        return self._slots.locked() and self._waiting >= self.max_queue

    def reject_if_saturated(self) -> None:
        """The cheap check before a request body is read."""
        if self.saturated():
            raise self._overloaded()

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"server busy: {self.max_concurrency} images are being scored and {self._waiting} are waiting; "
            "retry later",
            self.retry_after_s,
        )

    async def _acquire(self, budget_s: float) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: a slot is free
            return
        if self._waiting >= self.max_queue:
            raise self._overloaded()
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=min(self.queue_timeout_s, budget_s))
        except TimeoutError:
            raise self._overloaded() from None
        finally:
            self._waiting -= 1

    def _release(self, _: object = None) -> None:
        self._running -= 1
        self._slots.release()

    async def run(self, fn: Callable[..., T], *args: object, started: float | None = None) -> T:
        """``fn(*args)`` on a scoring thread, within the slot limit and the request deadline.

        ``started`` is the request's ``time.monotonic()`` start (default: now).
        """
        started = time.monotonic() if started is None else started
        budget = self.request_timeout_s - (time.monotonic() - started)
        if budget <= 0:
            raise self._deadline()
        await self._acquire(budget)
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            future = loop.run_in_executor(self._executor, call)
        except BaseException:
            self._slots.release()
            raise
        self._running += 1
        future.add_done_callback(self._release)  # the slot frees when the thread is done, not before
        remaining = self.request_timeout_s - (time.monotonic() - started)
        try:
            # shield: a deadline or a client that goes away never cancels the accounting above
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(remaining, 0.0))
        except TimeoutError:
            logger.warning(
                "request deadline of %.1f s exceeded; its work finishes in the background",
                self.request_timeout_s,
            )
            raise self._deadline() from None

    async def within_deadline(self, awaitable: Awaitable[T], started: float) -> T:
        """Await ``awaitable`` (e.g. reading the body) but no longer than the request's deadline."""
        remaining = self.request_timeout_s - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(awaitable, timeout=max(remaining, 0.0))
        except TimeoutError:
            raise self._deadline() from None

    def _deadline(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"request took longer than the {self.request_timeout_s:g} s deadline")

    def close(self) -> None:
        """Stop the pool; running work is not interrupted (threads cannot be), queued work is dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class RequestGuard:
    """One request's view of the limiter: its start time and the calls that respect its deadline."""

    def __init__(self, limiter: ScoringLimiter) -> None:
        self.limiter = limiter
        self.started = time.monotonic()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self.limiter.run(fn, *args, started=self.started)

    async def read(self, awaitable: Awaitable[T]) -> T:
        return await self.limiter.within_deadline(awaitable, self.started)


async def get_request_guard(request: Request) -> RequestGuard:
    """Starts the request's clock and turns it away at once (429) when the gateway is saturated."""
    limiter = getattr(request.app.state, "limiter", None)
    if not isinstance(limiter, ScoringLimiter):  # an app run without its lifespan: same settings
        settings = request.app.dependency_overrides.get(get_settings, get_settings)()
        limiter = request.app.state.limiter = ScoringLimiter.from_settings(settings)
    limiter.reject_if_saturated()
    return RequestGuard(limiter)


LimiterDep = Annotated[RequestGuard, Depends(get_request_guard)]
