"""`soundscape precompute` (imagery + bundle -> embedding store), `soundscape precompute merge`
(shard stores -> one store) and `soundscape store info|verify`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from precompute.device import open_bundle, select_device
from precompute.estimate import estimate, levels_within_budget, parse_size
from precompute.merge import merge
from precompute.plan import PlanError, Region, parse_bbox, parse_levels, parse_shard
from precompute.ray_engine import KILL_ONCE_ENV, RayJob, absolute, import_ray, run_on_ray, shards_root
from precompute.run import RunOptions, execute, left_out_lines, make_plan
from runtime.arguments import integer_in, number_above, parsed_by, pixel_value, seed_argument
from runtime.errors import UsageError
from runtime.imagery import Imagery, check_black_borders
from runtime.imagery_checks import parse_bands, parse_rescale
from runtime.tiles import MAX_LEVEL, WORLD_BBOX, tile_range
from store.index import FLAT_MAX, RECALL_KS, RECALL_TARGET
from store.reader import Store
from store.synth import SynthSpec, bundle_facts, synth_store
from store.verify import verify_store

FLAT_MAX_ARG = integer_in(0, note="0: every level gets an IVF index")
FLAT_MAX_HELP = (
    "levels with more cells get an IVF index, its nprobe tuned until "
    f"{' and '.join(f'recall@{k}' for k in RECALL_KS)} reach {RECALL_TARGET} (default {FLAT_MAX:,})"
)


def _options(args: argparse.Namespace, plan_levels: list[int], readers: int) -> RunOptions:
    fusions = tuple(k for k in args.fusions.split(",") if k)
    fusion_levels = _fusion_levels(args, plan_levels, list(fusions))
    return RunOptions(
        batch=args.batch_size,
        readers=readers,
        shard=parse_shard(args.shard) if args.shard else (0, 1),
        fusion_levels=fusion_levels,
        fusions=fusions,
        index_flat_max=args.index_flat_max,
        max_upsample=args.max_upsample,
        credit=args.credit,
        licence=args.licence,
    )


def _fusion_levels(args: argparse.Namespace, levels: list[int], kinds: list[str]) -> tuple[int, ...]:
    """--fusion-levels, or the coarsest levels whose fusions fit --fusion-budget, counted over the
    bbox (an upper bound: a region, the land mask and missing imagery only remove cells)."""
    if args.fusion_budget is None:
        asked = parse_levels(args.fusion_levels) if args.fusion_levels else []
        if outside := sorted(set(asked) - set(levels)):  # they were dropped silently
            raise UsageError(
                f"--fusion-levels {args.fusion_levels} name level(s) {', '.join(map(str, outside))} that --levels "
                f"{args.levels} does not embed: fusions are stored for embedded levels only"
            )
        return tuple(asked)
    if args.fusion_levels:
        raise UsageError("give --fusion-levels or --fusion-budget, not both")
    bbox = parse_bbox(args.bbox) if args.bbox else WORLD_BBOX
    cells = {lv: (r[1] - r[0] + 1) * (r[3] - r[2] + 1) for lv in levels for r in [tile_range(lv, bbox)]}
    embed_dim = bundle_facts(args.bundle)["embed_dim"]
    return levels_within_budget(cells, embed_dim, kinds, parse_size(args.fusion_budget))


def _reading(args: argparse.Namespace) -> dict:
    """How the imagery options say the imagery is read (runtime.imagery.Imagery's keywords)."""
    return {"nodata": args.nodata, "rescale": args.rescale, "rgb_bands": args.bands}


def _precompute(args: argparse.Namespace) -> int:
    if args.action == "merge":
        return _merge(args)
    missing = [f"--{name}" for name in ("imagery", "bundle", "out") if getattr(args, name) is None]
    if missing:
        raise PlanError(f"missing {', '.join(missing)}: an embedding run needs all three (see --help)")
    levels = parse_levels(args.levels)
    bbox = parse_bbox(args.bbox) if args.bbox else WORLD_BBOX
    region = Region.load(args.region) if args.region else None
    if args.engine == "ray" and not args.dry_run:
        return _precompute_on_ray(args, levels, bbox, region)
    if args.engine == "local" and (args.address or args.ray_workers or args.ray_cpus):
        raise UsageError("--address, --ray-workers and --ray-cpus need --engine ray")
    device = select_device(args.bundle, args.device, args.batch_size, args.readers)
    bundle = open_bundle(args.bundle, device)
    imagery = Imagery(args.imagery[0] if len(args.imagery) == 1 else args.imagery, **_reading(args))
    check_black_borders(imagery)
    plan = make_plan(imagery, levels, bbox, region=region, land_only=args.land_only)
    options = _options(args, levels, device.readers)
    if args.dry_run:
        budget = parse_size(args.fusion_budget) if args.fusion_budget is not None else None
        print("\n".join(estimate(imagery, bundle, plan, options, budget=budget).lines()))
        for line in [] if args.quiet else left_out_lines(imagery, plan, bundle.image_size, options.max_upsample):
            print(line, file=sys.stderr)
        return 0
    manifest, report = execute(
        imagery, bundle, plan, Path(args.out), options, overwrite=args.overwrite, progress=not args.quiet
    )
    print(
        f"store {manifest['id']} written to {args.out} ({report.cells_per_s:.0f} cells/s on {report.device}"
        + (", resumed" if report.resumed else "")
        + "): "
        + ", ".join(
            f"level {lv}: {n} cells ({report.skipped[lv]} without imagery)" for lv, n in report.embedded.items()
        )
    )
    return 0


def _precompute_on_ray(
    args: argparse.Namespace, levels: list[int], bbox: tuple[float, float, float, float], region: Region | None
) -> int:
    """The job as Ray tasks, one shard store each, merged at the end (precompute/ray_engine.py)."""
    if args.shard:
        raise UsageError("--shard splits a local run; --engine ray makes its own shards (--ray-workers)")
    import_ray()  # the install hint before anything is read
    sources = tuple(absolute(src) for src in args.imagery)
    imagery = Imagery(sources[0] if len(sources) == 1 else list(sources), **_reading(args))
    check_black_borders(imagery)
    make_plan(imagery, levels, bbox)
    out = Path(args.out).resolve()
    job = RayJob(
        imagery=sources,
        nodata=args.nodata,
        rescale=args.rescale,
        bands=args.bands,
        bundle=absolute(args.bundle),
        levels=tuple(levels),
        bbox=bbox,
        region=region,
        land_only=args.land_only,
        options=_options(args, levels, args.readers or 1),
        root=str(shards_root(out)),
        kind=args.device,
        cpus=args.ray_cpus,
        readers=args.readers,
        kill_once=os.environ.get(KILL_ONCE_ENV),
    )
    manifest, report = run_on_ray(
        job, out, address=args.address, shards=args.ray_workers, overwrite=args.overwrite, progress=not args.quiet
    )
    counts = ", ".join(
        f"level {k}: {v['count']} cells" for k, v in sorted(manifest["levels"].items(), key=lambda kv: int(kv[0]))
    )
    print(
        f"store {manifest['id']} written to {args.out} by {report.shards} Ray tasks on {report.device}"
        + (f" ({report.reused} shards complete before this run)" if report.reused else "")
        + f": {counts}"
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    if not args.out or not args.shards:
        raise PlanError("merge needs --out STORE and the shard stores (see merge --help)")
    manifest = merge(args.shards, args.out, overwrite=args.overwrite, flat_max=args.index_flat_max)
    counts = ", ".join(
        f"level {k}: {v['count']}" for k, v in sorted(manifest["levels"].items(), key=lambda kv: int(kv[0]))
    )
    print(f"store {manifest['id']} merged from {len(args.shards)} shards into {args.out}: {counts}")
    return 0


def _info(args: argparse.Namespace) -> int:
    store = Store(args.store)
    m = store.manifest
    print(f"store {store.id} at {store.path} (format {m['format_version']}, created {m.get('created')})")
    footprint = store.footprint
    across = (
        f" (its cells lie from {footprint.west:g} across the antimeridian to {footprint.east:g})"
        if footprint.wraps
        else ""
    )
    print(f"bundle {store.bundle_id}; imagery {(m.get('imagery') or {}).get('path')}; bounds {m['bounds']}{across}")
    print(f"attribution: {store.attribution}")
    plan = m.get("plan") or {}
    print(f"plan: levels {plan.get('levels')}, land only {plan.get('land_only')}, region {plan.get('region')}")
    if "shard" in m:
        print(f"shard {m['shard'][0]} of {m['shard'][1]}: merge all shards with `soundscape precompute merge`")
    print(f"made on: {(m.get('run') or {}).get('device', '?')}")
    print(f"{'level':>5} {'cells':>10} {'skipped':>8} {'MB':>8}  index / fusions")
    for key, meta in sorted(m["levels"].items(), key=lambda kv: int(kv[0])):
        folder = store.path / "levels" / f"{int(key):02d}"
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        fusions = ", ".join(meta.get("fusions", [])) or "-"
        counts = f"{int(key):>5} {meta['count']:>10,} {meta.get('skipped', 0):>8,} {size:>8.1f}"
        print(f"{counts}  {_index_text(meta.get('index', {}))} / {fusions}")
    return 0


def _index_text(index: dict) -> str:
    """'flat-ip', or an IVF's kind with what its tuning recorded: '(nlist 16, nprobe 4, recall@10 0.97, ...)'."""
    facts = [f"{name} {index[name]}" for name in ("nlist", "nprobe") if name in index]
    facts += [f"recall@{k} {index[f'recall_at_{k}']}" for k in (10, 100) if f"recall_at_{k}" in index]
    return index.get("kind", "no index recorded") + (f" ({', '.join(facts)})" if facts else "")


def _verify(args: argparse.Namespace) -> int:
    store = Store(args.store)
    verify_store(store)
    print(f"store {store.id} at {store.path}: every checksum matches and every level is consistent")
    return 0


def _synth(args: argparse.Namespace) -> int:
    facts = bundle_facts(args.bundle) if args.bundle else {}
    spec = SynthSpec(level=args.level, cells=args.cells, within=args.within, seed=args.seed, **facts)
    m = synth_store(args.out, spec, overwrite=args.overwrite, flat_max=args.index_flat_max)
    index = m["levels"][str(spec.level)]["index"]
    print(
        f"synthetic store {m['id']} written to {args.out}: level {spec.level}, {spec.cells:,} cells, "
        f"index {index['kind']}, for bundle {m['bundle_id']} ({m['run']['generate_s']} s generating, "
        f"{m['run']['finish_s']} s indexing and checksumming)"
    )
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--imagery",
        nargs="+",
        metavar="SRC",
        help="GeoTIFF/COG (local path or URL, any CRS), a directory of them, or several: a mosaic "
        "where the first raster with a valid pixel gives it",
    )
    p.add_argument("--bundle", help="model bundle directory")
    p.add_argument("--levels", default="0-6", help="levels to embed, e.g. 0-7 or 2,4 (default 0-6)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bbox", help="west,south,east,north in degrees, e.g. -10,35,30,60 (default: the world)")
    where.add_argument(
        "--region", help="GeoJSON file: embed only cells that touch its geometries (default: every cell of --bbox)"
    )
    p.add_argument(
        "--land-only",
        action="store_true",
        help="embed only cells that hold land (GLOBE mask from the package global-land-mask)",
    )
    p.add_argument("--out", help="store directory to write")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing store at --out (only once the new one is complete), and discard "
        "an unfinished run of a different plan",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="embed only the I-th of N quadkey ranges of every level "
        "(0-based); join the N outputs with `precompute merge` (default: the whole plan, one store)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print cell counts, storage and a time estimate measured on a sample; write nothing",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where graphs run (default auto: the CUDA provider with fp16 graphs when a GPU is visible)",
    )
    p.add_argument(
        "--batch-size", type=integer_in(1), help="cells per inference batch (default 256 on CPU, 1024 on GPU)"
    )
    p.add_argument(
        "--readers",
        type=integer_in(1),
        help="imagery reader threads (default: half the cores, at least 2; on a GPU all cores but two)",
    )
    p.add_argument("--fusion-levels", help="levels that also store fusions per hour and month, e.g. 0-5 (default none)")
    p.add_argument(
        "--fusion-budget",
        metavar="SIZE",
        help="instead of --fusion-levels: store fusions for the coarsest levels whose fusions fit SIZE "
        "(e.g. 50GB); --dry-run prints each level's cost and the plan (default: --fusion-levels decides)",
    )
    p.add_argument(
        "--fusions",
        default="hour,month",
        help="which fusions --fusion-levels store: hour (0..23), month (1..12) (default hour,month)",
    )
    p.add_argument(
        "--nodata", type=pixel_value, help="treat this pixel value as no imagery (default: each file's own nodata)"
    )
    p.add_argument(
        "--rescale",
        type=parsed_by(parse_rescale),
        metavar="LOW,HIGH",
        help="pixel values that become 0 and 255, for imagery that is not 8-bit (uint16, float): e.g. 0,3000 "
        "for reflectance x 10000; values as the file stores them, before its bands' scale and offset "
        "(default: none; such imagery is refused without it)",
    )
    p.add_argument(
        "--bands",
        type=parsed_by(parse_bands),
        metavar="R,G,B",
        help="the bands read as red, green and blue, e.g. 3,2,1 for a blue-green-red stack (default 1,2,3)",
    )
    p.add_argument(
        "--max-upsample",
        type=number_above(0),
        default=8.0,
        help="refuse levels whose cells would enlarge a source pixel more than this (default 8)",
    )
    p.add_argument(
        "--index-flat-max",
        type=FLAT_MAX_ARG,
        default=FLAT_MAX,
        help=FLAT_MAX_HELP,
    )
    p.add_argument(
        "--credit",
        help="who made the imagery, shown as the served map's attribution "
        "(e.g. 'NASA Earth Observatory'; default: none, the model only)",
    )
    p.add_argument("--licence", help="the imagery's licence, shown with the credit (e.g. 'CC BY 4.0'; default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this machine (default); ray: shards as Ray tasks, merged at the end (needs the ray "
        "extra and a file system every node shares; docs/scale.md)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to run on (e.g. ray://head:10001 or auto; default: RAY_ADDRESS, else a local Ray instance)",
    )
    p.add_argument(
        "--ray-workers",
        type=integer_in(1),
        metavar="N",
        help="shards, one Ray task each (default: one per GPU of the cluster, or per --ray-cpus of its CPUs)",
    )
    p.add_argument(
        "--ray-cpus", type=integer_in(1), metavar="C", help="CPUs each Ray task reserves (default 2, 8 with a GPU)"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "precompute",
        help="embed imagery cells into a store for a bundle (and merge shard stores)",
        description="Read every web-mercator cell of --levels over --bbox/--region from the imagery, embed it "
        "with the bundle's image graph and stream it into the store, in quadkey order. A killed run "
        "continues where it stopped when run again with the same arguments. "
        "`soundscape precompute merge --out STORE SHARD...` joins the stores of --shard runs.",
    )
    _add_run_arguments(p)
    actions = p.add_subparsers(dest="action", metavar="merge")
    m = actions.add_parser(
        "merge",
        help="join the stores of all --shard i/n runs into one store",
        description="Join the stores written by `precompute --shard i/n` (all n of them) "
        "into the store a single run would have written. Every shard is checked first (one run, each "
        "shard once, every file as its manifest records it); a damaged or missing one is named.",
    )
    m.add_argument("shards", nargs="+", help="the n shard store directories, in any order")
    m.add_argument("--out", required=True, help="store directory to write")
    m.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing store at --out (only once the merged one is complete)",
    )
    m.add_argument("--index-flat-max", type=FLAT_MAX_ARG, default=FLAT_MAX, help=FLAT_MAX_HELP)
    m.set_defaults(resumes=False)  # a merge starts over (its store is written whole, then moved in place)
    p.set_defaults(handler=_precompute, action=None, resumes=True)

    s = sub.add_parser(
        "store",
        help="describe or verify an embedding store",
        description="Inspect an embedding store written by `soundscape precompute`.",
    )
    checks = s.add_subparsers(dest="store_command", metavar="{info,verify,synth}", required=True)
    info = checks.add_parser(
        "info",
        help="levels, counts, index kinds, fusions and sizes",
        description="Print the store's id, bundle, imagery, plan and attribution, and per level its cells, "
        "cells skipped for want of imagery, megabytes on disk, index (kind, lists, nprobe, recall) and "
        "fusions. Opening checks the store cheaply (`store verify` checks everything); exit 2 naming the "
        "problem when it is no sound store.",
    )
    info.add_argument("store", help="store directory")
    info.set_defaults(handler=_info)
    verify = checks.add_parser(
        "verify",
        help="check every checksum and the consistency of every level",
        description="Exit 0 when every file matches its checksum and every level's "
        "arrays, index and fusions agree; exit 2 naming the first problem.",
    )
    verify.add_argument("store", help="store directory")
    verify.set_defaults(handler=_verify)
    synth = checks.add_parser(
        "synth",
        help="write a store of synthetic embeddings (no imagery, no image graph) to measure large stores",
        description="Write N cells of one level with embeddings shaped like a real store's (store/synth.py), "
        "streamed in chunks. With --bundle the store takes its dimensions and id, so "
        "`soundscape serve --bundle B --store OUT` serves it (tiles are drawn, not meaningful).",
    )
    synth.add_argument("--out", required=True, help="store directory to write")
    synth.add_argument(
        "--level",
        type=integer_in(0, MAX_LEVEL),
        required=True,
        help=f"the level of every cell (0..{MAX_LEVEL}), e.g. 12",
    )
    synth.add_argument(
        "--cells", type=integer_in(1), required=True, help="how many cells, in Morton order (at most the level's)"
    )
    synth.add_argument("--within", default="", help="quadkey whose descendants are the cells (default: the world)")
    synth.add_argument("--bundle", help="model bundle to pair with (its id and dims); default 64/96 dims, unpaired")
    synth.add_argument(
        "--seed", type=seed_argument(), default=0, help="the same seed and arguments give the same store (default 0)"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    synth.add_argument("--index-flat-max", type=FLAT_MAX_ARG, default=FLAT_MAX, help=FLAT_MAX_HELP)
    synth.set_defaults(handler=_synth, resumes=True)
