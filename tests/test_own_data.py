"""Training on your own data (issue 17), one test per point of the issue: the imagery level chosen
or derived, vocabulary mismatches found before the first step, data paths against the config
file, the allowed level range in one error, the imagery credit and example queries the served map
shows, the basemap where imagery covers part of a tile, skip counts per file and quiet export
logs, and small-data warnings."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import mercantile
import numpy as np
import pytest
import soundfile
import yaml
from PIL import Image

from cli.main import main as soundscape
from model.batches import SkipLog
from model.checkpoint import load_checkpoint
from model.checks import small_split_warnings, suggest
from model.config import ConfigError
from model.data import DataError, reader, resolve_paths
from model.readers.csv_folder import default_level
from model.train import RunConfig, fit
from runtime.imagery import Imagery
from tests.conftest import precompute_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = {
    "embed_dim": 16,
    "sources": ["field", "studio"],
    "caption_sources": ["notes"],
    "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
    "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64, "meta_hidden": 16},
    "text": {"kind": "hashed", "vocab_size": 512, "max_length": 12, "width": 32, "depth": 1, "heads": 2},
    "audio": {"kind": "melcnn", "channels": [8], "width": 32, "features": {"n_mels": 32, "duration_s": 0.25}},
}
TRAIN = {"steps": 2, "batch_size": 8, "warmup_steps": 1, "eval_every": 2, "checkpoint_every": 2, "log_every": 1}


def wav(freq: float, rate: int = 16000) -> bytes:
    t = np.arange(rate // 4) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def write_folder(root: Path, n: int = 40, *, source=lambda i: "field", image: bool = True) -> Path:
    """A csv folder of n rows spread over Europe: wav clips and (optionally) small png images."""
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for i in range(n):
        (root / "audio" / f"{i}.wav").write_bytes(wav(200 + 40 * i))
        row = {
            "lat": 36 + (i * 7) % 24 + 0.5,
            "lon": -10 + (i * 11) % 30 + 0.5,
            "datetime": f"2022-05-01T{i % 24:02d}:00",
            "audio": f"audio/{i}.wav",
            "source": source(i),
            "caption": f"sound {i % 4}",
            "caption_source": "notes",
        }
        if image:
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), (i * 37) % 255, np.uint8)).save(buf, format="PNG")
            (root / "images" / f"{i}.png").write_bytes(buf.getvalue())
            row.update(image=f"images/{i}.png", gsd=100.0)
        rows.append(row)
    with open(root / "samples.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def run_config(data: dict, **train) -> RunConfig:
    return RunConfig.from_dict({"model": TINY_MODEL, "train": {**TRAIN, **train}, "data": {"kind": "csv", **data}})


# 1. data.level: derived from the imagery's resolution, or checked against it ---------------------


def test_level_is_derived_from_the_imagery_and_a_bad_one_names_the_range(tmp_path, imagery_path, caplog):
    root = write_folder(tmp_path / "d", 12, image=False)
    imagery = Imagery(imagery_path)
    expected = default_level(imagery, 16)
    # 16 px cells of the derived level have pixels no larger than the imagery's, one level finer would enlarge them.
    assert imagery.upsampling(expected, 16) <= 1.0 < imagery.upsampling(expected + 1, 16)
    with caplog.at_level(logging.WARNING):
        splits = reader("csv")({"root": str(root), "imagery": str(imagery_path)}, 16)
    rows = [*splits.train.rows, *splits.val.rows, *splits.test.rows]
    assert len(rows) == 12 and {r.level for r in rows} == {expected}
    assert splits.settled == {"root": str(root), "imagery": str(imagery_path), "level": expected}
    assert f"using level {expected}" in caplog.text and f"zoom {expected - 4}" in caplog.text
    # A row the imagery does not cover is one more reason in the start-up summary.
    with open(root / "samples.csv", "a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow([-40.0, 150.0, "", "audio/0.wav", "field", "far away", "notes"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reader("csv")({"root": str(root), "imagery": str(imagery_path)}, 16)
    assert "1 row(s) skipped, 12 kept: outside the imagery's bounds: 1" in caplog.text
    coarsest, finest = imagery.level_range(16, 8.0)
    for bad in (finest + 1, coarsest - 1):
        with pytest.raises(ValueError, match=f"use a level in {coarsest}-{finest}"):
            reader("csv")({"root": str(root), "imagery": str(imagery_path), "level": bad}, 16)


def write_raster(path: Path, bbox: tuple[float, float, float, float], width: int, height: int) -> Path:
    """A plain grey GeoTIFF of width x height pixels over bbox (west, south, east, north), EPSG:4326."""
    import rasterio
    from rasterio.transform import from_bounds

    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8", "crs": "EPSG:4326"}
    with rasterio.open(path, "w", transform=from_bounds(*bbox, width, height), **profile) as dst:
        dst.write(np.full((3, height, width), 120, np.uint8))
    return path


def test_a_level_no_cell_of_which_the_imagery_half_covers_is_refused_at_start(tmp_path, caplog):
    """The footprint's area alone allowed level 3 (half a level-3 cell's area), but no level-3 cell
    of its grid is half covered: every sample was unreadable once training had started."""
    root = write_folder(tmp_path / "d", 40, image=False)
    imagery = write_raster(tmp_path / "crop.tif", (-12.0, 36.0, 20.0, 60.0), 64, 48)
    assert Imagery(imagery).level_range(16, 8.0)[0] == 3
    with pytest.raises(ConfigError, match=r"data.level 3 does not fit .*: use a level in 4-"):
        reader("csv")({"root": str(root), "imagery": str(imagery), "level": 3}, 16)
    # At level 4, rows whose own cell is mostly outside the crop are skipped at start, and every row
    # kept has a cell training can read.
    with caplog.at_level(logging.WARNING):
        splits = reader("csv")({"root": str(root), "imagery": str(imagery), "level": 4}, 16)
    assert "cell ... is less than half inside the imagery's footprint" in caplog.text
    for split in (splits.train, splits.val, splits.test):
        for i in range(len(split)):
            assert split.get(i, frozenset({"audio"})).image is not None


def test_imagery_too_coarse_for_any_level_is_refused_with_both_ends(tmp_path):
    """A 1-pixel raster was given a derived level that "matches" its pixels, then no row could use it."""
    root = write_folder(tmp_path / "d", 12, image=False)
    imagery = write_raster(tmp_path / "one.tif", (-12.0, 36.0, 20.0, 60.0), 1, 1)
    with pytest.raises(ConfigError, match=r"^no level fits .*one.tif .*half covers cells of level 4 or finer"):
        reader("csv")({"root": str(root), "imagery": str(imagery)}, 16)


def test_rows_without_imagery_are_one_error_not_a_warning_per_row(tmp_path, caplog):
    root = write_folder(tmp_path / "d", 30, image=False)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as err:
        reader("csv")({"root": str(root)}, 16)
    message = str(err.value)
    assert "has no usable rows: no image file, and no data.imagery to cut its cell from: 30 row(s)" in message
    assert "and 27 more" in message and "\n" not in message
    assert caplog.text == ""  # nothing row by row


# 2. vocabularies: checked before any training step -------------------------------------------------


def test_a_source_misspelled_in_10_percent_of_rows_stops_before_training(tmp_path, capsys):
    root = write_folder(tmp_path / "d", 40, source=lambda i: "Field" if i % 10 == 3 else "field")
    config = run_config({"root": str(root)})
    with pytest.raises(ConfigError) as err:
        fit(config, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "4 of 40 samples have metadata outside the model's vocabulary" in message
    assert "source 'Field' in 4 row(s) (did you mean 'field'?)" in message
    assert "train.skip_mismatched_rows: true" in message
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "last.pt").exists()

    # The CLI says it in one sentence with exit code 2.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    err_text = capsys.readouterr().err
    assert "did you mean 'field'?" in err_text and "Traceback" not in err_text
    assert err_text.strip().count("\n") == 0


def test_told_to_skip_mismatched_rows_training_leaves_them_out(tmp_path, caplog):
    root = write_folder(tmp_path / "d", 40, source=lambda i: "Field" if i % 10 == 3 else "field")
    with caplog.at_level(logging.WARNING):
        result = fit(run_config({"root": str(root)}, skip_mismatched_rows=True), tmp_path / "run", progress=False)
    assert result.last_step == 2 and result.skipped == 0
    assert "left out 4 of 40 samples" in caplog.text


def test_skipping_every_sample_names_the_skip_not_the_validation_fraction(tmp_path):
    """It said "the validation split has no samples ...; give the data a larger validation fraction"."""
    root = write_folder(tmp_path / "d", 12, source=lambda i: "hydrophone")
    config = run_config({"root": str(root)}, skip_mismatched_rows=True)
    with pytest.raises(ConfigError, match=r"^train.skip_mismatched_rows leaves out all 12 samples: .*'hydrophone'"):
        fit(config, tmp_path / "run", progress=False)


def test_samples_in_too_few_cells_name_cell_deg_not_the_validation_fraction(tmp_path, capsys):
    """A larger val_fraction only moved the refusal to the training split: a smaller cell is the fix."""
    root = write_folder(tmp_path / "d", 12)  # spread over Europe: two 360-degree cells (west and east of 0)
    config = run_config({"root": str(root), "split": {"cell_deg": 360.0}})
    with pytest.raises(DataError, match=r"all 12 samples lie in 2 cell\(s\) of data.split.cell_deg 360 degrees"):
        fit(config, tmp_path / "run", progress=False)
    config = run_config({"root": str(root), "split": {"cell_deg": 10.0}})
    assert fit(config, tmp_path / "run", progress=False).last_step == 2
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(run_config({"root": str(root), "split": {"cell_deg": 360.0}}).to_dict()), encoding="utf-8"
    )
    argv = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--config", str(path), "--no-oracle"]
    assert soundscape(argv) == 2
    assert "choose another --split, or all 12 samples lie in 2 cell(s)" in capsys.readouterr().err


def test_a_source_missing_from_the_vocabulary_suggests_adding_it():
    assert suggest("Field", ["field"]) == "field" and suggest("feild", ["field", "studio"]) == "field"
    assert suggest("hydrophone", ["field", "studio"]) is None
    from model.checks import check_vocabularies
    from model.data import Splits

    class Source(list):
        def metadata_values(self, name):
            return [s if name == "source" else None for s in self]

    splits = Splits(Source(["hydrophone"] * 5), Source([]), Source([]))
    with pytest.raises(ConfigError, match=r"add the values to model\.sources"):
        check_vocabularies(splits, {"source": ["demo"], "caption_source": []}, skip=False)


def test_a_sample_with_both_values_outside_is_counted_once(caplog):
    """Both source and caption_source outside the vocabulary counted the sample twice: "120 of 60 samples"."""
    from model.checks import check_vocabularies
    from model.data import Splits

    class Source(list):
        def metadata_values(self, name):
            return [row[name] for row in self]

        def subset(self, indices):
            return Source(self[i] for i in indices)

    both = {"source": "hydrophone", "caption_source": "fieldnotes"}
    fine = {"source": "field", "caption_source": "notes"}
    splits = Splits(Source([both] * 3 + [fine]), Source([both, fine]), Source([fine]))
    vocabularies = {"source": ["field"], "caption_source": ["notes"]}
    with pytest.raises(ConfigError, match=r"^4 of 7 samples have metadata outside"):
        check_vocabularies(splits, vocabularies, skip=False)
    with caplog.at_level(logging.WARNING):
        kept = check_vocabularies(splits, vocabularies, skip=True)
    assert "left out 4 of 7 samples" in caplog.text
    assert (len(kept.train), len(kept.val), len(kept.test)) == (1, 1, 1)


# 3. paths: resolved against the config file and stored absolute -------------------------------------


def test_data_paths_follow_the_config_file_from_any_working_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    write_folder(project / "mydata", 24)
    config = run_config({"root": "mydata"}).to_dict()
    (project / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert soundscape(["train", "--config", "../project/config.yaml", "--out", "run", "--no-progress"]) == 0
    recorded = load_checkpoint(elsewhere / "run" / "best.pt")["config"]["data"]["root"]
    assert recorded == str((project / "mydata").resolve())
    monkeypatch.chdir(tmp_path)
    assert (
        soundscape(
            [
                "evaluate",
                "--checkpoint",
                str(elsewhere / "run" / "best.pt"),
                "--split",
                "val",
                "--no-oracle",
                "--no-progress",
                "--out",
                str(tmp_path / "val.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "val.json").read_text(encoding="utf-8"))["samples"] > 0
    # Remote paths and the keys a reader does not name as paths are left alone.
    section = {"kind": "csv", "root": "s3://bucket/data", "imagery": "img.tif", "csv": "samples.csv"}
    assert resolve_paths(section, "/cfg") == {**section, "imagery": "/cfg/img.tif"}


def test_a_moved_dataset_says_where_the_checkpoint_looked(tmp_path, capsys):
    root = write_folder(tmp_path / "d", 24)
    fit(run_config({"root": str(root)}), tmp_path / "run", progress=False)
    root.rename(tmp_path / "moved")
    assert soundscape(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "pass --config" in err and "Traceback" not in err


# 4. the allowed level range in one error ----------------------------------------------------------


def test_precompute_names_every_bad_level_and_the_allowed_range(bundle_path, imagery_path, tmp_path, capsys):
    imagery = Imagery(imagery_path)
    coarsest, finest = imagery.level_range(32, 8.0)
    assert 0 < coarsest <= finest
    code = soundscape(precompute_args(imagery_path, bundle_path, f"0-{finest + 2}", tmp_path / "s", "--dry-run"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    too_coarse = ", ".join(str(lv) for lv in range(coarsest))
    too_fine = f"{finest + 1}, {finest + 2}"
    assert f"level(s) {too_coarse} have cells too large" in err and f"level(s) {too_fine} would enlarge" in err
    assert f"use levels {coarsest}-{finest}" in err


# 5. the served map's credit and example queries come from the store and the bundle ----------------


def test_credit_from_precompute_reaches_tilejson_and_old_stores_credit_the_model_only(
    bundle_path, imagery_path, store_path, tmp_path, capsys
):
    from store.reader import Store
    from tests.server_support import make_client

    out = tmp_path / "store"
    assert (
        soundscape(
            precompute_args(
                imagery_path,
                bundle_path,
                "3",
                out,
                "--credit",
                "Example Space Agency",
                "--licence",
                "CC BY 4.0",
                "--quiet",
            )
        )
        == 0
    )
    assert Store(out).manifest["attribution"] == {"credit": "Example Space Agency", "licence": "CC BY 4.0"}
    assert soundscape(["store", "info", str(out)]) == 0
    assert "attribution: Imagery: Example Space Agency (CC BY 4.0); model: soundscape-tiles" in capsys.readouterr().out
    with make_client(bundle_path, out) as client:
        body = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()
    assert body["attribution"] == "Imagery: Example Space Agency (CC BY 4.0); model: soundscape-tiles"
    with make_client(bundle_path, store_path) as client:  # the fixture store records no credit
        assert (
            client.get("/tilejson.json", params={"layer": "uncertainty"}).json()["attribution"]
            == "model: soundscape-tiles"
        )


def test_serve_banner_shows_the_bundle_examples_or_none():
    from server.commands import banner

    text = banner("http://h:1", ["rain on a tin roof", "owls"])
    assert "?q=rain%20on%20a%20tin%20roof" in text and "rain on a tin roof; owls" in text
    plain = banner("http://h:1", [])
    assert "birdsong" not in plain and "layer=uncertainty" in plain


def test_the_demo_records_its_examples_and_credit():
    from cli import demo

    assert demo.DEMO_EXAMPLES and demo.DEMO_CREDIT.startswith("NASA")


# 6. the basemap is drawn wherever the imagery covers part of a tile -------------------------------


def test_basemap_draws_a_tile_the_imagery_only_partly_covers(bundle_path, store_path, imagery_path):
    from tests.conftest import FIXTURE_BBOX
    from tests.server_support import make_client

    imagery = Imagery(imagery_path)
    tile = mercantile.tile(FIXTURE_BBOX[0] + 0.1, FIXTURE_BBOX[3] - 0.1, 3)  # the crop's north-west corner
    assert imagery.cell(tile.z, tile.x, tile.y, 256) is None  # under half covered: no model cell
    part = imagery.cell(tile.z, tile.x, tile.y, 256, min_valid=0.0)
    assert part is not None and 0 < part.valid_fraction < 0.5
    with make_client(bundle_path, store_path) as client:
        response = client.get(f"/basemap/{tile.z}/{tile.x}/{tile.y}.webp")
    assert response.status_code == 200
    rgba = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    opaque = rgba[..., 3] > 0
    assert 0.05 < opaque.mean() < 0.5 and rgba[opaque][:, :3].std() > 5


# 7. skip counts per file, export logs without the exporter's chatter ------------------------------


def test_one_broken_file_counts_once(tmp_path):
    log = SkipLog()
    for _ in range(34):
        log.add([(3, "audio/broken.wav", "cannot decode")])
    assert (log.files, log.count) == (1, 34) and log.records() == [("audio/broken.wav", "cannot decode")]

    root = write_folder(tmp_path / "d", 24)
    (root / "audio" / "5.wav").write_bytes(b"RIFF not audio")
    result = fit(
        run_config({"root": str(root), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}, steps=6, eval_every=0),
        tmp_path / "run",
        progress=False,
    )
    lines = (tmp_path / "run" / "skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert result.skipped_files == len(lines) == 1 and result.skipped >= 1


def test_exporter_info_is_kept_out_of_verbose_logs():
    import model.export  # noqa: F401  (sets the exporter loggers' levels)

    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        assert not logging.getLogger(f"{name}.optimizer").isEnabledFor(logging.INFO)
    assert logging.getLogger("model.export").getEffectiveLevel() <= logging.WARNING


# 8. small-data warnings ---------------------------------------------------------------------------


def test_small_splits_are_warned_about_with_the_rank_r10_means():
    warnings = small_split_warnings({"validation": 26, "test": 400})
    assert len(warnings) == 1
    assert "validation split has 26 sample(s): R@10% counts rank <= 2 of 26" in warnings[0]
    assert "best.pt is chosen" in warnings[0]


def test_a_split_under_ten_is_warned_about_with_the_first_rank_it_counts():
    # It said "counts rank <= 0 of 7 and moves in steps of 0.143": a metric that was 0 whatever the model.
    (warning,) = small_split_warnings({"validation": 7})
    assert "validation split has 7 sample(s): R@10% counts rank <= 1 of 7 (the top 10% holds no whole rank" in warning


def test_train_and_evaluate_print_small_data_warnings(tmp_path, caplog, capsys):
    root = write_folder(tmp_path / "d", 24)
    with caplog.at_level(logging.WARNING):
        fit(
            run_config({"root": str(root), "split": {"val_fraction": 0.2, "test_fraction": 0.2}}),
            tmp_path / "run",
            progress=False,
        )
    assert "the validation split has" in caplog.text and "best.pt is chosen largely by noise" in caplog.text
    assert (
        soundscape(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "run" / "best.pt"),
                "--no-oracle",
                "--no-progress",
                "--out",
                str(tmp_path / "test.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "test.json").read_text(encoding="utf-8"))
    assert report["warnings"] and "the test split has" in report["warnings"][0]
    assert "warning: the test split has" in capsys.readouterr().err
