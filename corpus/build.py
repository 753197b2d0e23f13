"""`soundscape corpus build`: assets -> place rasters -> clip bank -> samples -> imagery cells.

A sample is a location, a source (the recordist, drawn by place: corpus/sources.py), a month,
a local hour (drawn from the source's recording hours), the imagery cell holding the location at
one level (cut by runtime.imagery, the reader precompute and the server use), audio mixture
recipes of real clips chosen by the soundscape rules averaged over that cell as the source keeps
them (one recipe from the training recordings, one from the held-out ones), and a caption.
Every step's output is kept, so a re-run resumes where the last one stopped; the sample table is
a pure function of the seed, the assets and the parameters.

On-disk format: docs/corpus.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from corpus import assets as asset_registry
from corpus import rules, sources
from corpus.captions import TEMPLATES, caption
from corpus.clips import (
    AUDIO_ASSETS,
    HELD_OUT_SHARE,
    POOLS,
    SAMPLE_RATE,
    Recording,
    build_bank,
    load_bank,
    split_recordings,
)
from corpus.errors import CorpusError
from corpus.mixing import layer_events
from corpus.places import PLACE_ASSETS, UNREADABLE, PlaceAttributes, Places, derive, places_sources
from runtime.files import atomic_write, file_sha256, make_folder
from runtime.imagery import Imagery
from runtime.tiles import MERCATOR_LAT_LIMIT, tile_of

FORMAT = "soundscape-demo-corpus/2"
# Where samples are drawn: interior land, the coastal band (within COAST_KM on either side), the
# open sea and lit places (night lights >= LIT), in these shares. Coasts and towns are rare by
# area, so they are over-sampled on purpose; within a stratum points are uniform by area.
STRATA = {"land": 0.5, "coast": 0.2, "sea": 0.12, "lit": 0.18}
COAST_KM = 50.0
LIT = 0.25
AREA_POINTS = 200_000  # uniform points that estimate each stratum's area for a share given as "area"
MAX_LAYERS = 4  # sound classes mixed into one sample
TOWN = np.array([rules.CLASSES.index(c) for c in sources.GROUPS["town"]])
CELL_GRID = 8  # the rules are averaged over CELL_GRID x CELL_GRID points of a sample's cell
IMAGE_CHUNK = 512  # cells per resumable image chunk


@dataclass
class BuildConfig:
    out: Path
    assets: Path
    imagery: Path
    samples: int = 20000
    levels: tuple[int, ...] = (4, 5, 6, 7)
    image_size: int = 64
    duration_s: float = 2.4  # one aisfx block (100 frames): what configs/demo.yaml trains on
    seed: int = 0
    audio_assets: tuple[str, ...] = AUDIO_ASSETS
    strata: dict[str, float | str] = field(default_factory=lambda: dict(STRATA))  # shares, or "area"
    max_town_layers: int | None = None  # None: every town sound heard at the place is mixed in
    per_map_cell: bool = False  # within a stratum, points uniform over the web-mercator map, not by area

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(out=str(self.out), assets=str(self.assets), imagery=str(self.imagery))
        return d


# ---------------------------------------------------------------------------------------------
# Locations, cells and times.


def _uniform_points(
    bounds: tuple[float, float, float, float], m: int, rng: np.random.Generator, per_map_cell: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """m points uniform by area in bounds (west may exceed east, as in draw_locations, after its
    clamp to web mercator's latitudes), or with per_map_cell uniform over the web-mercator map,
    so that every map cell of a level is as likely (a cell at 60 degrees gets 4x the points per
    km^2 of one at the equator)."""
    west, south, east, north = bounds
    if per_map_cell:
        y = rng.uniform(np.arcsinh(np.tan(np.radians(south))), np.arcsinh(np.tan(np.radians(north))), m)
        lat = np.degrees(np.arctan(np.sinh(y)))
    else:
        lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(south)), np.sin(np.radians(north)), m)))
    lon = rng.uniform(west, east, m)
    return lat, np.where(lon > 180, lon - 360.0, lon)


def _strata_masks(places: Places, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Which points fall in each stratum of STRATA (they partition the map)."""
    land, coast = places.is_land(lat, lon), places.coast_km(lat, lon)
    lit = land & (places.lights(lat, lon) >= LIT)
    return {
        "land": land & ~lit & (coast >= COAST_KM),
        "coast": ~lit & (coast < COAST_KM),
        "sea": ~land & (coast >= COAST_KM),
        "lit": lit,
    }


def resolve_shares(
    places: Places,
    bounds: tuple[float, float, float, float],
    shares: dict[str, float | str],
    rng: np.random.Generator,
    points: int = AREA_POINTS,
    per_map_cell: bool = False,
) -> dict[str, float]:
    """Every stratum's share of the samples as a number: a stratum given as "area" takes, of what
    the numbered strata leave, a part in proportion to its area within bounds (estimated from
    `points` uniform points), so those strata are sampled at one density, independent of what is
    heard there. Strata not named take none."""
    numbered = {k: float(v) for k, v in shares.items() if v != "area"}
    by_area = [k for k, v in shares.items() if v == "area"]
    resolved = {k: numbered.get(k, 0.0) for k in STRATA}
    if by_area:
        masks = _strata_masks(places, *_uniform_points(bounds, points, rng, per_map_cell))
        area = np.array([masks[k].mean() for k in by_area])
        if area.sum() == 0:
            raise CorpusError(f"the imagery bounds hold none of {', '.join(by_area)}, the strata given by area")
        left = 1.0 - sum(numbered.values())
        for k, a in zip(by_area, area / area.sum() * left, strict=True):
            resolved[k] = float(a)
    return resolved


def draw_locations(
    places: Places,
    n: int,
    bounds: tuple[float, float, float, float],
    shares: dict[str, float | str],
    rng: np.random.Generator,
    per_map_cell: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon, stratum index into STRATA) of n points, uniform by area within each stratum
    (with per_map_cell, uniform over the web-mercator map), inside `bounds` (west, south, east,
    north; west > east across the antimeridian, as an imagery's footprint is: its points lie on
    either side of 180 degrees, where they were drawn over every longitude between), and within
    web mercator's latitudes, where the map has cells (CorpusError for bounds wholly past them).
    `shares` as resolve_shares reads them."""
    west, south, east, north = bounds
    if west > east:
        east += 360.0  # drawn over west..180 and on, then wrapped to -180..east
    if south >= MERCATOR_LAT_LIMIT or north <= -MERCATOR_LAT_LIMIT:
        raise CorpusError(
            f"the imagery lies past web mercator's edge ({_latitude(south)}..{_latitude(north)}; the map's "
            f"cells end at {MERCATOR_LAT_LIMIT:.2f} N and S): no sample drawn there has a cell"
        )
    south, north = max(south, -MERCATOR_LAT_LIMIT), min(north, MERCATOR_LAT_LIMIT)
    clamped = (west, south, east, north)
    numbers = resolve_shares(places, clamped, shares, rng, per_map_cell=per_map_cell)
    names = list(STRATA)
    quota = dict(
        zip(names, np.floor(np.array([numbers[k] for k in names]) / sum(numbers.values()) * n).astype(int), strict=True)
    )
    quota[max(names, key=lambda k: numbers[k])] += n - sum(quota.values())
    picked: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for _ in range(200):
        if all(sum(len(a) for a in picked[k]) >= quota[k] for k in names):
            break
        lat, lon = _uniform_points(clamped, 4 * n + 1000, rng, per_map_cell)
        masks = _strata_masks(places, lat, lon)
        for k in names:
            picked[k].append(np.stack([lat[masks[k]], lon[masks[k]]], axis=1))
    out = []
    for s, k in enumerate(names):
        points = np.concatenate(picked[k])[: quota[k]]
        if len(points) < quota[k]:
            raise CorpusError(
                f"the imagery bounds hold too little {k} to draw {quota[k]} samples; "
                f"lower --samples or change the {k} share"
            )
        out.append(np.column_stack([points, np.full(len(points), s)]))
    table = np.concatenate(out)
    table = table[rng.permutation(len(table))]
    return table[:, 0], table[:, 1], table[:, 2].astype(np.int8)


def _latitude(lat: float) -> str:
    """86 N, 12.5 S."""
    return f"{abs(lat):g} {'S' if lat < 0 else 'N'}"


def cell_points(level: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon), each (N, k*k): a k x k grid of points evenly spaced in web-mercator inside
    each cell (level, x, y)."""
    n = np.left_shift(1, np.asarray(level, np.int64)).astype(np.float64)[:, None]
    offsets = (np.arange(k) + 0.5) / k
    fx, fy = (a.ravel()[None, :] for a in np.meshgrid(offsets, offsets))
    lon = (np.asarray(x)[:, None] + fx) / n * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * (np.asarray(y)[:, None] + fy) / n))))
    return lat, lon


