"""The precompute job: read cells through the shared imagery reader (reader threads fill batches
ahead while the device embeds the current one), embed them with the bundle's image graph, fuse
under default metadata (location only) and any precomputed metadata sets, and stream each batch
to the store being written. A killed run resumes where it stopped (store/writer.py)."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from precompute.cells import CellImagery
from precompute.device import CUDA, bundle_device, default_batch
from precompute.plan import LevelPlan, Plan, PlanError, Region, intersect
from runtime.bundle import Bundle
from runtime.imagery import LEAVE_OUT_FACTOR, CellImage, Imagery
from runtime.metadata import encode_metadata
from runtime.scoring import uncertainty
from runtime.tiles import tile_centres
from store.format import FUSION_KINDS, LevelArrays, fusion_sets
from store.imagery_ref import relative_to_store
from store.index import FLAT_MAX
from store.writer import PartialStore, check_output, finish_store, no_room_said

FusionSet = tuple[str, int | None, int | None]
Batch = tuple[int, np.ndarray, np.ndarray, np.ndarray]  # (first plan position, codes, x, y)
READ_CHUNK = 8  # cells per reader task


@dataclass(frozen=True)
class RunOptions:
    """How to run a plan (the plan says which cells): batching, sharding, fusions, index, limits."""

    batch: int | None = None  # cells per inference batch; None: the device's default
    readers: int = 2  # imagery reader threads
    shard: tuple[int, int] = (0, 1)  # (i, n): this run embeds the i-th of n quadkey ranges
    fusion_levels: tuple[int, ...] = ()  # levels that get precomputed fusions
    fusions: tuple[str, ...] = ("hour", "month")  # their kinds (store.FUSION_KINDS)
    index_flat_max: int = FLAT_MAX  # levels with more cells get an IVF index
    max_upsample: float = 8.0  # finest level: a source pixel spans at most this many cell pixels
    credit: str | None = None  # who made the imagery, for the map's attribution (manifest `attribution`)
    licence: str | None = None  # the imagery's licence

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fusions) - set(FUSION_KINDS))
        if unknown:
            raise PlanError(f"fusions must be among {', '.join(FUSION_KINDS)}, not {unknown[0]!r}")
        if self.fusion_levels and not self.fusions:  # `--fusions ''` stored none, and said so only in the plan
            raise PlanError(
                f"fusions are asked for at levels {', '.join(map(str, self.fusion_levels))} but --fusions names none: "
                f"give {' or '.join(FUSION_KINDS)} (or both, the default)"
            )
        if (self.batch is not None and self.batch < 1) or self.readers < 1:
            raise PlanError("--batch-size and --readers must be at least 1")


@dataclass
class RunReport:
    embedded: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)
    device: str = ""
    seconds: float = 0.0
    cells_read: int = 0
    resumed: bool = False

    @property
    def cells_per_s(self) -> float:
        return self.cells_read / self.seconds if self.seconds else 0.0


def default_embeddings(bundle: Bundle, sat: np.ndarray, lonlat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, S) of cells under the store's default metadata: location known, the rest unknown."""
    meta = encode_metadata(len(sat), lat=lonlat[:, 1], lon=lonlat[:, 0])
    mu, logvar = bundle.fuse(sat, meta)
    return mu, uncertainty(logvar)


