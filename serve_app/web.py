"""The web page for people, served by the ingress itself: ``GET /`` and its three static files.

Plain HTML, CSS and JavaScript shipped inside the package (``serve_app/static``): no CDN, no external
fonts or scripts, no build step. The page only calls this service's own API (``/v1/...``) and keeps nothing
on the server. Every response here carries a strict Content-Security-Policy: scripts and styles only from
this origin (no inline ones), images also as ``data:`` (heatmaps) and ``blob:`` (the user's own file).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

STATIC_DIR = Path(__file__).with_name("static")

# The only files served; anything else under /static is a 404 (no directory listing, no path tricks).
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the package: revalidate instead of trusting a stale copy.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    # Under a route prefix (/faulty) Serve redirects /faulty to /faulty/, which the page's relative links need.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        return JSONResponse({"error": "not_found", "detail": f"no static file {name!r}"}, status_code=404)
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)
