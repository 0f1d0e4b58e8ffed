"""The aggregator's web page: static files (no build step) served at ``/`` and ``/static/*``.

The page (``static/index.html``, ``static/app.js``) reads the API v1 (aggregator/api/API_SPEC.md)
with the bearer token the user enters; the page itself is public (the auth middleware lets ``/``
and ``/static/*`` through). See README.md in this package.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

__all__ = ["STATIC_DIR", "WEB_DIR", "add_web_routes"]

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"

#: The page's policy: its own scripts, styles, images and API only (no inline script, no CDN, no framing).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATIC_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _resolve(rel: str) -> Path | None:
    """The file ``rel`` names under STATIC_DIR, or ``None`` (outside it, hidden, missing or not a file)."""
    if not rel or any(part.startswith(".") or part == "" for part in rel.split("/")) or "\\" in rel:
        return None
    root = STATIC_DIR.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


async def _static(request: web.Request) -> web.StreamResponse:
    target = _resolve(request.match_info["path"])
    if target is None:
        raise web.HTTPNotFound()
    headers = _PAGE_HEADERS if target.suffix == ".html" else _STATIC_HEADERS
    return web.FileResponse(target, headers=headers)


def add_web_routes(app: web.Application) -> None:
    """Serve the page at ``GET /`` and its files at ``GET /static/{path}`` (HEAD too).

    A plain route rather than ``add_static``: its template ``/static/{path}`` is what the auth
    middleware's public ``/static/`` prefix matches, and only files under ``static/`` are reachable.
    """
    app.router.add_get("/", _index)
    app.router.add_get("/static/{path:.+}", _static)
