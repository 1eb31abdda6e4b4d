"""ASGI middleware: request count by route template and status, whole-request duration, in-flight.

A plain ASGI middleware (no ``BaseHTTPMiddleware``: no extra task or body copy per request). The route
label is the matched route's template (``/score``), set by Starlette's router on the scope, or, for a
request answered before routing, the template its path matches; so a client cannot create label
values, and unknown paths share the label ``unmatched``. The in-flight gauge leaves out requests to
``/metrics`` themselves. When metrics are off
(``serving.metrics.active()`` is None) it only passes the request on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics

__all__ = ["METRICS_PATH", "RequestMetricsMiddleware", "route_label"]

METRICS_PATH = "/metrics"


def route_label(scope: Scope) -> str:
    """The template of the route that handled ``scope``; for a request answered before routing (e.g.
    401 from the API-key middleware) the template of the app route its path matches."""
    route = scope.get("route")
    if route is None:
        route = _matching_route(scope)
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return metrics.UNMATCHED_ROUTE
    return f"{scope.get('root_path', '')}{path}" if scope.get("root_path") else path


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def _matching_route(scope: Scope) -> BaseRoute | None:
    partial = None
    for route in _leaf_routes(getattr(scope.get("app"), "routes", ())):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route  # right path, other method (405)
    return partial


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

        # a scrape does not count itself: every scrape would read at least 1 (and an autoscaler on
        # this gauge would see a pod busier than it is)
        in_flight = scope.get("path") != METRICS_PATH
        if in_flight:
            recorder.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if in_flight:
                recorder.in_flight.dec()
            recorder.observe_request(route_label(scope), status, time.perf_counter() - start)
