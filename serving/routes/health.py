"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: model loaded and warm)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.deps import ScorerDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Always 200 while the process can answer."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "model not loaded and warmed up (yet)"}})
async def readyz(scorer: ScorerDep) -> dict[str, Any]:
    """200 with the model identity once loaded and warmed up; 503 in the error shape otherwise."""
    info = scorer.backend.model_info
    body: dict[str, Any] = {"status": "ready", "model": info.name, "version": info.version}
    if info.architecture:
        body["architecture"] = info.architecture
    return body
