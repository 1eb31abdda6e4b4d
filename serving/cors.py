"""CORS, off unless ``IQA_CORS_ORIGINS`` lists origins (comma-separated; ``*`` allows any).

Starlette's ``CORSMiddleware`` does the work; this wrapper only builds it from the app's settings on
the first request, so ``create_app()`` reads no environment at import.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.settings import app_settings

__all__ = ["CorsFromSettings", "parse_origins"]


def parse_origins(spec: str) -> list[str]:
    return [origin.strip() for origin in spec.split(",") if origin.strip()]


class CorsFromSettings:
    """``CORSMiddleware`` when origins are configured, else a pass-through (no CORS headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inner: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._inner is None:
            origins = parse_origins(app_settings(scope["app"]).cors_origins)
            self._inner = (
                CORSMiddleware(
                    self.app,
                    allow_origins=origins,
                    allow_methods=["GET", "POST"],
                    allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                )
                if origins
                else self.app
            )
        await self._inner(scope, receive, send)
