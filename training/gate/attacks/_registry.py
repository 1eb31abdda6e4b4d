"""Attack registry by name, shared by the evaluation script, the gate and the gateway's probe.

The registered objects are the ``Attack`` classes themselves, so what the gate must know about an
attack before building it (``needs_surrogate``) is read from ``attack_class(name)``."""

from __future__ import annotations

from typing import Any, TypeVar

from training.gate.attacks.base import Attack
from training.registry import Registry

__all__ = ["attack_class", "create_attack", "is_attack", "list_attacks", "register_attack"]

_ATTACKS: Registry[Attack] = Registry("attack")

A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: register an ``Attack`` subclass under its ``name``; a duplicate is an error."""
    _ATTACKS.register(cls.name, cls)
    return cls


def is_attack(name: str) -> bool:
    return name in _ATTACKS


def list_attacks(pattern: str = "*") -> list[str]:
    return _ATTACKS.names(pattern)


def attack_class(name: str) -> type[Attack]:
    """The ``Attack`` subclass registered as ``name``."""
    cls = _ATTACKS.get(name)
    assert isinstance(cls, type) and issubclass(cls, Attack)
    return cls


def create_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack; ``None`` parameters are dropped."""
    return _ATTACKS.create(name, **params)
