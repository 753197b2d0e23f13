"""`soundscape train`, `evaluate` and `export` end to end on generated data: memorisation,
exact resume, DDP over two CPU processes equal to one process, early stopping, the JSON of
evaluate, a bundle from a checkpoint, and the one-sentence errors of bad configs and checkpoints."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli.main import main as soundscape
from model.checkpoint import load_checkpoint
from model.train import RunConfig, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "model": {
        "embed_dim": 16,
        "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
        "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64, "meta_hidden": 16},
        "text": {"kind": "hashed", "vocab_size": 512, "max_length": 12, "width": 32, "depth": 1, "heads": 2},
        "audio": {"kind": "melcnn", "channels": [8], "width": 32, "features": {"n_mels": 32, "duration_s": 0.5}},
    },
    "train": {
        "steps": 6,
        "batch_size": 16,
        "lr": 0.003,
        "warmup_steps": 2,
        "eval_every": 3,
        "checkpoint_every": 2,
        "log_every": 1,
        "image_flips": True,
    },
    "data": {"kind": "synthetic", "samples": {"train": 64, "val": 16, "test": 16}, "classes": 8, "duration_s": 0.5},
}


def config(**changes) -> dict:
    cfg = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        node = cfg
        for part in path:
            node = node[part]
        node[key] = value
    return cfg


def ddp_config(**changes) -> dict:
    """A 3-step run without dropout, one checkpoint at its end: what a two-process run is compared
    with one process on (the same global batches give the same weights)."""
    return config(
        model__fusion__dropout=0.0,
        model__text__dropout=0.0,
        train__steps=3,
        train__eval_every=0,
        train__checkpoint_every=3,
        **changes,
    )


def run_ranks(cmd: list[str], out: Path) -> str:
    """Run a multi-process training command writing to `out`, one torch thread a rank, and return
    its stderr once it exits 0; a hung collective fails the test with its ranks killed."""
    run = subprocess.Popen(
        [*cmd, "--out", str(out), "--no-progress"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # its ranks too, which a hung collective holds
        pytest.fail(f"the processes hung: {run.communicate()[1][-3000:]}")
    assert run.returncode == 0, stderr[-6000:]
    return stderr


def run_config(cfg: dict) -> RunConfig:
    return RunConfig.from_dict(copy.deepcopy(cfg))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]


def test_memorises_a_tiny_paired_set(tmp_path):
    from model.checkpoint import model_from_checkpoint
    from model.data import open_splits
    from model.evaluate import embed_split, metrics
    from model.nn.psm import preprocessing

    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["model"]["audio"]["features"]["duration_s"] = 0.5
    cfg["train"].update(steps=600, batch_size=32, eval_every=0, checkpoint_every=600, log_every=100)
    cfg["data"].update(samples={"train": 32, "val": 8, "test": 8}, classes=32, duration_s=0.5)
    fit(run_config(cfg), tmp_path / "run", progress=False)
    model, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    emb = embed_split(model, open_splits(cfg["data"], 32).train, preprocessing(model))
    result = metrics(emb, probabilistic=True, oracle_caption=False)["all"]["metadata"]
    assert result["gallery"] == 32
    assert result["I2S_R@10%"] == 1.0 and result["S2I_R@10%"] == 1.0, result


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = run_config(config())
    whole = fit(cfg, tmp_path / "whole", progress=False)
    first = fit(cfg, tmp_path / "split", stop_after=3, progress=False)
    assert first.last_step == 3 and load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3
    second = fit(cfg, tmp_path / "split", resume=True, progress=False)
    assert whole.last_step == second.last_step == 6
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "split"))
    assert ca["calibration"] == cb["calibration"] and ca["best"] == cb["best"]

    def rows(d):
        with open(tmp_path / d / "metrics.csv", encoding="utf-8") as f:
            return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(f)]

    assert rows("whole") == rows("split") and len(rows("whole")) == 6
    with pytest.raises(FileExistsError, match="--resume"):
        fit(cfg, tmp_path / "whole", progress=False)


def test_two_ddp_processes_train_as_one_process_on_the_global_batch(tmp_path):
    cfg = ddp_config()
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cli.main",
        "train",
        "--config",
        str(path),
        "--out",
        str(tmp_path / "two"),
        "--no-progress",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    fit(run_config(cfg), tmp_path / "one", progress=False)
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=key)
    # Each rank saw half the global batch: the gathered loss is the one-process loss.
    with (
        open(tmp_path / "two" / "metrics.csv", encoding="utf-8") as f,
        open(tmp_path / "one" / "metrics.csv", encoding="utf-8") as g,
    ):
        losses_two = [float(r["loss"]) for r in csv.DictReader(f)]
        losses_one = [float(r["loss"]) for r in csv.DictReader(g)]
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-5)


def test_early_stopping_on_validation_recall(tmp_path):
    cfg = run_config(
        config(train__lr=1e-12, train__warmup_steps=1, train__eval_every=1, train__patience=2, train__steps=50)
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    # lr 1e-12 (0 is refused): steps too small to move a float32 weight, so the first evaluation is
    # the best and two more without improvement stop the run.
    assert result.stopped_early and result.last_step == 3 and result.best_step == 1
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    fit(run_config(config(train__steps=20, train__eval_every=10)), out, progress=False)
    return out


def test_evaluate_writes_the_paper_metrics_as_json(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        soundscape(["evaluate", "--checkpoint", str(trained_run / "best.pt"), "--out", str(out), "--no-progress"]) == 0
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["split"] == "test" and report["samples"] == 16 and report["score"] == "-CSD"
    assert "ties averaged" in report["definition"] and "rank <= 0.1 N" in report["definition"]
    results = report["results"]
    assert set(results) == {"all", "level_3", "level_5"}
    assert set(results["all"]) == {"metadata", "no_source", "no_metadata", "oracle_caption"}
    assert set(results["all"]["oracle_caption"]) == {"metadata", "no_source", "no_metadata"}
    m = results["level_3"]["metadata"]
    assert m["gallery"] == 8 and 0 <= m["I2S_R@10%"] <= 1 and 1 <= m["S2I_median_rank"] <= 8
    assert "oracle_caption" in capsys.readouterr().out  # the table


def test_export_from_a_checkpoint_records_calibration_metrics_and_fp16(trained_run, tmp_path, bundle_path):
    from runtime.bundle import Bundle, BundleError

    metrics = tmp_path / "test.json"
    metrics.write_text(json.dumps({"results": {"all": {"metadata": {"I2S_R@10%": 0.5}}}}), encoding="utf-8")
    out = tmp_path / "bundle"
    assert (
        soundscape(
            [
                "export",
                "--checkpoint",
                str(trained_run / "best.pt"),
                "--out",
                str(out),
                "--fp16",
                "--metrics",
                str(metrics),
            ]
        )
        == 0
    )
    checkpoint = load_checkpoint(trained_run / "best.pt")
    fp32, fp16 = Bundle(out), Bundle(out, precision="fp16")
    assert fp32.calibration == pytest.approx(tuple(checkpoint["calibration"]))
    assert fp32.manifest["precisions"] == ["fp32", "fp16"] and fp32.id == fp16.id
    assert fp32.manifest["metrics"]["test"]["results"]["all"]["metadata"]["I2S_R@10%"] == 0.5
    assert fp32.manifest["metrics"]["validation"]["step"] == checkpoint["best_step"]
    assert fp32.manifest["training"]["step"] == checkpoint["step"] and fp32.manifest["name"] == "tiny"
    mu32, lv32 = fp32.embed_texts(["birds number 3", "rain"])
    mu16, lv16 = fp16.embed_texts(["birds number 3", "rain"])
    np.testing.assert_allclose(mu16, mu32, atol=2e-2)
    np.testing.assert_allclose(lv16, lv32, atol=5e-2)
    with pytest.raises(BundleError, match="no fp16 graphs"):
        Bundle(bundle_path, precision="fp16")  # exported without --fp16
    with pytest.raises(BundleError, match="no int8 graphs"):
        Bundle(out, precision="int8")  # exported without --int8


def test_config_errors_name_the_key_and_exit_2(tmp_path, capsys):
    cases = [
        (config(model__image__depht=2), "model.image.depht"),
        ({**config(), "trian": {}}, "trian"),
        (config(data__kind="geosund"), "data.kind"),
        (config(train__steps="many"), "train.steps"),
    ]
    for cfg, name in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        assert soundscape(["train", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip()
        assert name in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def test_resuming_with_another_architecture_lists_the_mismatched_keys(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "config.yaml"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    path = tmp_path / "deeper.yaml"
    path.write_text(
        yaml.safe_dump(config(train__steps=20, train__eval_every=10, model__image__depth=2)), encoding="utf-8"
    )
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model architecture" in err and "missing: image.blocks.1." in err


def test_the_no_source_condition_forgets_only_the_source():
    from model.evaluate import _presence
    from runtime.contract import META_TOKENS

    present = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]])
    conditions = _presence(present)
    source = META_TOKENS.index("source")
    others = [i for i in range(len(META_TOKENS)) if i != source]
    assert torch.equal(conditions["metadata"], present)
    assert conditions["no_source"][:, source].eq(0).all()
    assert torch.equal(conditions["no_source"][:, others], present[:, others])
    assert conditions["no_metadata"].eq(0).all() and present[0, source] == 1  # the input is not changed


def test_random_resized_crop_takes_the_drawn_rectangle():
    from model.train import random_resized_crop

    image = torch.zeros(3, 16, 16, 3, dtype=torch.uint8)
    image[:, :, 12:] = 255  # the right quarter is white
    square = 0.5  # the aspect draw at the middle of log 3/4..4/3 is a square
    draws = torch.tensor(
        [
            [1.0, square, 0.5, 0.5],  # the whole image: unchanged
            [0.0, square, 0.0, 0.0],  # a quarter of the area at the top left: all black
            [0.0, square, 1.0, 1.0],  # a quarter at the bottom right: its right half white
        ]
    )
    out = random_resized_crop(image, draws * torch.tensor([0.9999, 1, 1, 1]), (0.25, 1.0))
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert (out[0].int() - image[0].int()).abs().max() <= 1
    assert out[1].max() == 0
    assert out[2][:, :6].max() == 0 and out[2][:, 10:].min() == 255


def test_grad_clip_null_clips_nothing(tmp_path):
    """null trains exactly as a limit no gradient reaches, and unlike a limit every one does."""
    runs = {}
    for name, clip in (("none", None), ("huge", 1e12), ("tiny", 1e-9)):
        cfg = config(train__grad_clip=clip, train__image_crop_scale=[0.2, 1.0], train__steps=1, train__eval_every=0)
        fit(run_config(cfg), tmp_path / name, progress=False)
        runs[name] = weights(tmp_path / name)
    assert all(torch.equal(runs["none"][k], runs["huge"][k]) for k in runs["none"])
    assert not all(torch.equal(runs["none"][k], runs["tiny"][k]) for k in runs["none"])


def test_evaluation_never_ranks_a_gallery_that_holds_a_clip_twice():
    """A reader that serves each record once per zoom (GeoSound, SoundingEarth) gets per-level
    galleries and their mean, no "all"; distinct clips keep "all"."""
    from model.evaluate import CONDITIONS, Gaussians, SplitEmbeddings, metrics, overall

    rng = np.random.default_rng(0)

    def gaussians(raw: np.ndarray) -> Gaussians:
        return Gaussians(raw, np.full_like(raw, -4.0))

    clips = rng.standard_normal((20, 8))
    sat = {c: gaussians(rng.standard_normal((40, 8))) for c in CONDITIONS}
    levels = np.array([1] * 20 + [3] * 20, dtype=object)
    repeated = metrics(SplitEmbeddings(sat, gaussians(np.vstack([clips, clips])), None, levels), True, False)
    assert "all" not in repeated and {"level_1", "level_3", "levels_mean"} <= set(repeated)
    mean = repeated["levels_mean"]["metadata"]["I2S_R@10%"]
    assert mean == pytest.approx(
        (repeated["level_1"]["metadata"]["I2S_R@10%"] + repeated["level_3"]["metadata"]["I2S_R@10%"]) / 2
    )
    assert overall(repeated) is repeated["levels_mean"]
    distinct = metrics(SplitEmbeddings(sat, gaussians(rng.standard_normal((40, 8))), None, levels), True, False)
    assert "all" in distinct and "levels_mean" not in distinct and overall(distinct) is distinct["all"]


def test_class_balance_weighs_a_sample_by_its_rarest_class():
    from model.batches import class_balance

    # class 0 in all 4 samples, class 1 in one, class 2 in two; sample 3 has no class
    classes = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 1], [0, 0, 0]], bool)
    w = class_balance(classes, 1.0)
    assert w == pytest.approx([4.0, 2.0, 2.0, 4 / 3])  # 1/(1/4), 1/(2/4), and the commonest class's
    assert class_balance(classes, 0.0) == pytest.approx(np.ones(4))


def test_place_balance_weighs_a_sample_by_how_crowded_its_tile_is():
    from model.batches import place_balance

    # three samples in Paris (one level-6 tile), one in Sydney, one just across Paris's tile edge
    lat = np.array([48.85, 48.86, 48.87, -33.87, 48.85])
    lon = np.array([2.35, 2.34, 2.36, 151.21, 5.7])
    assert place_balance(lat, lon, 1.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])
    assert place_balance(lat, lon, 0.5) == pytest.approx([3**-0.5] * 3 + [1.0, 1.0])
    assert place_balance(lat, lon, 0.0) == pytest.approx(np.ones(5))
    assert place_balance(lat, lon, 1.0, level=2) == pytest.approx([1 / 4] * 3 + [1.0, 1 / 4])


def test_balance_places_weighs_batches_on_a_reader_that_labels_no_classes(tmp_path):
    """The synthetic reader labels no classes, yet its samples' positions (read without images
    or audio) weigh the batches as their full samples' positions do."""
    from model.batches import place_balance
    from model.data import open_splits
    from model.train import _batch_weights

    cfg = run_config(config(train__balance_places=1.0, train__steps=2, train__eval_every=0))
    splits = open_splits(cfg.data, cfg.model.image.size)
    where = [splits.train[i] for i in range(len(splits.train))]
    weights = _batch_weights(splits, 0.0, 1.0)
    assert weights is not None and len(np.unique(weights)) > 1
    assert weights == pytest.approx(
        place_balance(np.array([s.lat for s in where]), np.array([s.lon for s in where]), 1.0)
    )
    assert _batch_weights(splits, 0.0, 0.0) is None
    assert fit(cfg, tmp_path / "run", progress=False).last_step == 2


