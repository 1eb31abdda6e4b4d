"""Request dependencies: settings, the model's load state, and a ready scorer (else 503)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from serving.errors import BackendDown, NotReady, ShuttingDown
from serving.pipeline import Scorer
from serving.settings import Settings, get_settings

__all__ = ["ModelState", "ModelStateDep", "ScorerDep", "SettingsDep", "get_model_state", "get_scorer"]

LoadStatus = Literal["loading", "ready", "failed"]


@dataclass
class ModelState:
    """The app's model slot: set by the lifespan loader, read by every request."""

    status: LoadStatus = "loading"
    scorer: Scorer | None = None
    error: str | None = None
    draining: bool = False  # SIGTERM received (serving/shutdown.py): 503 to new work

    def start_draining(self) -> None:
        self.draining = True

    def ready(self) -> bool:
        return self.status == "ready" and self.scorer is not None and self.scorer.backend.ready()


async def get_model_state(request: Request) -> ModelState:
    state = getattr(request.app.state, "model", None)
    return state if isinstance(state, ModelState) else ModelState()


async def get_scorer(state: Annotated[ModelState, Depends(get_model_state)]) -> Scorer:
    if state.draining:
        raise ShuttingDown("the server is shutting down; retry (another replica)")
    if state.status == "ready" and state.scorer is not None and not state.scorer.backend.ready():
        raise BackendDown("the inference backend is unavailable")  # e.g. Triton down; it may come back
    if not state.ready() or state.scorer is None:
        message = (
            "model failed to load; see the server log" if state.status == "failed" else "model is loading"
        )
        raise NotReady(message)
    return state.scorer


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
