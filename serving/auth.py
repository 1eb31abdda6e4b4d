"""Optional API keys (``IQA_API_KEYS``), checked by a pure ASGI middleware in front of every route.

``IQA_API_KEYS`` is a comma-separated list whose entries are either a key or ``sha256:<hex digest of
the key>`` (so a deployment need not store the key itself). A client sends its key as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. The presented key is hashed with SHA-256 and
compared with every configured digest by ``hmac.compare_digest`` (constant time, no early exit).

With keys set, every request without a valid key gets 401 JSON with ``WWW-Authenticate: Bearer``,
except the probes ``/healthz`` and ``/readyz``, the static upload page (``/`` and ``/ui/*``: no
data; its own /score calls need a key) and ``/metrics`` unless ``IQA_AUTH_METRICS=true``. Keys
are never logged: nothing here logs a header, and the access log carries only the path.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import error_response
from serving.settings import Settings, app_settings

__all__ = ["ApiKeyMiddleware", "ApiKeys", "AuthPolicy"]

_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
_OPEN_PREFIXES = ("/ui/",)
_METRICS = "/metrics"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, repr=False)
class ApiKeys:
    """The SHA-256 digests of the accepted keys (the keys themselves are not kept)."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        """``"key1, sha256:<64 hex>, ..."`` -> digests; blank entries are ignored."""
        digests = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            match = _DIGEST.match(entry)
            digests.append(bytes.fromhex(match.group(1)) if match else _digest(entry))
        return cls(tuple(digests))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def verify(self, presented: str | None) -> bool:
        """True if ``presented`` is one of the keys; every digest is compared, in constant time."""
        if not presented:
            return False
        candidate = _digest(presented)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(digest, candidate)
        return matched

    def __repr__(self) -> str:
        return f"ApiKeys({len(self.digests)} keys)"


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (the former wins)."""
    api_key = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
    return api_key


@dataclass(frozen=True)
class AuthPolicy:
    keys: ApiKeys
    protect_metrics: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        return cls(ApiKeys.parse(settings.api_keys.get_secret_value()), settings.auth_metrics)

    def is_open(self, path: str) -> bool:
        if not self.keys.enabled or path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
            return True
        return path == _METRICS and not self.protect_metrics

    def allows(self, scope: Scope) -> bool:
        return self.is_open(scope.get("path", "")) or self.keys.verify(presented_key(scope["headers"]))


class ApiKeyMiddleware:
    """401 JSON for requests without a valid key, when ``IQA_API_KEYS`` is set; a no-op otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._policy: AuthPolicy | None = None

    def _policy_for(self, scope: Scope) -> AuthPolicy:
        if self._policy is None:
            self._policy = AuthPolicy.from_settings(app_settings(scope["app"]))
        return self._policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._policy_for(scope).allows(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "a valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="iqa"'
        await response(scope, receive, send)
