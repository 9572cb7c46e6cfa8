"""The playground page at `/`: plain HTML/CSS/JS under `server/static/`, mounted on an app.

Why its own module: the page is a client of the public API (`/classify`, `/translate`,
`/v1/models`) and nothing else, so the server side is only "serve these files". Keeping it here
means the rest of `server/` (routes, batching, processes) can change without touching the page,
and the page can change without touching the server. No build step and no CDN: the files are
served as they are, so the page works on an offline machine.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["mount_playground", "STATIC_DIR", "ASSETS_PATH"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/playground"

# Everything the page loads comes from this server; `blob:`/`data:` images are the user's own drawing
# and uploads shown back to them. No inline script or style is allowed, so injected markup cannot run.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def mount_playground(app: FastAPI) -> None:
    """Serve the page at `GET /` and its assets under `/playground/`.

    The page is a route at `/` rather than a static mount at `/`: a catch-all mount would also
    answer every unknown API path, replacing the API's JSON 404s with static-file ones.
    """
    index = STATIC_DIR / "index.html"

    async def playground() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="playground")