def cell_rules(
    places: Places,
    lat: np.ndarray,
    level: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    month: np.ndarray,
    hour: np.ndarray,
    k: int = CELL_GRID,
    chunk: int = 1024,
) -> rules.Evaluation:
    """The rules at each sample's month and hour, averaged over a k x k grid of its cell.

    The image shows the whole cell, so where in it the point lies (which side of a coastline,
    inside a city or beside it) cannot be seen: with the point's own rules, perfect classifiers
    could reach sat->audio R@10% 0.64 on the test split; with the cell's, 0.89
    (docs/demo-model.md). Rules of sounds that carry (rules.CARRYING: traffic, trains, ...) take
    the geometric mean of their mean and their maximum over the cell: a town on 4 % of a cell is
    heard at 0.2 of a city's level, not 0.04 (with plain means traffic was mixed into 1 % of the
    samples and a traffic prompt barely followed night lights). The season is the sample's own."""
    carrying = np.array([r.sound in rules.CARRYING for r in rules.RULES])
    activations = []
    for start in range(0, len(level), chunk):
        rows = slice(start, start + chunk)
        grid_lat, grid_lon = cell_points(level[rows], x[rows], y[rows], k)
        grid = rules.evaluate(
            places.attributes(grid_lat.ravel(), grid_lon.ravel()),
            np.repeat(month[rows], k * k),
            np.repeat(hour[rows], k * k),
        )
        per_point = grid.rules.reshape(*grid_lat.shape, -1)
        cell = per_point.mean(axis=1)
        cell[:, carrying] = np.sqrt(cell[:, carrying] * per_point[:, :, carrying].max(axis=1))
        activations.append(cell)
    return rules.from_activations(np.concatenate(activations), rules.season(lat, month))


