"""`soundscape precompute`: imagery + bundle -> embedding store."""
from __future__ import annotations

import argparse
from pathlib import Path

from model.bundle import Bundle, BundleError
from model.imagery import Imagery, ImageryError
from precompute.plan import WORLD, parse_bbox, parse_levels
from precompute.run import run
from precompute.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (BundleError, ImageryError, StoreError)


def _precompute(args: argparse.Namespace) -> int:
    levels = parse_levels(args.levels)
    bbox = parse_bbox(args.bbox) if args.bbox else WORLD
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    bundle = Bundle(args.bundle)
    imagery = Imagery(args.imagery)
    manifest, report = run(imagery, bundle, levels, bbox, out, overwrite=args.overwrite,
                           batch=args.batch_size, progress=not args.quiet)
    print(f"store {manifest['id']} written to {out}: "
          + ", ".join(f"level {lv}: {n} cells ({report.skipped[lv]} without imagery)"
                      for lv, n in report.embedded.items()))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("precompute", help="embed imagery cells into a store for a bundle",
                       description="Read every web-mercator cell of --levels over --bbox from the "
                                   "imagery, embed it with the bundle's image graph, and write the store.")
    p.add_argument("--imagery", required=True, help="GeoTIFF/COG that rio-tiler reads")
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--levels", default="0-6", help="levels to embed, e.g. 0-6 or 2,4 (default 0-6)")
    p.add_argument("--bbox", help="west,south,east,north in degrees (default: the world)")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--batch-size", type=int, default=256, help="cells per inference batch (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_precompute)
