"""The frozen-tower cache (model.frozen_cache) never hands out outputs of data that has changed
since they were computed: a user's CSV folder edited in place (a caption changed, an audio file
replaced, rows reordered, the same number of rows), GeoSound shards or Parquet files rewritten,
and a reader that cannot say what its data is gets no cache on disk at all."""

import copy
import csv
import importlib.metadata
import logging
import os
import time

import numpy as np
import pytest
import torch

import model.frozen_cache as frozen_cache_module
from model.batches import SkipLog
from model.config import HashedTextConfig
from model.data import reader
from model.frozen_cache import frozen_cache, library_versions, numerics
from model.nn.psm import preprocessing
from model.nn.text_towers import HashedTextTower
from tests.test_model_readers import clap_mel, image_bytes, wav_bytes, write_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# File times move in kernel ticks (1-10 ms): a file rewritten within one keeps its times.
TICK_S = 0.05
SPLIT = {"cell_deg": 90.0, "val_fraction": 0.0, "test_fraction": 0.0}  # one cell: every row in train


@pytest.fixture
def folder(tmp_path):
    """A CSV folder of 6 rows, each with its image, audio and caption."""
    root = tmp_path / "mydata"
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for i in range(6):
        (root / "audio" / f"{i}.wav").write_bytes(wav_bytes(freq=300 + 100 * i))
        (root / "images" / f"{i}.png").write_bytes(image_bytes(40, i))
        rows.append(
            {
                "lat": 10 + i,
                "lon": 20,
                "audio": f"audio/{i}.wav",
                "caption": f"birds number {i}",
                "image": f"images/{i}.png",
                "gsd": 10.0,
            }
        )
    write_rows(root, rows)
    return root