# ---------------------------------------------------------------------------------------------
# Sounds: which classes, which clips, at what gains, and the caption.


def choose_sounds(
    weights: np.ndarray, available: np.ndarray, rng: np.random.Generator, max_town: int | None = None
) -> list[tuple[int, float]]:
    """(class index, gain dB) of the layers of one sample, loudest first.

    Every class at >= 10% of the strongest is heard (up to MAX_LAYERS, as a real recording holds
    every active source): they are ordered by draws in proportion to the squared weights (so
    the strongest source usually leads, and sometimes another does), and each after the lead is
    quieter by its weight ratio plus 1..4 dB. Drawing only one to three of them left the audio
    too weakly tied to its place: with perfect classifiers on both sides, sat->audio R@10%
    could not pass 0.72 (docs/demo-model.md). `max_town` keeps only the first that many town
    sounds of the draw, so town sounds that share places are heard apart (an ablation of
    issue 14: docs/demo-model.md, "The cause, measured").
    """
    w = np.where(available, weights, 0.0)
    candidates = np.flatnonzero(w >= 0.1 * w.max()) if w.max() > 0 else np.array([], int)
    if len(candidates) == 0:
        return []
    p = w[candidates] ** 2
    order = rng.choice(candidates, size=min(len(candidates), MAX_LAYERS), replace=False, p=p / p.sum())
    if max_town is not None:
        town = np.isin(order, TOWN)
        order = order[~town | (np.cumsum(town) <= max_town)]
    lead = w[order[0]]
    layers = [(int(order[0]), 0.0)]
    for c in order[1:]:
        gain = float(np.clip(20 * np.log10(w[c] / lead), -15.0, 0.0) - rng.uniform(1.0, 4.0))
        layers.append((int(c), gain))
    return sorted(layers, key=lambda t: -t[1])


def event_columns(pool: str) -> str:
    """The prefix of a clip pool's recipe columns in samples.npz ("event_", "held_out_event_")."""
    return "event_" if pool == "train" else f"{pool}_event_"