def fused_embeddings(
    bundle: Bundle, sat: np.ndarray, lonlat: np.ndarray, sets: list[FusionSet]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mu float16, S float32) of the cells under each metadata set: location plus that set's
    hour or month. One fuse call per set (faster on CPU than one call over all sets)."""
    out = {}
    for name, hour, month in sets:
        meta = encode_metadata(len(sat), lat=lonlat[:, 1], lon=lonlat[:, 0], hour=hour, month=month)
        mu, logvar = bundle.fuse(sat, meta)
        out[name] = (mu.astype(np.float16), uncertainty(logvar))
    return out


def embed_batch(
    bundle: Bundle,
    level: int,
    codes: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cells: list[CellImage],
    sets: list[FusionSet],
) -> tuple[LevelArrays, dict]:
    """A batch of cells with imagery -> its store rows and precomputed fusions.

    Every fusion starts from the stored (float16) sat feature, so a server that fuses the stored
    features on the fly gets the numbers the store holds."""
    sat = bundle.embed_images(
        np.stack([c.rgb for c in cells]), np.array([c.gsd for c in cells], dtype=np.float32)
    ).astype(np.float16)
    lon, lat = tile_centres(level, x, y)
    lonlat = np.stack([lon, lat], axis=1).astype(np.float32)
    stored = sat.astype(np.float32)
    mu, s = default_embeddings(bundle, stored, lonlat)
    arrays = LevelArrays(codes, sat, mu.astype(np.float16), s, lonlat)
    return arrays, fused_embeddings(bundle, stored, lonlat, sets)


def _read_cells(
    imagery: Imagery, level: int, size: int, x: np.ndarray, y: np.ndarray, max_upsample: float | None
) -> list[CellImage | None]:
    return [imagery.cell(level, int(i), int(j), size, max_upsample=max_upsample) for i, j in zip(x, y, strict=True)]


def read_ahead(
    batches: Iterable[Batch],
    imagery: Imagery,
    level: int,
    size: int,
    pool: ThreadPoolExecutor,
    max_upsample: float | None = None,
    depth: int = 2,
) -> Iterator[tuple[Batch, list[CellImage | None]]]:
    """Each batch with its cells (None where a cell has no imagery), in order. Up to `depth`
    batches are read ahead of the one being yielded, each spread over all of the pool's reader
    threads in chunks of READ_CHUNK cells, so memory holds a few batches however many readers.
    Cells are read through CellImagery: Imagery's pixels without rio-tiler's per-cell set-up;
    a mosaic's files the level would enlarge far beyond `max_upsample` are left out."""
    reader = CellImagery.of(imagery)

    def submit(batch: Batch) -> list[Future]:
        _, _, x, y = batch
        return [
            pool.submit(_read_cells, reader, level, size, x[i : i + READ_CHUNK], y[i : i + READ_CHUNK], max_upsample)
            for i in range(0, len(x), READ_CHUNK)
        ]

    pending: deque[tuple[Batch, list[Future]]] = deque()
    for batch in batches:
        pending.append((batch, submit(batch)))
        if len(pending) > depth:
            head, futures = pending.popleft()
            yield head, [cell for f in futures for cell in f.result()]
    while pending:
        head, futures = pending.popleft()
        yield head, [cell for f in futures for cell in f.result()]


def check_levels(imagery: Imagery, plan: Plan, size: int, max_upsample: float) -> None:
    """PlanError naming the allowed range when a level is finer than the imagery can honestly fill
    (upsampled beyond max_upsample) or coarser than its footprint (no cell could be half covered)."""
    coarsest, finest = imagery.level_range(size, max_upsample)
    finer = [lv for lv in plan.levels if lv > finest]
    coarser = [lv for lv in plan.levels if lv < coarsest]
    if not (finer or coarser):
        return
    reasons = []
    if coarser:
        reasons.append(
            f"level(s) {_listed(coarser)} have cells too large for the imagery's footprint to fill half of one"
        )
    if finer:
        reasons.append(
            f"level(s) {_listed(finer)} would enlarge its {imagery.resolution_m:.0f} m pixels up to "
            f"{imagery.upsampling(max(finer), size):.0f}x in {size} px cells (the limit is "
            f"{max_upsample:g}x, --max-upsample)"
        )
    allowed = (
        f"use levels {coarsest}-{finest}"
        if coarsest <= finest
        else f"no level fits (the footprint needs level {coarsest} or finer, the resolution {finest} or coarser)"
    )
    raise PlanError(f"imagery {imagery.path}: {' and '.join(reasons)}; {allowed}")


def _listed(levels: list[int]) -> str:
    return ", ".join(str(lv) for lv in levels)


def make_plan(
    imagery: Imagery,
    levels: list[int],
    bbox: tuple[float, float, float, float],
    *,
    region: Region | None = None,
    land_only: bool = False,
) -> Plan:
    """The plan of levels over bbox (and region) clipped to the imagery's footprint (its two
    boxes for imagery across the antimeridian)."""
    area = intersect(bbox, imagery.bounds)
    if area is None or not any(intersect(area, box) for box in imagery.extent):
        where = imagery.bounds if len(imagery.extent) == 1 else " and ".join(str(box) for box in imagery.extent)
        raise PlanError(f"bbox {tuple(bbox)} does not overlap the imagery bounds {where}")
    footprint = imagery.extent if len(imagery.extent) > 1 else None
    return Plan(levels, area, region=region, land_only=land_only, footprint=footprint)


