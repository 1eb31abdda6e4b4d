"""Typed gateway errors and the one place where they become HTTP status codes and JSON bodies.

Every error response has the shape ``{"error": {"code": "...", "message": "..."}}``. Messages of
typed errors are written for clients; anything unexpected becomes a generic 500 and is logged, so
clients never see internals or stack traces.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "HTTP_STATUS",
    "BackendDown",
    "InternalError",
    "InvalidImage",
    "InvalidRequest",
    "ModelLoadError",
    "NotReady",
    "ServingError",
    "TooLarge",
    "Unsupported",
    "error_response",
    "install_exception_handlers",
]

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of the errors a client may see; ``code`` is a stable machine-readable string."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServingError):
    """The request is malformed (e.g. a broken multipart body)."""

    code = "invalid_request"


class InvalidImage(ServingError):
    """The payload is empty, corrupt, truncated or not an image."""

    code = "invalid_image"


class TooLarge(ServingError):
    """The body exceeds the byte limit or the image exceeds the pixel limit."""

    code = "too_large"


class Unsupported(ServingError):
    """The payload is not something /score accepts (content type, missing ``file`` part)."""

    code = "unsupported_media_type"


class NotReady(ServingError):
    """The model is not loaded and warmed up (yet)."""

    code = "not_ready"


class BackendDown(ServingError):
    """The inference backend cannot be reached or is not loaded."""

    code = "backend_unavailable"


class InternalError(ServingError):
    """A broken invariant on the server side (e.g. the model returned the wrong shape)."""

    code = "internal_error"


class ModelLoadError(Exception):
    """The model version cannot be resolved or loaded; the message is one line for the log."""


HTTP_STATUS: dict[type[ServingError], int] = {
    InvalidRequest: 400,
    InvalidImage: 400,
    TooLarge: 413,
    Unsupported: 415,
    NotReady: 503,
    BackendDown: 503,
    InternalError: 500,
    ServingError: 500,
}

_GENERIC_500 = "internal server error"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The JSON error shape shared by every failure."""
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _status_for(exc: ServingError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    status = _status_for(exc)
    if status >= 500:
        logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code, exc.message)
    return error_response(status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "HTTP error"
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else phrase
    response = error_response(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return error_response(422, "validation_error", "; ".join(parts) or "invalid request")


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", _GENERIC_500)


def install_exception_handlers(app: FastAPI) -> None:
    """Map every error class to its status code and the shared JSON shape."""
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