def test_weighted_batches_are_distinct_seeded_and_favour_rare_samples():
    from model.batches import GlobalBatches

    weights = np.ones(200)
    weights[:10] = 20.0  # 10 rare samples, each 20x as likely
    one = GlobalBatches(200, 16, seed=3, weights=weights)
    batches = [one.indices(step) for step in range(300)]
    assert all(len(set(b)) == 16 for b in batches), "a batch never repeats a sample"
    assert batches[:5] == [GlobalBatches(200, 16, seed=3, weights=weights).indices(s) for s in range(5)]
    drawn = np.bincount(np.concatenate(batches), minlength=200)
    assert drawn[:10].mean() > 8 * drawn[10:].mean()
    ranks = [GlobalBatches(200, 16, seed=3, weights=weights, rank=r, world=2).indices(7) for r in (0, 1)]
    assert ranks[0] + ranks[1] == batches[7], "two processes split the one global batch"


def test_balance_classes_needs_a_reader_that_labels_classes(tmp_path, capsys):
    path = tmp_path / "balanced.yaml"
    path.write_text(yaml.safe_dump(config(train__balance_classes=0.5)), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.balance_classes" in err and len(err.splitlines()) == 1, err


def _unreadable(monkeypatch, split: str, indices: set[int]) -> None:
    """The synthetic reader's samples `indices` of `split` raise BadSample, as a corrupt file would."""
    from model.data import BadSample
    from model.readers import synthetic

    real = synthetic.SyntheticSource.get

    def get(self, index, without=frozenset()):
        if self.split == split and index in indices:
            raise BadSample(f"synthetic:{split}:{index}", "corrupt")
        return real(self, index, without)

    monkeypatch.setattr(synthetic.SyntheticSource, "get", get)


def test_evaluation_embeds_the_substitute_of_an_unreadable_sample_once(monkeypatch):
    """An unreadable sample is replaced by the next one, which the same batch then held twice: a
    gallery with a clip in it twice, the "all" gallery taken for one of a multi-zoom reader's and
    replaced by levels_mean."""
    from model.config import ModelConfig
    from model.data import open_splits
    from model.evaluate import embed_split, metrics
    from model.nn.psm import PSMModel, preprocessing

    _unreadable(monkeypatch, "test", {5})
    torch.manual_seed(0)
    model = PSMModel(ModelConfig.from_dict(copy.deepcopy(TINY["model"]))).eval()
    test = open_splits(copy.deepcopy(TINY["data"]), model.cfg.image_size).test
    emb = embed_split(model, test, preprocessing(model), batch_size=16)
    assert len(emb.levels) == len(emb.audio.raw) == 15
    assert len(np.unique(emb.audio.raw, axis=0)) == 15
    results = metrics(emb, probabilistic=True, oracle_caption=False)
    assert results["all"]["metadata"]["gallery"] == 15 and "levels_mean" not in results


def test_a_split_without_samples_is_one_sentence(trained_run, tmp_path, capsys):
    """An empty test split was a ValueError traceback from np.concatenate; an empty validation
    split the same, after the whole run had trained."""
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(config(data__samples={"train": 64, "val": 16, "test": 0})), encoding="utf-8")
    checkpoint = str(trained_run / "best.pt")
    assert soundscape(["evaluate", "--checkpoint", checkpoint, "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "test split" in err and "no samples" in err and len(err.splitlines()) == 1, err
    path.write_text(yaml.safe_dump(config(data__samples={"train": 64, "val": 0, "test": 16})), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "validation split has no samples" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_resumed_run_counts_the_substitutions_before_it(monkeypatch, tmp_path):
    """The count of replaced unreadable samples (metrics.csv's `skipped`, the train summary) began
    at 0 again on --resume: 4 substitutions in a whole run, 2 in a run stopped and resumed."""
    _unreadable(monkeypatch, "train", {3, 40})
    cfg = run_config(config())
    whole = fit(cfg, tmp_path / "whole", progress=False)
    fit(cfg, tmp_path / "split", stop_after=3, progress=False)
    resumed = fit(cfg, tmp_path / "split", resume=True, progress=False)
    assert whole.skipped_files == resumed.skipped_files == 2
    assert whole.skipped == resumed.skipped > 2

    def skipped(d):
        with open(tmp_path / d / "metrics.csv", encoding="utf-8") as f:
            return [r["skipped"] for r in csv.DictReader(f)]

    assert skipped("whole") == skipped("split")


def test_a_second_train_on_the_same_run_directory_stops_at_once(tmp_path, capsys):
    """Two `soundscape train --out R` started together both ran to exit 0, their metrics.csv rows
    interleaved (every logged step twice) and each overwriting the other's last.pt."""
    import fcntl

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config(train__steps=2, train__eval_every=0)), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a", encoding="utf-8") as held:  # what a running `train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert soundscape(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "another `soundscape train` is running in" in err and len(err.splitlines()) == 1, err
        assert not (run / "metrics.csv").exists()
    # Released, the run goes ahead; a refused start (no --resume) releases the lock it took.
    assert soundscape(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert soundscape(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert soundscape(["train", "--config", str(cfg), "--out", str(run), "--no-progress", "--resume"]) == 0


def test_a_resumed_run_removes_the_partial_checkpoint_a_killed_run_left(tmp_path):
    """kill -9 while last.pt was being written left its temporary file (`.last.PID-TID.tmp.pt`,
    as large as a checkpoint) in the run for good; --resume now removes such files, and nothing else."""
    cfg = run_config(config())
    run = tmp_path / "run"
    fit(cfg, run, stop_after=2, progress=False)
    partial = [run / ".last.4242-4242.tmp.pt", run / ".best.4242-4243.tmp.pt"]
    for path in partial:
        path.write_bytes((run / "last.pt").read_bytes()[:1000])
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    fit(cfg, run, resume=True, progress=False)
    assert not any(path.exists() for path in partial)
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine" and load_checkpoint(run / "last.pt")["step"] == 6


def test_resuming_with_another_seed_or_learning_rate_is_refused(tmp_path, capsys):
    """`train --resume` with train.seed (or lr, batch_size, ...) changed continued silently with other
    batches and steps than the run began with; a longer `steps` and other logging stay allowed."""
    path, run = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress", "--stop-after", "2"]) == 0
    path.write_text(yaml.safe_dump(config(train__seed=7, train__lr=0.001)), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.lr, train.seed differ" in err and "seed 56" in err and len(err.splitlines()) == 1, err
    assert load_checkpoint(run / "last.pt")["step"] == 2
    path.write_text(yaml.safe_dump(config(train__steps=8, train__log_every=2, train__workers=1)), encoding="utf-8")
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 8
