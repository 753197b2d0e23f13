"""The web viewer (`GET /`, static files, vendored MapLibre), its basemap (tiles of the store's
own imagery) and the API docs (`/docs`, `/redoc`) from vendored Swagger UI and ReDoc, so every
page works with no other server and offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from server.http import BINARY, RANGE_HEADERS, conditional, errors, weighted
from server.params import TILE_SIZES, Integer, Scale, check_tile
from server.routes.deps import ServiceDep
from server.routes.meta import landing_page

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["viewer"])
# The docs pages may load nothing from another origin (the vendored ReDoc's sidebar logo is an
# empty data: image in place of its vendor's CDN, see static/redoc/VERSION).
DOCS_CSP = "default-src 'self' 'unsafe-inline' data: blob:"
# The viewer's page runs only this server's scripts (no inline script, no eval: a query, a file name
# or a link's parameter that reached the page as HTML would still run nothing) and loads nothing
# from another origin. MapLibre runs its workers from blob: URLs and decodes tiles as blob: images;
# the page's icon is a data: URL.
VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; child-src blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'"
)


class StaticAssets(StaticFiles):
    """`/static`: the viewer's and the docs' files under the page caching policy, tagged by
    Starlette's name of the file's version (its mtime and size), weak since GZip may encode them."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(bytes_ranges_only(scope), receive, send)

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result)
        return conditional(Request(scope), response, "page", "W/" + response.headers["etag"])


def bytes_ranges_only(scope: Scope) -> Scope:
    """`scope` without a Range of a unit other than bytes (and its If-Range): RFC 9110 14.2, a
    server ignores a range unit it does not understand, and Starlette answered `items=0-5` 400."""
    asked = next((value for name, value in scope.get("headers", []) if name == b"range"), None)
    if asked is None or asked.partition(b"=")[0].strip().lower() == b"bytes":
        return scope
    return {**scope, "headers": [(name, value) for name, value in scope["headers"] if name not in RANGE_HEADERS]}


def prefers_json(accept: str) -> bool:
    """Whether an Accept header ranks application/json above text/html (RFC 9110 12.5.1: the most
    specific range that matches a type gives its quality). A browser's, `*/*` or none: no."""
    quality = {"application/json": 0.0, "text/html": 0.0}
    specificity = dict.fromkeys(quality, -1)
    for media_range, q in weighted(accept):
        for media_type in quality:
            kind = media_type.split("/")[0]
            rank = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(media_range, -1)
            if rank > specificity[media_type]:
                specificity[media_type], quality[media_type] = rank, q
    return quality["application/json"] > quality["text/html"]


@router.get("/", include_in_schema=False)
async def index(
    request: Request,
    f: Annotated[Literal["html", "json"] | None, Query(description="json: the OGC API landing page.")] = None,
) -> Response:
    """The viewer, or the OGC API landing page for a client that asks for JSON (`f=json`, or an
    Accept header that prefers it): a GIS client opens the server's URL and finds the layers."""
    if f == "json" or (f is None and prefers_json(request.headers.get("accept", ""))):
        page: Response = landing_page(request)
    else:
        page = HTMLResponse((STATIC / "index.html").read_bytes())
        page.headers["Content-Security-Policy"] = VIEWER_CSP
    answer = conditional(request, page, "page")
    answer.headers.add_vary_header("Accept")  # on a 304 too: a cache keeps one answer per Accept
    return answer


# Relative URLs, like the viewer's: they resolve under whatever path a proxy serves the app at.
@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> Response:
    """Swagger UI over the OpenAPI document. validatorUrl off: its badge calls an outside host."""
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url.lstrip("/"),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url="static/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url="static/swagger-ui/swagger-ui.css",
        swagger_favicon_url="static/swagger-ui/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return conditional(request, page, "page")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> Response:
    """ReDoc over the OpenAPI document, in the browser's own fonts (no font downloads)."""
    page = get_redoc_html(
        openapi_url=request.app.openapi_url.lstrip("/"),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url="static/redoc/redoc.standalone.js",
        redoc_favicon_url="static/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return conditional(request, page, "page")


BASEMAP_RESPONSES = {
    200: {"content": {"image/webp": BINARY}},
    **errors(404, 422, notes={404: "No imagery, or outside the grid."}),
}


# Before the plain route, as the tile routes: `{y}.webp` would read `0@2x` as the y, and refuse it.
@router.get(
    "/basemap/{z}/{x}/{y}@{scale}x.webp",
    response_class=Response,
    responses=BASEMAP_RESPONSES,
    summary="Basemap tile at a pixel ratio: @2x is 512 px (WebP), for a high-DPI screen",
)
async def basemap_scaled(
    z: Integer, x: Integer, y: Integer, scale: Scale, request: Request, service: ServiceDep
) -> Response:
    return await _basemap(request, service, z, x, y, TILE_SIZES[0] * scale)


@router.get(
    "/basemap/{z}/{x}/{y}.webp",
    response_class=Response,
    responses=BASEMAP_RESPONSES,
    summary="Basemap tile of the store's imagery (WebMercatorQuad, 256 px, WebP)",
)
async def basemap(z: Integer, x: Integer, y: Integer, request: Request, service: ServiceDep) -> Response:
    return await _basemap(request, service, z, x, y, TILE_SIZES[0])


async def _basemap(request: Request, service: ServiceDep, z: int, x: int, y: int, size: int) -> Response:
    check_tile("WebMercatorQuad", z, x, y)
    body = await service.basemap(z, x, y, size)
    if body is None:
        raise HTTPException(404, "this server has no imagery for a basemap (set SOUNDSCAPE_IMAGERY)")
    return conditional(request, Response(body, media_type="image/webp"), "tile")