def write_rows(root, rows: list[dict]) -> None:
    with open(root / "samples.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(root) -> list[dict]:
    with open(root / "samples.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def cached_text(model, section: dict, cache_dir, kind: str = "csv", split: str = "train") -> np.ndarray:
    """The frozen text tower's cached outputs of the train split `section` (of reader `kind`)
    describes, cached as `split`."""
    source = reader(kind)(section, model.cfg.image_size).train
    cache = frozen_cache(
        model,
        split,
        source,
        preprocessing(model),
        cache_dir=cache_dir,
        data={"kind": kind, **section},
        batch_size=4,
        workers=0,
        skips=SkipLog(),
        progress=False,
    )
    return cache.outputs["text"]


def text_outputs(model, captions: list[str]) -> np.ndarray:
    ids, mask = model.tokenizer().encode(captions)
    with torch.no_grad():
        return model.text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_an_edited_caption_of_a_csv_folder_is_never_read_from_a_stale_cache(frozen_text_model, folder, tmp_path):
    """A caption changed in samples.csv, the same number of rows: the cache was named by the count
    of samples, so training read the old caption's MiniLM output, silently."""
    section = {"root": str(folder), "split": SPLIT}
    cache_dir = tmp_path / "cache"
    before = cached_text(frozen_text_model, section, cache_dir)
    rows = read_rows(folder)
    rows[2]["caption"] = "church bells on a sunday morning"
    write_rows(folder, rows)
    after = cached_text(frozen_text_model, section, cache_dir)
    want = text_outputs(frozen_text_model, [r["caption"] for r in rows])
    np.testing.assert_allclose(after, want, atol=1e-5)
    assert not np.allclose(after[2], before[2], atol=1e-3)
    np.testing.assert_array_equal(after[0], before[0])
    # reordered rows: each cached row is its own row's caption again
    write_rows(folder, rows[::-1])
    np.testing.assert_allclose(cached_text(frozen_text_model, section, cache_dir), want[::-1], atol=1e-5)
    # and an unchanged folder reads its cache (no third file for the same data)
    files = sorted(cache_dir.iterdir())
    cached_text(frozen_text_model, section, cache_dir)
    assert sorted(cache_dir.iterdir()) == files and len(files) == 3


def content(kind: str, section: dict, split: str = "train") -> str:
    return getattr(reader(kind)(section, 32), split).content_hash


def test_a_replaced_audio_or_image_file_changes_the_csv_folders_content_hash(folder):
    section = {"root": str(folder), "split": SPLIT}
    first = content("csv", section)
    assert content("csv", section) == first  # the same files: the same hash, a cache that is found
    audio = folder / "audio" / "3.wav"
    stat = audio.stat()
    time.sleep(TICK_S)
    audio.write_bytes(wav_bytes(freq=1234))  # another recording of the same length
    assert audio.stat().st_size == stat.st_size
    os.utime(audio, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its old time (cp -p, tar x)
    second = content("csv", section)
    assert second != first
    (folder / "images" / "4.png").write_bytes(image_bytes(40, 99))
    assert content("csv", section) != second


def test_rewritten_geosound_shards_or_captions_change_the_content_hash(tmp_path):
    root = tmp_path / "geosound"

    def shards(seed: int) -> None:
        for split in ("train", "val", "test"):
            members = {
                "iNat-1.meta.json": b'{"latitude": 1, "longitude": 2, "text": "rain"}',
                "iNat-1.image.jpg": image_bytes(300, seed, "JPEG"),
                "iNat-1.audio_mel1.pyd": clap_mel(seed),
            }
            write_shard(root / "with_sentinel" / f"{split}_0.tar", members)

    shards(0)
    section = {"root": str(root), "zooms": [1]}
    first = content("geosound", section)
    assert content("geosound", section) == first
    time.sleep(TICK_S)
    shards(1)  # the same keys, other mels
    second = content("geosound", section)
    assert second != first
    captions = tmp_path / "captions.csv"
    captions.write_text("sample_id,caption,caption_source\niNat-1,heavy rain,meta\n", encoding="utf-8")
    with_captions = content("geosound", {**section, "captions": str(captions)})
    captions.write_text("sample_id,caption,caption_source\niNat-1,light rain,meta\n", encoding="utf-8")
    assert content("geosound", {**section, "captions": str(captions)}) != with_captions


def test_a_rewritten_parquet_file_changes_the_content_hash(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is in the train extra")
    import pyarrow.parquet as pq

    data = tmp_path / "GeoSound"
    data.mkdir()

    def write(freq: float) -> None:
        for name in ("train", "validation", "test"):
            table = pa.table(
                {
                    "sample_id": ["iNat-1"],
                    "audio": [{"bytes": wav_bytes(1.0, 16000, freq), "path": "a.wav"}],
                    "latitude": [1.0],
                    "longitude": [2.0],
                }
            )
            pq.write_table(table, data / f"{name}-00000-of-00001.parquet")

    write(300)
    section = {"root": str(data), "layout": "huggingface", "zooms": [1]}
    first = content("geosound", section)
    time.sleep(TICK_S)
    write(600)
    assert content("geosound", section) != first


def test_a_reader_without_a_content_hash_gets_no_cache_on_disk(frozen_text_model, folder, tmp_path, caplog):
    """Such a reader cannot say when its data changed, so its frozen outputs are computed for the
    run and kept in memory only, with a warning that says why."""
    source = reader("csv")({"root": str(folder), "split": SPLIT}, 32).train

    class Unhashed:
        def __len__(self):
            return len(source)

        def __getitem__(self, index):
            return source[index]

    with caplog.at_level(logging.WARNING):
        cache = frozen_cache(
            frozen_text_model,
            "train",
            Unhashed(),
            preprocessing(frozen_text_model),
            cache_dir=tmp_path / "cache",
            data={"kind": "mine"},
            batch_size=4,
            workers=0,
            skips=SkipLog(),
            progress=False,
        )
    want = text_outputs(frozen_text_model, [source[i].caption for i in range(len(source))])
    np.testing.assert_allclose(cache.outputs["text"], want, atol=1e-5)
    assert not (tmp_path / "cache").exists()
    assert "content_hash" in caplog.text


def test_a_frozen_towers_weights_are_hashed_once_for_the_three_splits(frozen_text_model, folder, tmp_path, monkeypatch):
    """Each split's cache file is named by the tower's weights digest: it hashed every tensor for
    each split (3 times a run, 0.07 s each for MiniLM); now once, until weights are loaded again."""
    tower = frozen_text_model.text
    hashed = []
    compute = type(tower).compute_digest
    monkeypatch.setattr(type(tower), "compute_digest", lambda self: hashed.append(self) or compute(self))
    tower.load_state_dict(tower.state_dict())  # weights loaded: any digest kept before is dropped
    for split in ("train", "val", "test"):
        cached_text(frozen_text_model, {"root": str(folder), "split": SPLIT}, tmp_path / split, split=split)
    assert hashed == [tower]
    assert len(list(tmp_path.glob("*/*.npz"))) == 3


def test_weights_loaded_into_a_frozen_tower_give_it_a_new_digest():
    """Its weights changed through its parent's load_state_dict (as --init-from and resuming
    load): the digest kept from before would name the old weights' cache."""
    tower = HashedTextTower(HashedTextConfig(vocab_size=64, width=16, depth=1, heads=2, max_length=8))
    tower.freeze()
    parent = torch.nn.ModuleDict({"text": tower})
    before = tower.weights_digest()
    state = parent.state_dict()
    parent.load_state_dict({**state, "text.embed.weight": state["text.embed.weight"] + 1})
    after = tower.weights_digest()
    assert after != before and after == tower.compute_digest()


def test_another_torch_release_names_another_cache_file(frozen_text_model, folder, tmp_path, monkeypatch):
    """The library versions were not in the key: an upgraded torch or transformers, whose outputs
    may differ, was served the outputs the old one cached."""
    section = {"root": str(folder), "split": SPLIT}
    assert library_versions()["torch"] == torch.__version__
    first = cached_text(frozen_text_model, section, tmp_path / "cache")
    installed = importlib.metadata.version
    for name in ("torch", "transformers"):
        monkeypatch.setattr(
            importlib.metadata, "version", lambda dist, name=name: "99.0" if dist == name else installed(dist)
        )
        assert library_versions()[name] == "99.0"
        np.testing.assert_array_equal(cached_text(frozen_text_model, section, tmp_path / "cache"), first)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_the_key_holds_the_device_and_precision_the_outputs_were_computed_in(frozen_text_model):
    """A cache computed on a GPU (TF32 convolutions and matmuls on recent ones), under autocast or
    in another dtype differs from fp32 CPU outputs by far more than rounding: the key said none of
    these, so one was read as the other's."""
    tower = frozen_text_model.text
    assert numerics(tower) == {"device": "cpu", "dtypes": ["torch.float32"], "autocast": None, "matmul": "highest"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert numerics(tower)["autocast"] == "torch.bfloat16"
    assert numerics(copy.deepcopy(tower).double())["dtypes"] == ["torch.float64"]


def test_a_cache_computed_under_autocast_is_recomputed_in_fp32_and_back(frozen_text_model, folder, tmp_path):
    section = {"root": str(folder), "split": SPLIT}
    captions = [r["caption"] for r in read_rows(folder)]
    fp32 = cached_text(frozen_text_model, section, tmp_path / "cache")
    np.testing.assert_allclose(fp32, text_outputs(frozen_text_model, captions), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = cached_text(frozen_text_model, section, tmp_path / "cache")
        np.testing.assert_allclose(bf16, text_outputs(frozen_text_model, captions), atol=1e-6)
    assert np.abs(bf16 - fp32).max() > 1e-3  # what reading one as the other would have given
    np.testing.assert_array_equal(cached_text(frozen_text_model, section, tmp_path / "cache"), fp32)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_a_cache_a_gpu_wrote_is_not_read_on_the_cpu(frozen_text_model, folder, tmp_path, monkeypatch):
    """The file a CUDA run names (its device and TF32 settings in the key) lies in the cache folder,
    holding other values: the CPU run computes its own."""
    section = {"root": str(folder), "split": SPLIT}
    cpu = numerics(frozen_text_model.text)
    gpu = {**cpu, "device": "cuda", "capability": [9, 0], "tf32": [False, True]}
    monkeypatch.setattr(frozen_cache_module, "numerics", lambda tower: gpu)
    on_gpu = cached_text(frozen_text_model, section, tmp_path / "cache")
    [written] = (tmp_path / "cache").glob("*.npz")
    np.savez(written, values=on_gpu + 0.01, bad_index=np.zeros(0, np.int64), bad_where=[], bad_reason=[])
    monkeypatch.undo()
    on_cpu = cached_text(frozen_text_model, section, tmp_path / "cache")
    np.testing.assert_array_equal(on_cpu, on_gpu)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