def batch_rows(
    bundle: Bundle, level: int, batch: Batch, cells: list[CellImage | None], sets: list[FusionSet]
) -> tuple[LevelArrays | None, dict, int]:
    """(rows, fusions, skipped) of a read batch; rows None when no cell has imagery."""
    _, codes, x, y = batch
    keep = np.array([c is not None for c in cells], dtype=bool)
    if not keep.any():
        return None, {}, len(cells)
    rows, fused = embed_batch(bundle, level, codes[keep], x[keep], y[keep], [c for c in cells if c is not None], sets)
    return rows, fused, int((~keep).sum())


def run_key(imagery: Imagery, bundle: Bundle, plan: Plan, options: RunOptions) -> dict:
    """What makes two runs produce the same store: checked when a run resumes, kept in the manifest."""
    left = left_out(imagery, plan, bundle.image_size, options.max_upsample)
    return {
        "bundle_id": bundle.id,
        "imagery": imagery.describe(),
        "plan": {
            **plan.describe(),
            "fusion_levels": sorted(set(options.fusion_levels) & set(plan.levels)),
            "fusions": list(options.fusions),
        },
        "shard": list(options.shard),
        **({"left_out_beyond_upsample": LEAVE_OUT_FACTOR * options.max_upsample} if left else {}),
    }


def resume_key(imagery: Imagery, bundle: Bundle, key: dict) -> dict:
    """The run's key and what else decides the cells it adds, for an unfinished run to be resumed
    only by a run that embeds its remaining cells as it embedded the first (never mixed): each
    local imagery file's size and modification time (a file rewritten at the same place, as a
    reprocessed scene is) and the graphs (CUDA's float16 ones or the CPU's float32). Neither goes
    into the manifest: the store's id stays its content's."""
    provider = "CUDA" if bundle.providers[0] == CUDA else "CPU"
    return {
        **key,
        "imagery_files": imagery.file_stamps(),
        "graphs": f"{bundle.precision} graphs on the {provider} provider",
    }


def left_out_lines(imagery: Imagery, plan: Plan, size: int, max_upsample: float) -> list[str]:
    """A line per planned level that leaves a mosaic's files out, for the run to say so."""
    return [
        f"level {level} leaves out {len(paths)} imagery file(s) it would enlarge more than "
        f"{LEAVE_OUT_FACTOR * max_upsample:g}x, such as {paths[0]}"
        for level, paths in left_out(imagery, plan, size, max_upsample).items()
    ]


def left_out(imagery: Imagery, plan: Plan, size: int, max_upsample: float) -> dict[int, list[str]]:
    """The files of a mosaic each planned level leaves out (Imagery.left_out), by level. Where
    there are any, the run's key names the limit, so a run resumed with another --max-upsample
    (which would leave out other files) is another run."""
    out = {level: [a.path for a in imagery.left_out(level, size, max_upsample)] for level in plan.levels}
    return {level: paths for level, paths in out.items() if paths}


def _embed_level(
    imagery: Imagery,
    bundle: Bundle,
    level_plan: LevelPlan,
    span: tuple[int, int],
    work: PartialStore,
    sets: list[FusionSet],
    pool: ThreadPoolExecutor,
    bar: tqdm,
    max_upsample: float,
) -> int:
    """Embed a level's plan positions span[0]..span[1] (from where an earlier attempt stopped),
    saving progress after every batch; the number of cells read."""
    level, (start, stop) = level_plan.level, span
    writer = work.writer(level, start, bundle.sat_dim, bundle.embed_dim, [name for name, _, _ in sets])
    read = 0
    try:
        batches = level_plan.batches(writer.state["position"], stop, work.batch)
        for batch, cells in read_ahead(batches, imagery, level, bundle.image_size, pool, max_upsample):
            rows, fused, skipped = batch_rows(bundle, level, batch, cells, sets)
            writer.append(rows, fused, batch[0] + len(cells), skipped)
            work.save()
            bar.update(len(cells))
            read += len(cells)
    finally:
        writer.close()
    return read


