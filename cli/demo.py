"""`soundscape demo`: build what is missing of the demo world (Blue Marble GeoTIFF, bundle
assembled from the committed trained weights, store for levels 0..7), then serve it. Each
step's output is reused on the next run, and a killed store build continues where it stopped."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
from pathlib import Path

from precompute.device import open_bundle, select_device
from precompute.run import run as precompute
from runtime.bundle import Bundle, BundleError
from runtime.contract import RECORD_FILE
from runtime.files import make_folder
from runtime.imagery import Imagery
from runtime.tiles import WORLD_BBOX
from server.commands import add_server_options, check_port, serve, variables_epilog
from store.format import StoreError
from store.reader import Store

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights" / "demo"
EXPORT_CODE = REPO / "model"
DEMO_LEVELS = list(range(8))
# Hourly and monthly fusions stored for the levels drawn on map tiles of zooms 0..2.
DEMO_FUSION_LEVELS = tuple(range(7))
# Queries the demo model maps well (docs/demo-model.md's per-class table), recorded in its bundle
# for `serve` to show.
DEMO_EXAMPLES = [
    "birds singing at dawn",
    "waves crashing on the shore",
    "crickets chirping at night",
    "busy traffic in the street",
]
# The Blue Marble imagery's credit, recorded in the demo store for TileJSON and the viewer.
DEMO_CREDIT, DEMO_LICENCE = "NASA Earth Observatory, Blue Marble Next Generation", "public domain"
log = logging.getLogger(__name__)


def imagery_path(data: Path) -> Path:
    path = data / "imagery" / "bluemarble.tif"
    if not path.exists():
        from corpus.bluemarble import build_geotiff

        print("building the Blue Marble GeoTIFF ...", flush=True)
        build_geotiff(path)
    return path


def bundle_path(data: Path, weights: Path) -> Path:
    """The demo bundle: the committed trained parts (weights/demo, trained by configs/demo.yaml on
    the demo corpus) joined with the frozen MiniLM and aisfx towers from their packages."""
    path = data / "bundle"
    if bundle_is_current(path, weights):
        return path
    from model.export import bundle_from_trained_parts

    print(f"assembling the demo bundle from {weights} and the packaged text and audio towers ...", flush=True)
    from corpus.sources import SOURCES

    bundle_from_trained_parts(
        weights,
        path,
        int8=True,  # `soundscape serve --precision int8`: new text queries at 0.4-0.6 of the CPU
        examples=DEMO_EXAMPLES,
        source_descriptions={s.name: s.recordist for s in SOURCES},
        provenance={"export_code_sha256": export_code_sha256()},
    )
    return path


def bundle_is_current(path: Path, weights: Path) -> bool:
    """Whether the bundle at `path` was assembled from these weights by this checkout's export
    code: a change to either (new weights, or a leaner graph) rebuilds it, and then the store."""
    # The weights first: without them the demo says so (exit 2), bundle or not.
    current = {"weights_sha256": _weights_sha256(weights), "export_code_sha256": export_code_sha256()}
    try:
        training = Bundle(path).manifest["training"]
    except BundleError:
        return False
    return all(training.get(key) == value for key, value in current.items())


@functools.cache
def export_code_sha256() -> str:
    """sha256 over the code that writes a bundle's graphs (model/export.py and model/nn/), read
    once per process (checking a bundle and recording it in a new one use the same)."""
    digest = hashlib.sha256()
    for path in sorted([EXPORT_CODE / "export.py", *(EXPORT_CODE / "nn").glob("*.py")]):
        digest.update(path.relative_to(EXPORT_CODE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _weights_sha256(weights: Path) -> str | None:
    """The hash the weights' record names (a bundle assembled from other weights is rebuilt)."""
    try:
        return json.loads((weights / RECORD_FILE).read_text(encoding="utf-8"))["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FileNotFoundError(
            f"{weights} holds no readable {RECORD_FILE}: the demo's trained weights are "
            "missing (git checkout weights/demo, or train them: docs/demo-model.md)"
        ) from None


def store_path(data: Path, imagery: Path, bundle: Path) -> Path:
    path = data / "store"
    bundle_id = Bundle(bundle).id
    try:
        Store(path).check_bundle(bundle_id)
        return path
    except StoreError:
        pass
    print(f"embedding levels {DEMO_LEVELS[0]}..{DEMO_LEVELS[-1]} of the world ...", flush=True)
    device = select_device(bundle)  # the GPU with fp16 graphs where there is one, else the CPU
    precompute(
        Imagery(imagery),
        open_bundle(bundle, device),
        DEMO_LEVELS,
        WORLD_BBOX,
        path,
        overwrite=True,
        fusion_levels=DEMO_FUSION_LEVELS,
        readers=device.readers,
        credit=DEMO_CREDIT,
        licence=DEMO_LICENCE,
    )
    return path


def _demo(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    if not args.build_only:
        check_port(args.host, args.port)  # before minutes of building, not after
    make_folder(data, "--data-dir")
    bundle = bundle_path(data, Path(args.weights))
    imagery = imagery_path(data)
    store = store_path(data, imagery, bundle)
    if args.build_only:
        print(f"demo ready: bundle {bundle}, store {store}")
        return 0
    serve(
        str(bundle),
        str(store),
        args.host,
        args.port,
        args.workers,
        args.redis_url,
        args.query_db or str(data / "queries.sqlite"),
        args.precision,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build the demo world if missing, then serve it",
        description="Build the demo world where missing (Blue Marble imagery, the demo "
        "bundle assembled from the committed weights/demo and the packaged MiniLM "
        "and aisfx towers, a store of levels 0..7), then serve tiles. Nothing is "
        "trained: docs/demo-model.md says how the weights were made.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", default="data/demo", help="where the demo files live (default data/demo)")
    p.add_argument(
        "--weights",
        default=str(WEIGHTS),
        help="trained parts of the model (default weights/demo, trained by configs/demo.yaml)",
    )
    p.add_argument("--build-only", action="store_true", help="build the demo files and exit")
    add_server_options(p)
    p.epilog = variables_epilog(p)
    p.set_defaults(handler=_demo)
