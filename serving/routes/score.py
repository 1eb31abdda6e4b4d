"""``POST /score``: one image in (multipart field ``file`` or the raw body), one quality score out.

The body is read asynchronously under the byte limit; decoding, preprocessing and inference are
blocking and run on the scoring pool of serving/limits.py (bounded slots, request deadline), never
on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serving import metrics
from serving.deps import ScorerDep, SettingsDep
from serving.errors import InvalidRequest, TooLarge, Unsupported, error_responses
from serving.limits import LimiterDep
from serving.probe import ProbeInfo, probe_info, wants_probe
from serving.robust_modes import ModeName, RobustInfo, robust_info, robust_mode

__all__ = ["ScoreResponse", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["score"])

FILE_FIELD = "file"
_RAW_TYPES = ("application/octet-stream", "")
_MULTIPART = "multipart/form-data"


class ScoreResponse(BaseModel):
    score: float
    model: str
    version: int
    crops: int
    timings: dict[str, float] | None = None
    robust: RobustInfo | None = None  # ?mode=median|jpeg (serving/robust_modes.py)
    probe: ProbeInfo | None = None  # ?probe=true or IQA_PROBE_RATE (serving/probe.py)


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            _MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                    "required": [FILE_FIELD],
                },
                "encoding": {FILE_FIELD: {"contentType": "image/*, application/octet-stream"}},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    openapi_extra=_OPENAPI_BODY,
    responses=error_responses(
        {
            400: "empty, corrupt or truncated image; malformed multipart",
            401: "IQA_API_KEYS is set and the request has no valid key",
            413: "body over IQA_MAX_BODY_BYTES or image over the pixel limit",
            415: "unsupported content type or no multipart 'file' part",
            422: "image smaller than IQA_MIN_IMAGE_SIDE; ?probe=true on a version without a probe "
            "model; invalid query parameters",
            429: "overloaded: every scoring slot busy and the queue full (Retry-After)",
            503: "model not ready, backend unavailable, or shutting down (Retry-After)",
            504: "past IQA_REQUEST_TIMEOUT_S or IQA_DECODE_TIMEOUT_S",
        }
    ),
)
async def score(
    request: Request, scorer: ScorerDep, settings: SettingsDep, guard: LimiterDep, timings: bool = False,
    mode: ModeName = "plain",
    probe: bool = False,
    perturbation: bool = False,
) -> ScoreResponse:
    """Score one image; ``?timings=true`` adds the seconds spent in each pipeline stage;
    ``?mode=median|jpeg`` scores with a defense (docs/ROBUST_MODES.md); ``?probe=true`` adds the
    FGSM self-probe, ``&perturbation=true`` with its amplified perturbation PNG (docs/PROBE.md)."""
    data = await guard.read(read_image_payload(request, settings.max_body_bytes))
    defense = robust_mode(mode, settings)
    run_probe = wants_probe(probe or perturbation, settings.probe_rate, scorer.prober is not None)
    # bounded slots and deadline (limits.py)
    result = await guard.run(scorer.score, data, defense, run_probe, perturbation)
    metrics.observe_result(result)
    info = scorer.backend.model_info
    logger.debug(
        "scored %d bytes: score=%.4f crops=%d timings=%s",
        len(data),
        result.score,
        result.crops,
        result.timings,
    )
    return ScoreResponse(
        score=result.score,
        model=info.name,
        version=info.version,
        crops=result.crops,
        timings=result.timings if timings else None,
        robust=robust_info(defense, result.bounds),
        probe=probe_info(result.probe),
    )


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_image_type(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in _RAW_TYPES


async def read_image_payload(request: Request, max_bytes: int) -> bytes:
    """The encoded image from a multipart ``file`` part or the raw body; 413 past ``max_bytes``."""
    media_type = _media_type(request.headers.get("content-type"))
    if media_type != _MULTIPART and not _is_image_type(media_type):
        raise Unsupported(
            f"unsupported content type '{media_type[:80]}': send the image as multipart field "
            f"'{FILE_FIELD}' or as a raw image/* or application/octet-stream body"
        )
    body = await _read_limited(request, max_bytes)
    if media_type == _MULTIPART:
        return await _file_part(request, body)
    return body


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _file_part(request: Request, body: bytes) -> bytes:
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from None
    try:
        part = form.get(FILE_FIELD)
        if not isinstance(part, UploadFile):
            raise Unsupported(f"multipart body needs a file part named '{FILE_FIELD}'")
        if not _is_image_type(_media_type(part.content_type)):
            raise Unsupported(
                f"file part has unsupported content type '{_media_type(part.content_type)[:80]}'"
            )
        return await part.read()
    finally:
        await form.close()
