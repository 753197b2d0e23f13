"""Data readers on small files written here: a user's CSV folder (with malformed rows and
corrupt files), GeoSound and SoundingEarth webdataset shards, and the Hugging Face Parquet
layout; held-out geographic cells; bad samples skipped and reported with their path."""

import csv
import io
import json
import logging
import pickle
import tarfile

import numpy as np
import pytest
import soundfile
from PIL import Image

from model.batches import Examples
from model.data import BadSample, Preprocessing, geographic_split, reader
from runtime.audio import AudioFeatureSpec, ClapFusionSpec
from runtime.metadata import Vocabulary
from runtime.text import HashedWordTokenizer


def wav_bytes(seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def image_bytes(size: int, seed: int, fmt: str = "PNG") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def prep(audio_spec=None, sources=("demo", "field"), caption_sources=("template", "meta"), size=32):
    return Preprocessing(
        HashedWordTokenizer(256, 16),
        audio_spec or AudioFeatureSpec(n_mels=32, duration_s=0.5),
        Vocabulary(list(sources)),
        Vocabulary(list(caption_sources)),
        size,
    )


def test_geographic_split_holds_out_whole_cells():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-50, 50, 2000), rng.uniform(-100, 100, 2000)
    labels = geographic_split(lat, lon, cell_deg=5.0, val_fraction=0.1, test_fraction=0.2, seed=1)
    cells = {
        name: {
            (int(np.floor(a / 5)), int(np.floor(o / 5)))
            for a, o, lab in zip(lat, lon, labels, strict=True)
            if lab == name
        }
        for name in ("train", "val", "test")
    }
    assert cells["train"] and cells["val"] and cells["test"]
    assert (
        not (cells["train"] & cells["test"])
        and not (cells["train"] & cells["val"])
        and not (cells["val"] & cells["test"])
    )
    # Far-apart cells never collide (PSM's lat*360+lon bin id does, section 5.1).
    fine = geographic_split(np.array([0.05, 0.05]), np.array([0.05, 36.05]), cell_deg=0.1, seed=0)
    assert len(fine) == 2


def test_geographic_split_holds_the_antimeridian_in_one_cell():
    """Longitude 180 and -180 are one meridian: a sample on it written either way is one place,
    and its two spellings fell in two cells, one of which could be trained on while the other was
    tested."""
    lat = np.array([10.5, 10.5, 40.5, -30.5, 60.5])
    lon = np.array([180.0, -180.0, 20.5, -60.5, 100.5])
    for seed in range(20):
        labels = geographic_split(lat, lon, cell_deg=1.0, seed=seed)
        assert labels[0] == labels[1]


