"""``GET /``: the upload page, served by the gateway itself (no build step, nothing from a CDN).

The page is ``serving/static/index.html`` plus its script and stylesheet under ``/ui/``. It posts the
chosen image to ``score?probe=true&perturbation=true`` on the same origin. The Content-Security-Policy
lets the browser load nothing from elsewhere; images may come from ``data:`` (the perturbation PNG)
and ``blob:`` (the local preview). None of these routes is in the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# file name under /ui/ -> media type; nothing else in STATIC_DIR is served
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The upload page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    """The page's script and stylesheet."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no asset named '{name[:80]}'")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)
