"""How much of the colour ramp a plain XYZ URL uses, as GDAL sees it (issue 10).

GDAL's TMS minidriver reads the zoom-2 mosaic (4 x 4 tiles) of the tile URL exactly as a user
writes it (`/tiles/{z}/{x}/{y}.png?q=birdsong&hour=6`, no `rescale`); each pixel's colour is
mapped back to its position on the ramp (0 = lowest colour, 1 = highest). Measure, over land
pixels with data: the 99th percentile should lie in the top fifth of the ramp (>= 0.8: the
places where the sound is most likely stand out) and the median in the lower half (<= 0.5: the
rest of the map is not one saturated colour).

    .venv/bin/python -m benchmarks.colour_use --url http://127.0.0.1:8000 [--query "birdsong" ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from pyproj import Transformer

from server.render import palette

EARTH = 20037508.342789244
PROMPTS = [
    "birdsong",
    "waves crashing on rocks",
    "busy traffic in the street",
    "birds singing at dawn",
    "wind in the trees",
    "a crowded street market",
]


def tms_xml(url_template: str, zoom: int) -> str:
    """GDAL_WMS description of an XYZ URL (`{z}/{x}/{y}` placeholders) at one zoom level."""
    server = url_template.replace("{z}", "${z}").replace("{x}", "${x}").replace("{y}", "${y}")
    return (
        f'<GDAL_WMS><Service name="TMS"><ServerUrl>{escape(server)}</ServerUrl></Service>'
        f"<DataWindow><UpperLeftX>{-EARTH}</UpperLeftX><UpperLeftY>{EARTH}</UpperLeftY>"
        f"<LowerRightX>{EARTH}</LowerRightX><LowerRightY>{-EARTH}</LowerRightY>"
        f"<TileLevel>{zoom}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
        f"<YOrigin>top</YOrigin></DataWindow><Projection>EPSG:3857</Projection>"
        f"<BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>4</BandsCount>"
        f"<ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes></GDAL_WMS>"
    )


def read_mosaic(url_template: str, zoom: int = 2) -> tuple[np.ndarray, rasterio.Affine]:
    """(RGBA (4, H, W), transform) of the whole world at `zoom`, read by GDAL."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tms.xml"
        path.write_text(tms_xml(url_template, zoom), encoding="utf-8")
        with rasterio.Env(GDAL_HTTP_TIMEOUT=60), rasterio.open(path) as src:
            return src.read(), src.transform


def ramp_positions(rgba: np.ndarray, colormap: str) -> np.ndarray:
    """Each opaque pixel's position on the colormap's ramp (0..1); NaN where transparent."""
    # The server's own palette (server/render.py): entries 1..255 are the ramp, 0 is no data.
    table = np.frombuffer(palette(colormap)[0], dtype=np.uint8).reshape(256, 3)[1:].astype(np.float32)
    # A mosaic holds few distinct colours: match those, not every pixel (a 1024 x 1024 mosaic
    # against the whole table was a 3 GB temporary and most of a minute).
    colours, each = np.unique(rgba[:3].reshape(3, -1).T, axis=0, return_inverse=True)
    nearest = np.argmin(((colours[:, None, :].astype(np.float32) - table[None, :, :]) ** 2).sum(-1), axis=1)
    positions = nearest[each.ravel()] / 254.0
    positions[rgba[3].ravel() == 0] = np.nan
    return positions.reshape(rgba.shape[1:])


def land_mask(shape: tuple[int, int], transform: rasterio.Affine) -> np.ndarray:
    # Imported here: the package reads its global mask (about 9 s of CPU) on import, and
    # tests/test_clients.py imports this module for its other functions.
    from global_land_mask import globe

    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = transform * (cols + 0.5, rows + 0.5)
    lon, lat = Transformer.from_crs(3857, 4326, always_xy=True).transform(x, y)
    lat = np.clip(lat, -89.9, 89.9)
    return globe.is_land(lat, np.clip(lon, -180, 179.999))


def colour_use(base: str, query: str, hour: int | None = 6, zoom: int = 2, colormap: str = "magma") -> dict:
    """The measure for one query's plain XYZ URL."""
    url = f"{base}/tiles/{{z}}/{{x}}/{{y}}.png?q={query.replace(' ', '%20')}" + (
        f"&hour={hour}" if hour is not None else ""
    )
    rgba, transform = read_mosaic(url, zoom)
    positions = ramp_positions(rgba, colormap)
    land = land_mask(positions.shape, transform) & np.isfinite(positions)
    values = positions[land]
    return {
        "query": query,
        "hour": hour,
        "url": url,
        "land_pixels": int(land.sum()),
        "p99": float(np.percentile(values, 99)),
        "median": float(np.median(values)),
        "top_fifth_share": float((values >= 0.8).mean()),
        "lowest_colour_share": float((values == 0).mean()),
        "highest_colour_share": float((values == 1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of a running server")
    parser.add_argument("--query", action="append", help="a text query (repeatable; default: six prompts)")
    parser.add_argument("--hour", type=int, default=6, help="hour= of the URL (default 6, as the README's)")
    args = parser.parse_args()
    rows = [colour_use(args.url, q, args.hour) for q in (args.query or PROMPTS)]
    for row in rows:
        ok = row["p99"] >= 0.8 and row["median"] <= 0.5
        print(
            f"{row['query']!r:34} p99 {row['p99']:.2f}  median {row['median']:.2f}  "
            f"top fifth {row['top_fifth_share']:.1%}  {'ok' if ok else 'FAIL'}"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
