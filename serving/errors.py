"""Typed gateway errors and the one place where they become HTTP status codes and JSON bodies.

Every error response has the shape ``{"error": {"code": "...", "message": "..."}}``. Messages of
typed errors are written for clients; anything unexpected becomes a generic 500 and is logged, so
clients never see internals or stack traces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "HTTP_STATUS",
    "BackendDown",
    "DeadlineExceeded",
    "ErrorBody",
    "ImageTooSmall",
    "InternalError",
    "InvalidImage",
    "InvalidRequest",
    "ModelLoadError",
    "NotReady",
    "Overloaded",
    "ProbeUnavailable",
    "ServingError",
    "ShuttingDown",
    "TooLarge",
    "Unsupported",
    "error_response",
    "error_responses",
    "install_exception_handlers",
]

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of the errors a client may see; ``code`` is a stable machine-readable string."""

    code = "internal_error"
    headers: Mapping[str, str] = {}  # extra response headers (e.g. Retry-After)

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


class ImageTooSmall(ServingError):
    """The decoded image is smaller than IQA_MIN_IMAGE_SIDE on one side."""

    code = "image_too_small"


class ProbeUnavailable(ServingError):
    """``?probe=true`` on a model version that has no probe model (``<name>_probe/<version>``): 422.

    A client error, not a 5xx: the deployment does not offer the probe for this version, and asking
    again will not change that (pin a version that has one, or score without the probe).
    """

    code = "probe_unavailable"


class _RetryLater(ServingError):
    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(int(retry_after_s), 0))}


class Overloaded(_RetryLater):
    """Every scoring slot is busy and the bounded queue is full (or the wait ran out): 429, Retry-After."""

    code = "overloaded"


class ShuttingDown(_RetryLater):
    """The server received SIGTERM: it finishes what it has and takes nothing new."""

    code = "shutting_down"


class DeadlineExceeded(ServingError):
    """The request (IQA_REQUEST_TIMEOUT_S) or its decode (IQA_DECODE_TIMEOUT_S) ran out of time."""

    code = "deadline_exceeded"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The JSON body of every error response (declared in the OpenAPI schema)."""

    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` for a route: each status with its description and the ``ErrorBody`` model."""
    return {status: {"model": ErrorBody, "description": text} for status, text in descriptions.items()}


class ModelLoadError(Exception):
    """The model version cannot be resolved or loaded; the message is one line for the log."""


HTTP_STATUS: dict[type[ServingError], int] = {
    InvalidRequest: 400,
    InvalidImage: 400,
    TooLarge: 413,
    Unsupported: 415,
    ImageTooSmall: 422,
    ProbeUnavailable: 422,
    Overloaded: 429,  # load shedding: not a replica fault, so proxies don't eject the replica
    NotReady: 503,
    BackendDown: 503,
    ShuttingDown: 503,
    DeadlineExceeded: 504,
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
    response = error_response(status, exc.code, exc.message)
    response.headers.update(exc.headers)
    return response


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
