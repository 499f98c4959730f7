"""The web console at ``/admin``: static HTML, CSS and JavaScript modules served by the service.

No build step and no CDN: the page is a few committed files that call the same ``/v1`` JSON API
every other client uses, with the API key the person signs in with (kept in the browser's
session storage, sent as a Bearer header). The console hides the buttons a key's scopes do not
allow (``GET /v1/keys/me``); the API enforces the scopes regardless.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Everything from this origin only, nothing inline: a key in session storage is only as safe as
# the scripts the page runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI) -> None:
    """``/admin`` (the page), ``/admin/static/*`` (its assets) and ``/`` redirecting to the console."""
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="console-static")

    @app.get("/admin", include_in_schema=False)
    @app.get("/admin/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/admin", status_code=307)
