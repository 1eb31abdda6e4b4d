"""timm-style model registry: ``register_model``, ``create_model`` and ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["create_model", "is_model", "list_models", "register_model"]

_MODEL_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def register_model(fn: F) -> F:
    """Register a model constructor under its function name; a duplicate name is an error."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model. ``None`` keyword arguments are dropped so that CLI defaults
    (``None`` = "not given") never override the model's own defaults."""
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return _MODEL_ENTRYPOINTS[name](**kwargs)
