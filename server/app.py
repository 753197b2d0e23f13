"""The FastAPI application: tiles, TileJSON and health (docs/api.md)."""
from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from model.bundle import Bundle
from model.text import normalise_text
from model.tiles import MAX_LEVEL, tile_is_valid
from precompute.store import Store
from server.cache import cache_key, make_cache
from server.render import colormap_names, encode_png
from server.settings import Settings
from server.soundscape import CELLS_PER_TILE_LOG2, Metadata, SoundscapeService

Layer = Literal["heatmap", "uncertainty"]
DEFAULT_COLORMAPS = {"heatmap": "magma", "uncertainty": "viridis"}
HourParam = Annotated[int | None, Query(ge=0, le=23, description="Hour of day, 0-23; absent = unknown.")]
MonthParam = Annotated[int | None, Query(ge=1, le=12, description="Month, 1-12; absent = unknown.")]
SourceParam = Annotated[str | None, Query(description="Audio source from the bundle's vocabulary.")]
TextParam = Annotated[str | None, Query(max_length=500, description="Text query, e.g. birdsong.")]


def parse_rescale(text: str | None, default: tuple[float, float]) -> tuple[float, float]:
    if text is None:
        return default
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(422, f"rescale must be two numbers min,max, not {text!r}") from None
    if not lo < hi:
        raise HTTPException(422, f"rescale needs min < max, got {text!r}")
    return lo, hi


def create_app(settings: Settings) -> FastAPI:
    bundle = Bundle(settings.bundle, threads=settings.threads)
    store = Store(settings.store)
    service = SoundscapeService(bundle, store)
    cache = make_cache(settings.redis_url, settings.cache_ttl_s, settings.lru_bytes)
    maxzoom = MAX_LEVEL
    app = FastAPI(title="Soundscape tiles", version="0.1.0",
                  description="Heatmap and uncertainty tiles of where a sound is likely to be heard.")
    app.state.service = service
    app.state.cache = cache

    def metadata(hour: int | None, month: int | None, source: str | None) -> Metadata:
        try:
            source_id = None if source is None else bundle.sources.id(source)
        except ValueError as exc:
            raise HTTPException(422, f"source: {exc}") from None
        return Metadata(hour=hour, month=month, source=source_id)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "bundle": bundle.id, "store": store.id, "cache": cache.name}

    @app.get("/tiles/{z}/{x}/{y}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {}, 422: {}})
    def tile(z: Annotated[int, Path(ge=0)], x: Annotated[int, Path(ge=0)], y: Annotated[int, Path(ge=0)],
             q: TextParam = None, hour: HourParam = None, month: MonthParam = None,
             source: SourceParam = None, layer: Layer = "heatmap",
             colormap_name: str | None = None, rescale: str | None = None) -> Response:
        if not tile_is_valid(z, x, y, maxzoom):
            raise HTTPException(404, f"tile {z}/{x}/{y} is outside the WebMercatorQuad grid (zoom 0-{maxzoom})")
        if layer == "heatmap" and not (q and q.strip()):
            raise HTTPException(422, "q (a text query, e.g. q=birdsong) is required for the heatmap layer")
        colormap = colormap_name or DEFAULT_COLORMAPS[layer]
        if colormap not in colormap_names():
            raise HTTPException(422, f"unknown colormap_name {colormap!r}")
        default_range = (0.0, 1.0) if layer == "heatmap" else tuple(store.manifest["uncertainty_range"])
        lo, hi = parse_rescale(rescale, default_range)
        meta = metadata(hour, month, source)
        text = normalise_text(q) if layer == "heatmap" else None
        key = cache_key("tile", {
            "bundle": bundle.id, "store": store.id, "z": z, "x": x, "y": y, "layer": layer,
            "q": text, "hour": hour, "month": month, "source": source,
            "colormap": colormap, "rescale": [lo, hi], "format": "png"})
        body = cache.get(key)
        if body is None:
            query = service.text_query(text) if text else None
            values = service.tile_values(z, x, y, meta, layer, query)
            body = encode_png(values, lo, hi, colormap)
            cache.set(key, body)
        return Response(body, media_type="image/png")

    @app.get("/tilejson.json")
    def tilejson(request: Request, q: TextParam = None, hour: HourParam = None, month: MonthParam = None,
                 source: SourceParam = None, layer: Layer = "heatmap") -> JSONResponse:
        metadata(hour, month, source)
        params = {k: v for k, v in dict(q=q, hour=hour, month=month, source=source, layer=layer).items()
                  if v is not None}
        base = str(request.base_url).rstrip("/")
        suffix = f"?{urlencode(params)}" if params else ""
        return JSONResponse({
            "tilejson": "3.0.0",
            "name": f"soundscape {layer}" + (f": {q}" if q else ""),
            "tiles": [f"{base}/tiles/{{z}}/{{x}}/{{y}}.png{suffix}"],
            "minzoom": max(0, store.minlevel - CELLS_PER_TILE_LOG2),
            "maxzoom": store.maxlevel,
            "bounds": list(store.bounds),
            "attribution": "Imagery: NASA Blue Marble NG; model: soundscape-tiles",
        })

    return app