@pytest.fixture
def csv_folder(tmp_path):
    root = tmp_path / "mydata"
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for i in range(24):
        (root / "audio" / f"{i}.wav").write_bytes(wav_bytes(freq=200 + 50 * i))
        (root / "images" / f"{i}.png").write_bytes(image_bytes(40, i))
        rows.append(
            {
                "key": f"rec{i}",
                "lat": 10 * (i % 6) - 20,
                "lon": 15 * (i // 6) - 29,  # never 0 with lat 0: a place at (0, 0) is a missing one
                "datetime": f"2021-0{1 + i % 9}-1{i % 10}T0{i % 10}:30:00",
                "source": "field",
                "audio": f"audio/{i}.wav",
                "caption": f"birds number {i}",
                "caption_source": "template",
                "image": f"images/{i}.png",
                "gsd": 10.0,
            }
        )
    (root / "audio" / "broken.wav").write_bytes(b"RIFF not really audio")
    rows.append({**rows[0], "key": "broken-audio", "audio": "audio/broken.wav", "lat": -20, "lon": -30})
    bad = [
        {**rows[1], "lat": "north"},
        {**rows[1], "audio": ""},
        {**rows[1], "datetime": "whenever"},
        {**rows[1], "gsd": ""},
    ]
    with open(root / "samples.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + bad)
    return root


def test_csv_folder_reads_rows_and_skips_malformed_ones_with_their_line(csv_folder, caplog):
    with caplog.at_level(logging.WARNING):
        splits = reader("csv")(
            {"root": str(csv_folder), "split": {"cell_deg": 10.0, "val_fraction": 0.2, "test_fraction": 0.2}}, 32
        )
    csv_path = csv_folder / "samples.csv"
    for line in (27, 28, 29, 30):  # the four malformed rows after the header and 25 good ones
        assert f"{csv_path}:{line}" in caplog.text
    assert "4 row(s) skipped, 25 kept" in caplog.text
    assert len(splits.train) + len(splits.val) + len(splits.test) == 25
    assert len(splits.val) and len(splits.test)
    sample = next(splits.train[i] for i in range(len(splits.train)) if splits.train.rows[i].key != "broken-audio")
    assert sample.image.shape == (32, 32, 3) and sample.gsd == pytest.approx(10.0 * 40 / 32)
    assert sample.sample_rate == 16000 and sample.audio.shape == (8000,)
    assert sample.hour == pytest.approx(int(sample.key[3:]) % 10 + 0.5) and sample.source == "field"
    no_audio = splits.train.get(0, without=frozenset({"audio"}))
    assert no_audio.audio is None and no_audio.image is not None


def test_corrupt_audio_is_skipped_and_reported_with_its_path(csv_folder):
    splits = reader("csv")({"root": str(csv_folder), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}, 32)
    train = splits.train
    broken = next(i for i, r in enumerate(train.rows) if r.key == "broken-audio")
    with pytest.raises(BadSample, match=r"broken\.wav"):
        train[broken]
    item = Examples(train, prep())[broken]
    assert item.index == (broken + 1) % len(train)  # the next readable sample stands in
    assert item.skipped[0][0] == broken and item.skipped[0][1].endswith("audio/broken.wav")
    assert item.audio.shape == (32, AudioFeatureSpec(n_mels=32, duration_s=0.5).n_frames)


def test_csv_rows_without_images_are_cut_from_imagery(tmp_path, imagery_path):
    import mercantile

    from runtime.imagery import Imagery

    root = tmp_path / "cut"
    root.mkdir()
    (root / "a.wav").write_bytes(wav_bytes())
    (root / "b.wav").write_bytes(wav_bytes())
    with open(root / "samples.csv", "w", encoding="utf-8", newline="") as f:
        f.write("lat,lon,audio,level\n45.0,5.0,a.wav,5\n48.0,2.0,b.wav,\n")
    splits = reader("csv")(
        {
            "root": str(root),
            "imagery": str(imagery_path),
            "level": 6,
            "split": {"val_fraction": 0.0, "test_fraction": 0.0},
        },
        32,
    )
    first, second = splits.train[0], splits.train[1]
    tile = mercantile.tile(5.0, 45.0, 5)
    want = Imagery(imagery_path).cell(5, tile.x, tile.y, 32)
    np.testing.assert_array_equal(first.image, want.rgb)
    assert first.gsd == pytest.approx(want.gsd) and first.level == 5 and second.level == 6
    assert first.month is None and first.hour is None


def write_shard(path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def clap_mel(seed: int) -> bytes:
    return pickle.dumps(np.random.default_rng(seed).standard_normal((4, 1001, 64)).astype(np.float32))


@pytest.fixture
def geosound_shards(tmp_path):
    root = tmp_path / "GeoSound_for_mapping"
    records = {
        "train": [("iNat-1", "2021/10/31 3:11 PM EDT"), ("freesound-2", "June 26th, 2010"), ("yfcc-3", "")],
        "val": [("aporee-4", "1/29/09 10:28")],
        "test": [("yfcc-5", "2011-07-26 12:46:19.0"), ("iNat-6", "2020/01/02 6:00 AM PST")],
    }
    for split, items in records.items():
        members = {}
        for n, (key, date) in enumerate(items):
            meta = {
                "sample_id": key,
                "date": date,
                "latitude": 40.0 + n,
                "longitude": -100.0 + n,
                "text": f"sound of {key}",
                "tags": "",
                "title": "",
            }
            members[f"{key}.meta.json"] = json.dumps(meta).encode()
            members[f"{key}.image.jpg"] = b"not a jpeg" if key == "yfcc-3" else image_bytes(1280, n, "JPEG")
            for k in range(1, 6):
                members[f"{key}.audio_mel{k}.pyd"] = clap_mel(10 * n + k)
        write_shard(root / "with_sentinel" / f"{split}_0.tar", members)
    write_shard(root / "with_bingmap" / "train_0.tar", {"x.meta.json": b"{}"})  # other imagery: ignored
    return root


def test_geosound_webdataset_as_released(geosound_shards):
    splits = reader("geosound")({"root": str(geosound_shards), "imagery": "sentinel"}, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)  # x 3 zooms
    levels = [splits.train[i].level for i in range(3)]
    assert levels == [1, 3, 5]
    z1, z3 = splits.train[0], splits.train[1]
    assert z1.key == "freesound-2" and z1.source == "freesound"  # keys sorted within a shard
    assert z1.month == 6 and z1.hour is None  # freesound has no reliable time
    # Zoom z crops z x 256 px of the 10 m tile and resizes to 32 px: effective GSD.
    assert z1.gsd == pytest.approx(10.0 * 256 / 32) and z3.gsd == pytest.approx(10.0 * 768 / 32)
    assert z1.image.shape == (32, 32, 3) and z1.caption == "sound of freesound-2" and z1.caption_source == "meta"
    assert z1.audio_features.shape == (4, 1001, 64) and z1.audio_features_kind == "clap-fusion"
    inat = splits.train[3]
    assert inat.key == "iNat-1" and inat.month == 10 and inat.hour == pytest.approx(15 + 11 / 60)
    with pytest.raises(BadSample, match="yfcc-3"):
        splits.train[6]
    clap_prep = prep(ClapFusionSpec(), sources=("yfcc", "iNat", "aporee", "freesound"), caption_sources=("meta",))
    np.testing.assert_array_equal(clap_prep.audio_input(z1), z1.audio_features)
    with pytest.raises(BadSample, match="clap-fusion"):
        prep(sources=("yfcc", "iNat", "aporee", "freesound")).audio_input(z1)


def test_soundingearth_webdataset_drops_the_location_sentence(tmp_path):
    meta = {
        "long_key": "123_abc",
        "latitude": 51.5,
        "longitude": -0.1,
        "date_recorded": "2014-05-03 07:15",
        "caption": "birds in a park. the location of the sound is: hyde park, london.",
    }
    members = {
        "123_abc.meta.json": json.dumps(meta).encode(),
        "123_abc.image.jpg": image_bytes(600, 0, "JPEG"),
        "123_abc.audio_mel1.pyd": clap_mel(0),
    }
    for split in ("train_0", "val", "test"):
        write_shard(tmp_path / "se" / f"{split}.tar", members)
    splits = reader("soundingearth")({"root": str(tmp_path / "se"), "imagery": "googleEarth", "zooms": [1]}, 32)
    sample = splits.val[0]
    assert sample.source == "aporee" and sample.caption == "birds in a park."
    assert "london" not in sample.caption and sample.month == 5 and sample.hour == pytest.approx(7.25)
    assert sample.gsd == pytest.approx(0.2 * 256 / 32)
    with pytest.raises(ValueError, match="imagery"):
        reader("soundingearth")({"root": str(tmp_path / "se"), "imagery": "sentinel"}, 32)


def test_geosound_huggingface_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is in the train extra")
    import pyarrow.parquet as pq

    def table(keys):
        return pa.table(
            {
                "sample_id": keys,
                "source": [k.split("-")[0] for k in keys],
                "audio": [
                    {"bytes": b"broken" if k == "iNat-9" else wav_bytes(1.0, 32000, 300 + i), "path": f"{k}.wav"}
                    for i, k in enumerate(keys)
                ],
                "sentinel_image": [{"bytes": image_bytes(1280, i, "JPEG"), "path": None} for i, _ in enumerate(keys)],
                "bingmap_image": [{"bytes": b"", "path": None} for _ in keys],
                "audio_caption": [f"caption {k}" for k in keys],
                "audio_caption_source": ["qwen" for _ in keys],
                "latitude": [10.0 for _ in keys],
                "longitude": [20.0 for _ in keys],
                "date": ["2019-12-31 23:30" for _ in keys],
            }
        )

    data = tmp_path / "GeoSound" / "data"
    data.mkdir(parents=True)
    pq.write_table(table(["iNat-1", "yfcc-2", "iNat-9"]), data / "train-00000-of-00001.parquet", row_group_size=2)
    pq.write_table(table(["aporee-3"]), data / "validation-00000-of-00001.parquet")
    pq.write_table(table(["freesound-4"]), data / "test-00000-of-00001.parquet")
    splits = reader("geosound")({"root": str(tmp_path / "GeoSound"), "layout": "huggingface", "zooms": [1, 5]}, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    sample = splits.train[3]  # yfcc-2 at zoom 5
    assert sample.key == "yfcc-2" and sample.level == 5 and sample.sample_rate == 32000
    assert sample.audio.shape == (32000,) and sample.caption == "caption yfcc-2" and sample.caption_source == "qwen"
    assert sample.month == 12 and sample.hour == pytest.approx(23.5)
    assert sample.gsd == pytest.approx(10.0 * 1280 / 32)  # 5 x 256 px is the whole 1280 px tile
    assert splits.train.get(4, without=frozenset({"audio", "image"})).image is None  # row group 2 unread
    with pytest.raises(BadSample, match="cannot decode audio"):
        splits.train[4]


def test_every_reader_of_the_table_loads_and_an_unknown_kind_names_them():
    from model.config import ConfigError
    from model.data import READERS

    assert {"csv", "geosound", "soundingearth", "synthetic", "demo"} <= set(READERS)
    assert all(callable(reader(kind)) for kind in READERS)
    with pytest.raises(ConfigError, match=r"unknown `data\.kind` 'cvs'; known: csv, demo"):
        reader("cvs")


def test_geosound_random_mel_crop_in_training_only(geosound_shards):
    """mel_index "random": training reads one of the five crops per sample, as PSM; validation and
    test always the first."""
    splits = reader("geosound")({"root": str(geosound_shards), "imagery": "sentinel", "mel_index": "random"}, 32)
    first = reader("geosound")({"root": str(geosound_shards), "imagery": "sentinel"}, 32)
    seen = {splits.train[0].audio_features.tobytes() for _ in range(40)}
    assert len(seen) > 1 and first.train[0].audio_features.tobytes() in seen
    for _ in range(5):
        np.testing.assert_array_equal(splits.val[0].audio_features, first.val[0].audio_features)