@dataclass
class Recipes:
    """Per-sample sounds, captions and, per clip pool (clips.POOLS), the events of its recipe
    (CSR: sample i owns events[start[i]:start[i+1]])."""

    layers: np.ndarray  # (N, MAX_LAYERS) class index, -1 where unused
    layer_gain_db: np.ndarray  # (N, MAX_LAYERS)
    event_start: dict[str, np.ndarray]  # pool -> (N + 1,)
    events: dict[str, dict[str, np.ndarray]]  # pool -> column -> values
    captions: np.ndarray
    template: np.ndarray


def make_recipes(
    evaluation: rules.Evaluation,
    p: PlaceAttributes,
    hour: np.ndarray,
    pools: dict[str, dict[str, list[Recording]]],
    n_frames: int,
    rng: np.random.Generator,
    max_town: int | None = None,
) -> Recipes:
    """Layers, gains and caption of each sample from its class weights, and one recipe per clip
    pool playing those layers: the same sounds from the training recordings or the held-out ones.
    Each pool's events come from their own random stream, so the training recipes do not depend
    on the held-out pool. `max_town`: choose_sounds."""
    available = np.array([bool(pools["train"][c]) for c in rules.CLASSES])
    n = len(hour)
    layers = np.full((n, MAX_LAYERS), -1, np.int8)
    gains = np.zeros((n, MAX_LAYERS), np.float32)
    streams = {pool: np.random.default_rng(rng.integers(2**63)) for pool in POOLS}
    starts = {pool: [0] for pool in POOLS}
    events: dict[str, list] = {pool: [] for pool in POOLS}
    captions, templates = [], []
    for i in range(n):
        sounds = choose_sounds(evaluation.classes[i], available, rng, max_town)
        for j, (c, g) in enumerate(sounds):
            layers[i, j], gains[i, j] = c, g
            for pool in POOLS:
                events[pool] += layer_events(pools[pool][rules.CLASSES[c]], g, n_frames, SAMPLE_RATE, streams[pool])
        for pool in POOLS:
            starts[pool].append(len(events[pool]))
        audible = [rules.CLASSES[c] for c, g in sounds if g > -12.0]
        text, template = caption(audible, p, i, float(hour[i]), int(evaluation.season[i]), rng)
        captions.append(text)
        templates.append(template)
    columns: dict[str, dict[str, np.ndarray]] = {}
    for pool in POOLS:
        ev = np.array(events[pool], dtype=np.float64).reshape(-1, 5)
        columns[pool] = {
            "clip": ev[:, 0].astype(np.int32),
            "src": ev[:, 1].astype(np.int64),
            "dst": ev[:, 2].astype(np.int32),
            "length": ev[:, 3].astype(np.int32),
            "gain_db": ev[:, 4].astype(np.float32),
        }
    return Recipes(
        layers,
        gains,
        {pool: np.array(starts[pool], np.int64) for pool in POOLS},
        columns,
        np.array(captions),
        np.array(templates, np.int8),
    )


# ---------------------------------------------------------------------------------------------
# Imagery cells: cut once per distinct cell through runtime.imagery, in resumable chunks.


def image_chunks_dir(out: Path, size: int, cells: np.ndarray) -> Path:
    """Where an unfinished cut of these cells keeps its chunks (so a re-run resumes it)."""
    digest = hashlib.sha256(np.ascontiguousarray(cells, dtype=np.int32).tobytes()).hexdigest()[:12]
    return out / f"images-{size}-{digest}.part"


