"""ASGI middleware: request count by route template and status, whole-request duration, in-flight.

A plain ASGI middleware (no ``BaseHTTPMiddleware``: no extra task or body copy per request). The route
label is the matched route's template (``/score``), set by Starlette's router on the scope, so a
client cannot create label values; unmatched paths share the label ``unmatched``. When metrics are off
(``serving.metrics.active()`` is None) it only passes the request on.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics

__all__ = ["RequestMetricsMiddleware", "route_label"]


def route_label(scope: Scope) -> str:
    """The template of the route that handled ``scope`` (mounts prefix their own path)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return metrics.UNMATCHED_ROUTE
    return f"{scope.get('root_path', '')}{path}" if scope.get("root_path") else path


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        recorder = metrics.active()
        if scope["type"] != "http" or recorder is None:
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes is answered 500 by the outer error middleware
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        recorder.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            recorder.in_flight.dec()
            recorder.observe_request(route_label(scope), status, time.perf_counter() - start)
