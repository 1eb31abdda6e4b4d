"""Model registry: ``register_model``, ``create_model`` and ``list_models``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from training.registry import Registry

__all__ = ["create_model", "is_model", "list_models", "register_model"]

_MODELS: Registry[Any] = Registry("model")

F = TypeVar("F", bound=Callable[..., Any])


def register_model(fn: F) -> F:
    """Register a model constructor under its function name; a duplicate name is an error."""
    _MODELS.register(fn.__name__, fn)
    return fn


def is_model(name: str) -> bool:
    return name in _MODELS


def list_models(pattern: str = "*") -> list[str]:
    return _MODELS.names(pattern)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model; ``None`` keyword arguments are dropped."""
    return _MODELS.create(name, **kwargs)