def cut_images(
    imagery: Imagery, cells: np.ndarray, size: int, out: Path, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, size, size, 3) uint8, gsd (M,)) of cells (M, 3) = (z, x, y), written to
    out as images-{size}.npy (+ -gsd.npy, -cells.npy); cells without imagery get gsd NaN and
    zero pixels. Stored images are reused only for the very same cells."""
    cells = np.ascontiguousarray(cells, dtype=np.int32)
    final, gsd_path, cells_path = (out / f"images-{size}{suffix}.npy" for suffix in ("", "-gsd", "-cells"))
    if final.exists() and gsd_path.exists() and cells_path.exists() and np.array_equal(np.load(cells_path), cells):
        return np.load(final, mmap_mode="r"), np.load(gsd_path)
    parts = image_chunks_dir(out, size, cells)
    parts.mkdir(parents=True, exist_ok=True)
    chunks = range(0, len(cells), IMAGE_CHUNK)
    for start in tqdm(chunks, desc=f"imagery cells ({len(cells)} at {size} px)", unit="chunk", disable=not progress):
        path = parts / f"{start // IMAGE_CHUNK:05d}.npz"
        if path.exists():
            continue
        block = cells[start : start + IMAGE_CHUNK]
        images = np.zeros((len(block), size, size, 3), np.uint8)
        gsd = np.full(len(block), np.nan, np.float32)
        for j, (z, x, y) in enumerate(block):
            cell = imagery.cell(int(z), int(x), int(y), size)
            if cell is not None:
                images[j], gsd[j] = cell.rgb, cell.gsd
        atomic_write(path, functools.partial(np.savez, images=images, gsd=gsd))
    loaded = [np.load(parts / f"{s // IMAGE_CHUNK:05d}.npz") for s in chunks]
    images = np.concatenate([d["images"] for d in loaded]) if loaded else np.zeros((0, size, size, 3), np.uint8)
    gsd = np.concatenate([d["gsd"] for d in loaded]) if loaded else np.zeros(0, np.float32)
    _save_atomic(final, images)
    _save_atomic(gsd_path, gsd)
    _save_atomic(cells_path, cells)
    shutil.rmtree(parts)
    return np.load(final, mmap_mode="r"), gsd


def _save_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array))


# ---------------------------------------------------------------------------------------------
# The build.


def held_sources(path: Path) -> dict | None:
    """The asset versions places.npz at `path` was derived from; None when it is damaged (cut
    short, or another file), so that a build derives it again."""
    try:
        with np.load(path) as data:
            return places_sources(data)
    except UNREADABLE:
        return None


def ensure_places(assets_root: Path, path: Path, progress: bool = True) -> Places:
    """The place rasters at `path` (places.npz), acquiring the place assets and deriving it when
    missing or made from other asset versions. Map checks of a trained bundle can call this to
    ask the rules' own questions (coast distance, lights, land cover) of the same rasters."""
    wanted = {name: asset_registry.ASSETS[name].sha256 for name in PLACE_ASSETS}
    if path.exists() and held_sources(path) == wanted:
        return Places(path)
    folders = asset_registry.ensure(list(PLACE_ASSETS), Path(assets_root), progress)
    if progress:
        print("deriving the place rasters (land cover, climate, coast, lights, population) ...", flush=True)
    derive(folders, path)
    return Places(path)


def _bank(cfg: BuildConfig, folders: dict[str, Path], progress: bool):
    table = cfg.out / "clips.json"
    audio = {name: folders[name] for name in cfg.audio_assets}
    if table.exists():
        ids = {c["id"].split("/", 1)[0] for c in json.loads(table.read_text(encoding="utf-8"))["clips"]}
        if ids <= set(audio) and (cfg.out / "clips.npy").exists():
            return load_bank(cfg.out)
    build_bank(audio, cfg.out, progress)
    return load_bank(cfg.out)


# Cells are cut from imagery of a few km a pixel; past this a cell image only costs memory
# (20,000 samples of 1024 px RGB are 63 GB before any training).
MAX_IMAGE_SIZE = 1024
# 50x the demo's 20,000 (about 20 s to draw); past it a build is hours of mixing and its arrays
# outgrow a machine's memory, so a slip of digits is refused before the assets are fetched.
MAX_SAMPLES = 1_000_000
MAX_CORPUS_LEVEL = 12  # cells of level 12 are ~10 km: finer than the place rasters (0.05 deg) tell apart


def check_strata(shares: dict[str, float | str]) -> None:
    """CorpusError unless `shares` names strata of STRATA with shares >= 0 or "area", and leaves
    the strata given by area a part of the samples to share."""
    unknown = set(shares) - set(STRATA)
    if unknown:
        raise CorpusError(f"--strata: unknown stratum {sorted(unknown)}; choose from {list(STRATA)}")
    numbers = [v for v in shares.values() if v != "area"]
    if not all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in numbers):
        raise CorpusError('--strata: each share must be a number >= 0 or "area"')
    total = sum(float(v) for v in numbers)
    if len(numbers) < len(shares) and total >= 1:
        raise CorpusError('--strata: the numbered shares must sum to less than 1 to leave the "area" strata some')
    if len(numbers) == len(shares) and total <= 0:
        raise CorpusError("--strata: the shares must not all be 0")