def execute(
    imagery: Imagery,
    bundle: Bundle,
    plan: Plan,
    out: Path,
    options: RunOptions = RunOptions(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[dict, RunReport]:
    """Embed every cell of the plan (this shard of it) and write the store at `out`."""
    out = Path(out)
    check_output(out, overwrite)
    check_levels(imagery, plan, bundle.image_size, options.max_upsample)
    if not sum(len(plan.level(lv)) for lv in plan.levels):
        raise PlanError(
            f"no cell of levels {plan.levels} lies inside the bbox/region" + (" on land" if plan.land_only else "")
        )
    if progress:
        for line in left_out_lines(imagery, plan, bundle.image_size, options.max_upsample):
            tqdm.write(line, file=sys.stderr)
    key = run_key(imagery, bundle, plan, options)
    with no_room_said(out, "run the same command again: it resumes where it stopped"):
        batch = options.batch or default_batch(bundle)
        work = PartialStore(out, resume_key(imagery, bundle, key), batch, discard_other=overwrite, overwrite=overwrite)
        try:
            return _embed_and_finish(imagery, bundle, plan, out, options, key, work, progress)
        finally:
            work.close()


def _embed_and_finish(
    imagery: Imagery,
    bundle: Bundle,
    plan: Plan,
    out: Path,
    options: RunOptions,
    key: dict,
    work: PartialStore,
    progress: bool,
) -> tuple[dict, RunReport]:
    """execute's work once it holds the store's writer lock."""
    ranges = {lv: plan.level(lv).shard(*options.shard, work.batch) for lv in plan.levels}
    report = RunReport(device=f"{bundle_device(bundle)}, batches of {work.batch} cells", resumed=work.resumed)
    done = sum(work.level_state(lv, start)["position"] - start for lv, (start, _) in ranges.items())
    if progress:
        tqdm.write(
            ("resuming an unfinished run" if work.resumed else "precompute") + f" on {report.device}", file=sys.stderr
        )
    if options.shard[1] > 1 and all(start == stop for start, stop in ranges.values()):
        i, n = options.shard
        tqdm.write(
            f"note: shard {i}/{n} holds no cells: each level is split into {n} parts whose edges are rounded "
            f"down to a batch of {work.batch} cells (so that merged shards equal one run), and this one's part of "
            "every level rounded to none; merge takes the empty shard as it is",
            file=sys.stderr,
        )
    started = time.perf_counter()
    with (
        ThreadPoolExecutor(options.readers) as pool,
        tqdm(
            total=sum(stop - start for start, stop in ranges.values()),
            initial=done,
            unit="cell",
            desc="precompute",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.1,
        ) as bar,
    ):
        for level in plan.levels:
            bar.set_postfix(level=level)
            sets = fusion_sets(list(options.fusions)) if level in key["plan"]["fusion_levels"] else []
            report.cells_read += _embed_level(
                imagery, bundle, plan.level(level), ranges[level], work, sets, pool, bar, options.max_upsample
            )
    report.seconds = time.perf_counter() - started
    for level in plan.levels:
        state = work.level_state(level, ranges[level][0])
        report.embedded[level], report.skipped[level] = state["rows"], state["skipped"]
    if options.shard[1] == 1 and not any(report.embedded.values()):
        work.discard()
        raise PlanError(f"no cell of levels {plan.levels} has imagery inside {plan.bbox}")
    return _finish(work, out, key, plan, report, options), report


def _finish(work: PartialStore, out: Path, key: dict, plan: Plan, report: RunReport, options: RunOptions) -> dict:
    """Index the finished levels, write the manifest, move the store into place."""
    extra = {
        lv: {
            "skipped": report.skipped[lv],
            "fusions": list(options.fusions) if lv in key["plan"]["fusion_levels"] else [],
        }
        for lv in plan.levels
    }
    manifest = {
        **key,
        "imagery": relative_to_store(key["imagery"], out),
        "bounds": list(plan.bbox),
        "run": {
            "device": report.device,
            "seconds": round(report.seconds, 1),
            "cells_per_s": round(report.cells_per_s, 1),
            "resumed": report.resumed,
        },
        **attribution(options.credit, options.licence),
    }
    if options.shard[1] == 1:
        del manifest["shard"]
    manifest = finish_store(work.dir, out, manifest, extra, flat_max=options.index_flat_max)
    work.progress.unlink(missing_ok=True)
    return manifest


def attribution(credit: str | None, licence: str | None) -> dict:
    """The manifest's `attribution` entry (none when neither is given)."""
    given = {k: v for k, v in (("credit", credit), ("licence", licence)) if v}
    return {"attribution": given} if given else {}


def run(
    imagery: Imagery,
    bundle: Bundle,
    levels: list[int],
    bbox: tuple[float, float, float, float],
    out: Path,
    *,
    region: Region | None = None,
    land_only: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> tuple[dict, RunReport]:
    """Embed every cell of `levels` over bbox (clipped to the imagery) and write the store;
    `options` are RunOptions fields."""
    plan = make_plan(imagery, levels, bbox, region=region, land_only=land_only)
    return execute(imagery, bundle, plan, out, RunOptions(**options), overwrite=overwrite, progress=progress)
