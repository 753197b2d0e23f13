"""`soundscape demo`: build what is missing of the demo world (Blue Marble GeoTIFF, bundle,
store for levels 0..7), then serve it. Each step's output is reused on the next run, and a
killed store build continues where it stopped."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from model.bundle import Bundle, BundleError
from model.imagery import Imagery
from precompute.device import open_bundle, select_device
from precompute.plan import WORLD
from precompute.run import run as precompute
from precompute.store import Store, StoreError
from server.commands import add_server_options, serve

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
DEMO_LEVELS = list(range(0, 8))
# Hourly and monthly fusions stored for the levels drawn on map tiles of zooms 0..2.
DEMO_FUSION_LEVELS = tuple(range(0, 7))
log = logging.getLogger(__name__)


def imagery_path(data: Path) -> Path:
    path = data / "imagery" / "bluemarble.tif"
    if not path.exists():
        from corpus.bluemarble import build_geotiff

        print("building the Blue Marble GeoTIFF ...", flush=True)
        build_geotiff(path)
    return path


def bundle_path(data: Path, imagery: Path, config: Path) -> Path:
    """The demo bundle: trained briefly on colour-captioned Blue Marble cells, then exported."""
    path = data / "bundle"
    try:
        Bundle(path)
        return path
    except BundleError:
        pass
    import torch

    from corpus import colour_captions
    from model.commands import load_config
    from model.export import export_bundle
    from model.nn.config import ModelConfig, from_section
    from model.nn.psm import PSMModel
    from model.train import TrainConfig, train

    sections = load_config(config)
    cfg = from_section(ModelConfig, sections.get("model"), "model")
    train_cfg = from_section(TrainConfig, sections.get("train"), "train")
    torch.manual_seed(train_cfg.seed)
    model = PSMModel(cfg)
    print("cutting training cells from the imagery ...", flush=True)
    corpus = colour_captions.build(Imagery(imagery), cfg.image_size, range(2, 7), 1500, seed=train_cfg.seed)
    loss = train(model, colour_captions.batches(corpus, model.tokenizer(), train_cfg.batch_size), train_cfg)
    print("exporting the bundle ...", flush=True)
    export_bundle(model, path, calibration=loss.calibration(), name="demo-colour-captions",
                  training={"corpus": "colour-captioned Blue Marble cells (walking skeleton)",
                            "config": sections})
    return path


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
    precompute(Imagery(imagery), open_bundle(bundle, device), DEMO_LEVELS, WORLD, path, overwrite=True,
               fusion_levels=DEMO_FUSION_LEVELS, readers=device.readers)
    return path


def _demo(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    imagery = imagery_path(data)
    bundle = bundle_path(data, imagery, Path(args.config))
    store = store_path(data, imagery, bundle)
    if args.build_only:
        print(f"demo ready: bundle {bundle}, store {store}")
        return 0
    serve(str(bundle), str(store), args.host, args.port, args.workers, args.redis_url)
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the demo world if missing, then serve it",
                       description="Build the demo world (Blue Marble imagery, a small model trained "
                                   "on it, a store of levels 0..7) where missing, then serve tiles.")
    p.add_argument("--data-dir", default="data/demo", help="where the demo files live (default data/demo)")
    p.add_argument("--config", default=str(CONFIG), help="model and training config (default configs/demo.yaml)")
    p.add_argument("--build-only", action="store_true", help="build the demo files and exit")
    add_server_options(p)
    p.set_defaults(handler=_demo)
