"""GET /: the playground page (service/static), one self-contained HTML answer.

The stylesheet and script are inlined rather than served from /static: "/" is the only page
path the API-key middleware leaves open, and one response keeps the page working offline
and behind any path prefix.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["playground"])

_CSS_TAG = '<link rel="stylesheet" href="static/app.css">'
_JS_TAG = '<script src="static/app.js"></script>'


def _read(name: str) -> str:
    return resources.files("service").joinpath("static", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def playground_html() -> str:
    """index.html with app.css and app.js inlined (read once from the package data)."""
    html, css, js = _read("index.html"), _read("app.css"), _read("app.js")
    if _CSS_TAG not in html or _JS_TAG not in html:
        raise RuntimeError("service/static/index.html lost its app.css or app.js tag")
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("app.css / app.js must not contain a closing style/script tag")
    return html.replace(_CSS_TAG, f"<style>\n{css}</style>").replace(
        _JS_TAG, f"<script>\n{js}</script>"
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground: upload a photo, pick a task, see the answer drawn."""
    return HTMLResponse(playground_html(), headers={"Cache-Control": "no-cache"})
