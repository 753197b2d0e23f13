"""World maps of several prompts side by side, as the server draws them: the heatmap (match
probability, the paper's -CSD map) and the contrast layer of each prompt, and the uncertainty
layer once. docs/demo-model.md shows the result.

    python benchmarks/world_maps.py --bundle data/demo/bundle --store data/demo/store \\
        --out docs/img/world_maps.png

Each panel is the zoom-2 world (16 tiles of 256 px, through the Engine's own window, cells and
bilinear sampling, default metadata), drawn with the layer's default colour scale (the 2nd to
98th percentile over the scale sample; S's store range for uncertainty) and the server's
palettes, then scaled down to PANEL px. PIL only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = (
    "birdsong",
    "waves on a beach",
    "a crowded street market",
    "ice cracking on a frozen lake",
    "wind in desert dunes",
    "rain on leaves in a rainforest",
)
ZOOM = 2
PANEL = 256  # pixels per panel side (the 1024 px zoom-2 world, scaled down)
LABEL = 18  # pixels of text above a panel


def world(engine, layer: str, query, meta) -> np.ndarray:
    """The zoom-2 world of one layer as float values (NaN = no cell), 256 * 2^ZOOM px square."""
    n, size = 1 << ZOOM, 256
    out = np.full((n * size, n * size), np.nan, np.float32)
    for x in range(n):
        for y in range(n):
            window = engine.window(ZOOM, x, y, size)
            if window.empty:
                continue
            cells = engine.embeddings(window.level, window.present, meta)
            out[y * size : (y + 1) * size, x * size : (x + 1) * size] = engine.tile_values(window, cells, layer, query)
    return out


def panel(engine, layer: str, query, meta) -> Image.Image:
    """One layer's world in its default colours, PANEL px square."""
    from server.render import palette_image, quantise

    level, rows = engine.scale_sample
    sample = engine.values(engine.embeddings(level, rows, meta), layer, query)
    scale = engine.uncertainty_scale(sample) if layer == "uncertainty" else engine.default_scale(sample)
    colormap = "viridis" if layer == "uncertainty" else "magma"
    image = palette_image(quantise(world(engine, layer, query, meta), scale.lo, scale.hi), colormap)
    return image.convert("RGBA").resize((PANEL, PANEL), Image.Resampling.BILINEAR)


def figure(engine, prompts: tuple[str, ...]) -> Image.Image:
    """Rows: one per prompt (heatmap | contrast); a last row with the uncertainty layer."""
    from server.engine import QueryMetadata

    meta = QueryMetadata()
    rows = [(p, ("heatmap", "contrast")) for p in prompts]
    width, height = 2 * PANEL, (len(rows) + 1) * (PANEL + LABEL)
    canvas = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, layers) in enumerate(rows):
        query = engine.embed_text(prompt)
        top = r * (PANEL + LABEL)
        for c, layer in enumerate(layers):
            draw.text((c * PANEL + 4, top + 3), f"{layer}: {prompt}", fill=(0, 0, 0, 255))
            canvas.alpha_composite(panel(engine, layer, query, meta), (c * PANEL, top + LABEL))
    top = len(rows) * (PANEL + LABEL)
    draw.text((4, top + 3), "uncertainty: S = sum of sigma^2 (the same for every prompt)", fill=(0, 0, 0, 255))
    canvas.alpha_composite(panel(engine, "uncertainty", None, meta), (0, top + LABEL))
    return canvas.convert("RGB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--store", required=True, help="store directory built from the bundle")
    p.add_argument("--out", default="docs/img/world_maps.png", help="PNG to write")
    args = p.parse_args(argv)

    from runtime.bundle import Bundle
    from server.engine import Engine
    from store.reader import Store

    engine = Engine(Bundle(args.bundle), Store(args.store))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # two palettes and black text fit in 256 colours: a palette PNG is a third of the RGB one
    figure(engine, PROMPTS).quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
