"""The web viewer (`GET /`, static files, vendored MapLibre) and its basemap: tiles of the
store's own imagery, so the page works with no other server and offline."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

from server.http import BINARY, errors
from server.params import check_tile
from server.routes.deps import ServiceDep, SettingsDep

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["viewer"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/basemap/{z}/{x}/{y}.webp", response_class=Response,
            responses={200: {"content": {"image/webp": BINARY}},
                       **errors(404, 422, notes={404: "No imagery, or outside the grid."})},
            summary="Basemap tile of the store's imagery (WebMercatorQuad, 256 px, WebP)")
async def basemap(z: int, x: int, y: int, service: ServiceDep, settings: SettingsDep) -> Response:
    check_tile("WebMercatorQuad", z, x, y)
    body = await service.basemap(z, x, y)
    if body is None:
        raise HTTPException(404, "this server has no imagery for a basemap (set SOUNDSCAPE_IMAGERY)")
    return Response(body, media_type="image/webp", headers={"Cache-Control": settings.cache_control})
