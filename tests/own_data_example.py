"""A small "own data" example for docs/own-data.md and its test: a folder of geotagged clips
(wav, flac and ogg) with a samples.csv, a Blue Marble crop of Western Europe as imagery, and a
config that trains the tiny model on them.

The clips' sound follows the place, as real recordings would: sea cells sound of waves, green
land of birds, bare or bright land of wind, each a different chord of tones plus noise, and the
time of day shifts the pitch a little. Run `python tests/own_data_example.py FOLDER` to write it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import mercantile
import numpy as np
import soundfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from corpus.bluemarble import build_geotiff  # noqa: E402
from runtime.imagery import Imagery  # noqa: E402

BBOX = (-12.0, 36.0, 20.0, 60.0)  # Western Europe: Atlantic, coasts, forest, Alps, Mediterranean
SAMPLE_RATE = 16000
CLASSES = {  # caption: chord (Hz)
    "waves on the shore": (220.0, 330.0, 440.0),
    "birds singing": (1800.0, 2400.0, 3100.0),
    "wind over open ground": (500.0, 700.0, 950.0),
}
FORMATS = ("wav", "flac", "ogg")


def place_class(rgb: np.ndarray) -> str:
    """Which sound a cell's pixels suggest: blue sea, green land, anything else windy."""
    r, g, b = (float(v) for v in rgb.reshape(-1, 3).mean(0))
    if b > 1.2 * g:
        return "waves on the shore"
    if g > 1.15 * r:
        return "birds singing"
    return "wind over open ground"


def clip(caption: str, hour: int, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    shift = 1.0 + 0.1 * np.cos(2 * np.pi * hour / 24)
    tone = sum(np.sin(2 * np.pi * f * shift * t) for f in CLASSES[caption]) / len(CLASSES[caption])
    return (0.3 * tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def write_example(folder: str | Path, samples: int = 60, seed: int = 0, steps: int = 40) -> Path:
    """Write FOLDER/imagery.tif, FOLDER/mydata/ (samples.csv, audio/) and FOLDER/config.yaml;
    the config's path."""
    folder = Path(folder)
    data = folder / "mydata"
    (data / "audio").mkdir(parents=True, exist_ok=True)
    imagery_path = folder / "imagery.tif"
    if not imagery_path.exists():
        build_geotiff(imagery_path, BBOX)
    imagery = Imagery(imagery_path)
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < samples:
        lon, lat = rng.uniform(BBOX[0] + 0.5, BBOX[2] - 0.5), rng.uniform(BBOX[1] + 0.5, BBOX[3] - 0.5)
        tile = mercantile.tile(lon, lat, 7)
        cell = imagery.cell(tile.z, tile.x, tile.y, 16)
        if cell is None:
            continue
        caption = place_class(cell.rgb)
        if caption != list(CLASSES)[len(rows) % len(CLASSES)]:  # as many clips of each sound
            continue
        hour, month = int(rng.integers(0, 24)), int(rng.integers(1, 13))
        name = f"audio/{len(rows):03d}.{FORMATS[len(rows) % len(FORMATS)]}"
        soundfile.write(data / name, clip(caption, hour, rng), SAMPLE_RATE)
        rows.append(
            {
                "key": f"clip{len(rows):03d}",
                "lat": round(lat, 5),
                "lon": round(lon, 5),
                "datetime": f"2023-{month:02d}-15T{hour:02d}:30",
                "audio": name,
                "source": "field",
                "caption": caption,
                "caption_source": "field_notes",
            }
        )
    with open(data / "samples.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    config["model"]["sources"] = ["field"]
    config["model"]["caption_sources"] = ["field_notes"]
    config["train"].update(
        {"steps": steps, "batch_size": 16, "eval_every": steps, "checkpoint_every": steps, "log_every": 10}
    )
    # Paths are relative to this file; data.level is left out: derived from the imagery.
    config["data"] = {
        "kind": "csv",
        "root": "mydata",
        "imagery": "imagery.tif",
        "split": {"cell_deg": 2.0, "val_fraction": 0.15, "test_fraction": 0.15},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where to write the example")
    parser.add_argument("--samples", type=int, default=60, help="clips to write (default 60)")
    parser.add_argument("--steps", type=int, default=40, help="training steps in the config (default 40)")
    args = parser.parse_args()
    print(f"example written: {write_example(args.folder, args.samples, steps=args.steps)}")


if __name__ == "__main__":
    main()
