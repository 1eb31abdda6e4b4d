"""The IQA gateway: ``create_app()`` builds the FastAPI app; ``app`` is what ``uvicorn serving.app:app`` runs.

Nothing is loaded at import. The lifespan starts a background load (resolve the model version,
build the backend, load it, warm it up with one inference) and the process answers ``/healthz``
meanwhile; ``/readyz`` turns 200 only when the load and warm-up succeeded. A load failure is
logged as one ERROR line and the process stays up, live but never ready (``/readyz`` 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from serving import metrics
from serving.auth import ApiKeyMiddleware
from serving.backends import create_backend
from serving.cors import CorsFromSettings
from serving.deps import ModelState
from serving.errors import ModelLoadError, install_exception_handlers
from serving.limits import ScoringLimiter
from serving.model_store import resolve_model_version
from serving.pipeline import Scorer
from serving.probe import load_prober
from serving.request_metrics import RequestMetricsMiddleware
from serving.routes import health, score, ui
from serving.routes import metrics as metrics_route
from serving.settings import Settings, get_settings
from serving.shutdown import install_drain_handler

__all__ = ["app", "create_app", "load_scorer"]

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def load_scorer(settings: Settings) -> Scorer:
    """Resolve, load and warm up the configured model version (blocking; raises ModelLoadError)."""
    model = resolve_model_version(settings.model_repository, settings.model_name, settings.model_version)
    backend = create_backend(model, settings)
    backend.load()
    scorer = Scorer(
        backend,
        model.preprocess,
        max_pixels=settings.max_pixels,
        min_side=settings.min_image_side,
        decode_timeout_s=settings.decode_timeout_s,
    )
    scorer.warm_up()
    scorer.prober = load_prober(model, settings)  # None when the version has no <name>_probe
    # the embedded backend runs the scorer's graph in ONNX Runtime, as the probe graph's clean forward
    scorer.share_probe_forward = settings.probe_share_forward and settings.backend == "onnxruntime"
    metrics.model_loaded(backend.model_info, model.metadata)  # model info, gate verdict, drift reference
    return scorer


async def _load_into(state: ModelState, settings: Settings) -> None:
    try:
        scorer = await run_in_threadpool(load_scorer, settings)
    except ModelLoadError as exc:
        state.status, state.error = "failed", str(exc)
        logger.error("model load failed: %s", exc)
        return
    except Exception as exc:
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        logger.exception("model load failed with an unexpected error")
        return
    state.scorer, state.status = scorer, "ready"
    info = scorer.backend.model_info
    logger.info(
        "ready: model %s version %d (%d crops of %d px)",
        info.name,
        info.version,
        scorer.cfg.num_eval_crops,
        scorer.cfg.crop_size,
    )


def _configure_logging(level: str) -> None:
    """Give the ``serving`` loggers a handler unless the host process (pytest, uvicorn config) has one."""
    pkg_logger = logging.getLogger("serving")
    pkg_logger.setLevel(level.upper())
    if not pkg_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        pkg_logger.addHandler(handler)


def _resolve_settings(app: FastAPI) -> Settings:
    provider = app.dependency_overrides.get(get_settings, get_settings)
    return provider()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = _resolve_settings(app)
    _configure_logging(settings.log_level)
    state = ModelState()
    app.state.model = state
    app.state.limiter = limiter = ScoringLimiter.from_settings(settings)
    undo_drain = install_drain_handler(state.start_draining, settings.shutdown_drain_s)
    metrics.activate(settings)
    logger.info(
        "loading model '%s' version %s from %s (backend %s)",
        settings.model_name,
        settings.model_version,
        settings.model_repository,
        settings.backend,
    )
    loader = asyncio.create_task(_load_into(state, settings))
    try:
        yield
    finally:
        if not loader.done():
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        if state.scorer is not None:
            state.scorer.backend.close()
        state.status, state.scorer = "loading", None
        metrics.deactivate()
        undo_drain()
        limiter.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway. ``settings`` overrides ``get_settings`` for this app (tests, embedding)."""
    app = FastAPI(title="IQA gateway", version="0.1.0", lifespan=lifespan)
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    install_exception_handlers(app)
    app.include_router(health.router)
    app.include_router(score.router)
    app.include_router(ui.router)
    app.include_router(metrics_route.router)
    app.add_middleware(ApiKeyMiddleware)  # inside CORS (preflights carry no key) and the metrics
    app.add_middleware(CorsFromSettings)
    app.add_middleware(RequestMetricsMiddleware)
    return app


app = create_app()
