"""Graceful shutdown: on SIGTERM (or SIGINT) the gateway drains instead of dropping work.

uvicorn already stops accepting connections on SIGTERM and waits for the requests in flight (bounded
by ``timeout_graceful_shutdown``, which ``python -m serving`` sets from ``IQA_GRACEFUL_SHUTDOWN_S``;
the request deadline bounds them anyway). This module adds what uvicorn cannot know: it wraps
uvicorn's signal handler so that the signal first marks the app as draining, after which ``/readyz``
and new ``/score`` requests answer 503 ``shutting_down`` (with ``Retry-After``) while requests
already in flight finish. uvicorn's own handler runs ``IQA_SHUTDOWN_DRAIN_S`` seconds later
(default 0: at once), so a load balancer can see the failed readiness before the listener closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["DRAIN_SIGNALS", "install_drain_handler"]

logger = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_drain_handler(mark_draining: Callable[[], None], delay_s: float = 0.0) -> Callable[[], None]:
    """Chain a handler in front of the current (uvicorn's) SIGTERM/SIGINT handlers; returns the undo.

    Signals can only be handled in the main thread; elsewhere (e.g. a TestClient) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in DRAIN_SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        mark_draining()
        forward = previous[signal.Signals(signum)]
        if forward == signal.SIG_DFL:  # nobody else handles it: the default action, as before
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if not callable(forward):
            return
        if delay_s > 0:
            logger.info("draining for %.1f s before closing the listener", delay_s)
            loop.call_soon_threadsafe(loop.call_later, delay_s, forward, signum, frame)
        else:
            forward(signum, frame)

    for sig in DRAIN_SIGNALS:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return undo