def _check(cfg: BuildConfig) -> None:
    if not 1 <= cfg.samples <= MAX_SAMPLES:
        raise CorpusError(f"--samples must lie in 1..{MAX_SAMPLES:,}")
    if not cfg.levels or min(cfg.levels) < 0 or max(cfg.levels) > MAX_CORPUS_LEVEL:
        raise CorpusError(f"--levels must lie within 0..{MAX_CORPUS_LEVEL} (e.g. 4-7)")
    if not 8 <= cfg.image_size <= MAX_IMAGE_SIZE or cfg.duration_s <= 0:
        raise CorpusError(f"--image-size must lie in 8..{MAX_IMAGE_SIZE} and --duration be positive")
    if cfg.max_town_layers is not None and cfg.max_town_layers < 1:
        raise CorpusError("--max-town-layers must be at least 1")
    check_strata(cfg.strata)
    unknown = set(cfg.audio_assets) - set(AUDIO_ASSETS)
    if unknown:
        raise CorpusError(f"unknown audio asset(s) {sorted(unknown)}; choose from {list(AUDIO_ASSETS)}")


def build(cfg: BuildConfig, progress: bool = True) -> dict:
    """Build (or finish building) the corpus in cfg.out; returns its manifest."""
    _check(cfg)
    make_folder(cfg.out, "--out")  # before minutes of work for a corpus it could not write
    if not Path(cfg.imagery).exists():
        from corpus.bluemarble import build_geotiff

        print(f"building the Blue Marble GeoTIFF at {cfg.imagery} ...", flush=True)
        build_geotiff(cfg.imagery)
    imagery = Imagery(cfg.imagery)
    folders = asset_registry.ensure(list(PLACE_ASSETS) + list(cfg.audio_assets), Path(cfg.assets), progress)
    places = ensure_places(cfg.assets, cfg.out / "places.npz", progress)
    _, clips, rate = _bank(cfg, folders, progress)
    pools = split_recordings(clips, cfg.seed)

    rng = np.random.default_rng(cfg.seed)
    lat, lon, stratum = draw_locations(places, cfg.samples, imagery.footprint, cfg.strata, rng, cfg.per_map_cell)
    level = rng.choice(np.array(cfg.levels), size=len(lat))
    x, y = tile_of(lat, lon, level)
    month = rng.integers(1, 13, len(lat)).astype(np.int8)
    attributes = places.attributes(lat, lon)
    source = sources.draw(attributes, rng)
    hour = sources.draw_hours(source, rng).astype(np.float32)
    at_place = cell_rules(places, lat, level, x, y, month, hour)
    evaluation = rules.Evaluation(at_place.rules, sources.class_weights(at_place.classes, source), at_place.season)
    recipes = make_recipes(evaluation, attributes, hour, pools, round(cfg.duration_s * rate), rng, cfg.max_town_layers)

    cells, cell_index = np.unique(np.stack([level, x, y], axis=1), axis=0, return_inverse=True)
    _, gsd = cut_images(imagery, cells, cfg.image_size, cfg.out, progress)
    keep = ~np.isnan(gsd[cell_index.ravel()])
    columns = {
        "lat": lat,
        "lon": lon,
        "level": level.astype(np.int8),
        "x": x.astype(np.int32),
        "y": y.astype(np.int32),
        "cell": cell_index.ravel().astype(np.int32),
        "month": month,
        "hour": hour,
        "stratum": stratum,
        "source": source,
        "landcover": attributes.landcover,
        "climate": attributes.climate,
        "land": attributes.land,
        "coast_km": attributes.coast_km,
        "lights": attributes.lights,
        "population": attributes.population,
        "season": evaluation.season.astype(np.int8),
        "rule_weights": evaluation.rules.astype(np.float16),
        "place_class_weights": at_place.classes.astype(np.float16),
        "class_weights": evaluation.classes.astype(np.float16),
        "layers": recipes.layers,
        "layer_gain_db": recipes.layer_gain_db,
        "captions": recipes.captions,
        "template": recipes.template,
        "keep": keep,
        "cells": cells.astype(np.int32),
    }
    for pool in POOLS:
        prefix = event_columns(pool)
        columns[f"{prefix}start"] = recipes.event_start[pool]
        columns.update({f"{prefix}{k}": v for k, v in recipes.events[pool].items()})
    atomic_write(cfg.out / "samples.npz", lambda tmp: np.savez(tmp, **columns))
    manifest = _manifest(cfg, imagery, folders, columns, clips, pools, rate)
    (cfg.out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _write_attribution(cfg.out, folders)
    return manifest


def _manifest(
    cfg: BuildConfig,
    imagery: Imagery,
    folders: dict[str, Path],
    columns: dict,
    clips: list,
    pools: dict[str, dict[str, list[Recording]]],
    rate: int,
) -> dict:
    digest = hashlib.sha256(file_sha256(Path(cfg.imagery)).encode())  # the cells' pixels come from it
    for name in ("samples.npz", "clips.json", "places.npz"):
        digest.update(file_sha256(cfg.out / name).encode())
    keep = columns["keep"]
    present = np.zeros(len(rules.CLASSES), int)
    for c in columns["layers"][keep].ravel():
        if c >= 0:
            present[c] += 1
    return {
        "format": FORMAT,
        "content_hash": digest.hexdigest()[:16],
        "config": cfg.to_json(),
        "samples": int(keep.sum()),
        "dropped_without_imagery": int((~keep).sum()),
        "sample_rate": rate,
        "duration_s": cfg.duration_s,
        "image_size": cfg.image_size,
        "levels": list(cfg.levels),
        "cells": len(columns["cells"]),
        "clips": len(clips),
        "imagery": {
            "path": str(Path(cfg.imagery).resolve()),
            "sha256": file_sha256(Path(cfg.imagery)),
            # bounds: a west < east box (every longitude across the antimeridian); footprint: where
            # the imagery lies, west > east where it crosses the antimeridian (RFC 7946).
            "bounds": list(imagery.bounds),
            "footprint": list(imagery.footprint),
        },
        "assets": {name: asset_registry.ASSETS[name].sha256 for name in sorted(folders)},
        "strata": {k: int(((columns["stratum"] == i) & keep).sum()) for i, k in enumerate(STRATA)},
        "classes": list(rules.CLASSES),
        "rules": [r.name for r in rules.RULES],
        "class_counts": dict(zip(rules.CLASSES, present.tolist(), strict=True)),
        "classes_without_clips": [c for c, n in zip(rules.CLASSES, present, strict=True) if n == 0],
        "templates": list(TEMPLATES),
        "sources": list(sources.NAMES),
        "source_counts": {n: int(((columns["source"] == i) & keep).sum()) for i, n in enumerate(sources.NAMES)},
        "recordings": {
            "held_out_share": HELD_OUT_SHARE,
            **{
                pool: {c: [f"{clips[r.clip].id}@{r.start}+{r.frames}" for r in rs] for c, rs in by_class.items() if rs}
                for pool, by_class in pools.items()
            },
        },
        "caption_source": "template",
    }


def _write_attribution(out: Path, folders: dict[str, Path]) -> None:
    """ATTRIBUTION.md beside the corpus: every asset's credit, licence and where its texts are."""
    lines = [
        "# Attribution of the demo corpus",
        "",
        "Derived from these public assets (licence texts in each asset folder):",
        "",
    ]
    for name, folder in sorted(folders.items()):
        a = asset_registry.ASSETS[name]
        lines += [
            f"## {name}",
            "",
            a.credit,
            "",
            f"- licence: {a.licence}",
            f"- package: {a.registry} {a.pin}",
            f"- folder: {folder}",
            "",
        ]
    lines += [
        "## imagery",
        "",
        "NASA Blue Marble Next Generation (public domain), credit NASA Earth Observatory; "
        "see ATTRIBUTION-bluemarble.txt beside the GeoTIFF.",
        "",
    ]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines), encoding="utf-8")
