"""server/render.py's own PNG writer: what any decoder reads back is the palette image of the
quantised values (indices, colours, transparency), with valid chunk checksums."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server import render


def decoded(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("shape", [(256, 256), (512, 512), (3, 7), (1, 1)])
@pytest.mark.parametrize("colormap", ["viridis", "rdbu_r"])
def test_png_decodes_to_the_quantised_palette_image(shape, colormap):
    rng = np.random.default_rng(sum(shape))
    values = rng.random(shape, dtype=np.float32) * 1.4 - 0.2  # beyond [lo, hi] on both sides
    values[: shape[0] // 3] = np.nan
    image = decoded(render.encode_png(values, 0.0, 1.0, colormap))

    indices = render.quantise(values, 0.0, 1.0)
    assert image.mode == "P" and image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), indices)
    rgb, alpha = render.palette(colormap)
    table = np.frombuffer(rgb, np.uint8).reshape(256, 3)
    rgba = np.asarray(image.convert("RGBA"))
    assert np.array_equal(rgba[..., :3], table[indices])
    assert np.array_equal(rgba[..., 3], np.frombuffer(alpha, np.uint8)[indices])
    assert not rgba[np.isnan(values), 3].any(), "no data is transparent"


def test_smooth_ramps_and_wrapping_differences_round_trip():
    """The Sub filter's differences wrap modulo 256 (index 255 next to 1, and back)."""
    ramp = np.tile(np.linspace(0.0, 1.0, 300, dtype=np.float32), (5, 1))
    jumps = np.tile(np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32), (4, 8))
    for values in (ramp, ramp[:, ::-1], jumps):
        image = decoded(render.encode_png(values, 0.0, 1.0, "magma"))
        assert np.array_equal(np.asarray(image), render.quantise(values, 0.0, 1.0))


def test_no_data_and_legend_are_valid_pngs():
    blank = decoded(render.encode_png(render.empty(256), 0.0, 1.0, "viridis"))
    assert not np.asarray(blank.convert("RGBA"))[..., 3].any()
    legend = np.asarray(decoded(render.legend("viridis", 64, 8, vertical=False)))
    assert (np.diff(legend[0].astype(int)) >= 0).all() and legend[0, 0] < legend[0, -1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantise_maps_the_scale_onto_indices_one_to_255_and_no_data_to_zero(dtype):
    """Each value's index is 1 + round(254 (v - lo) / (hi - lo)), clipped to [lo, hi]; +-inf go to
    the ends, NaN to 0; the input is left as it was."""
    rng = np.random.default_rng(7)
    values = (rng.normal(0.3, 0.5, (64, 64))).astype(dtype)
    values[rng.random(values.shape) < 0.2] = np.nan
    values[0, :6] = [0.2, 0.9, np.inf, -np.inf, 0.55, np.nan]
    before = values.copy()
    lo, hi = 0.2, 0.9
    indices = render.quantise(values, lo, hi)
    assert indices.dtype == np.uint8 and indices.shape == values.shape
    assert np.array_equal(values, before, equal_nan=True)
    assert list(indices[0, :6]) == [1, 255, 255, 1, 128, 0]
    finite = np.isfinite(values)
    expected = 1 + np.rint(np.clip((values[finite] - lo) / (hi - lo), 0, 1) * 254)
    assert np.array_equal(indices[finite], expected.astype(np.uint8))
    assert (indices[np.isnan(values)] == 0).all()


def test_the_deflate_benchmark_reads_a_tiles_image_data_and_deflates_it_alike_in_a_fresh_process(tmp_path):
    """benchmarks/png_deflate.py: a PNG's image data is its indices Sub-filtered, and libdeflate
    gives a fresh process this process's bytes for it (the property tiles are deflated for)."""
    from benchmarks import png_deflate

    indices = np.tile(np.arange(1, 257, dtype=np.int64) % 250 + 1, (256, 1)).astype(np.uint8)
    data = png_deflate.image_data(render.png_bytes(indices, "viridis"))
    assert data == render.sub_filtered(indices).tobytes() and len(data) == 256 * 257
    data_file = tmp_path / "tiles.npy"
    np.save(data_file, np.frombuffer(data, np.uint8)[None])
    found = png_deflate.measure("libdeflate", [data], repeat=1, data_file=data_file, processes=1)
    assert found["fresh_processes_same_bytes"] == 1 and found["us_per_tile_p50"] > 0
    assert 0 < found["mean_bytes"] < len(data)
