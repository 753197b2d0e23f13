"""Training leftovers, second pass: DDP syncs exactly the parameters the loss reads (no
`find_unused_parameters` warning, the same weights as one process), a run leaves the process group
with no DDP wrapper holding it, `--processes N` on fewer GPUs is refused at start, and a long Ogg or
MP3 recording is read after a seek near its crop."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import yaml

from cli.main import main as soundscape
from model.distributed import check_cpus, check_gpus, cpu_cores
from model.train import check_run_dir, fit
from runtime.audio import (
    MPEG1_RATES,
    AudioFeatureSpec,
    ClapFusionSpec,
    SparseWave,
    decode_audio,
    decoding_for,
    fit_length,
    resample,
    waveform_features,
)
from runtime.errors import UsageError
from tests.test_model_frozen_cache import write_rows
from tests.test_model_readers import image_bytes
from tests.test_model_train import ROOT, config, ddp_config, run_config, run_ranks, weights
from tests.test_training_leftovers import stereo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_more_processes_than_gpus_is_refused_naming_both():
    with pytest.raises(UsageError, match=r"this machine has 2 GPUs.*--processes 2"):
        check_gpus(3, gpus=2)
    check_gpus(2, gpus=2)
    check_gpus(8, gpus=0)  # no CUDA: gloo processes on the CPUs, as many as asked


def test_soundscape_train_processes_on_too_few_gpus_exits_2_before_launching(monkeypatch, tmp_path, capsys):
    import model.distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(model.distributed, "launch", lambda *a: pytest.fail("launched"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    assert soundscape(["train", "--processes", "2", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 1 GPU" in err and "--processes 1" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_more_cpu_processes_than_cores_is_refused_before_launching(monkeypatch, tmp_path, capsys):
    """`train --processes 99` on 2 cores without GPUs started 99 ranks and printed nothing for 90 s."""
    import model.distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model.distributed, "launch", lambda *a: pytest.fail("launched"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    cores = cpu_cores()
    argv = ["train", "--processes", str(cores + 1), "--config", str(path), "--out", str(tmp_path / "run")]
    assert soundscape(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"soundscape train: --processes {cores + 1} runs one process per CPU core on a machine without GPUs, "
        f"and this machine has {cores} core{'s' if cores > 1 else ''}; pass --processes {cores} (or fewer)"
    )
    assert not (tmp_path / "run").exists()
    check_cpus(cores, gpus=0, cores=cores)
    check_cpus(cores + 1, gpus=cores + 1, cores=cores)  # GPU ranks: check_gpus's to bound


@pytest.mark.parametrize(
    "given, argv, says",
    [
        (
            None,
            ["--resume"],
            "--resume: {out} holds no training run to resume (no last.pt); leave out --resume to start one",
        ),
        (
            {},
            ["--resume"],
            "--resume: {out} holds no training run to resume (no last.pt); leave out --resume to start one",
        ),
        (
            {"manifest.json": "{}", "audio.onnx": "graph"},  # a bundle
            [],
            "--out {out} holds audio.onnx and more but no training run, which training would write among; "
            "choose an empty folder or another --out",
        ),
        (
            {"notes.txt": "mine"},
            [],
            "--out {out} holds notes.txt but no training run, which training would write among; "
            "choose an empty folder or another --out",
        ),
        ("a file", [], "cannot create the folder {out} (--out): {out} is a file; choose another --out"),
    ],
    ids=["resume nothing", "resume an empty folder", "a bundle", "user files", "a file"],
)
def test_train_refuses_an_out_that_holds_no_run_to_write(tmp_path, capsys, given, argv, says):
    """`--resume` where no run was trained from step 0 (exit 0); a bundle, store or folder of the
    user's got best.pt, last.pt and metrics.csv among its files; a file was '[Errno 17] File exists'."""
    path, out = tmp_path / "tiny.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    if isinstance(given, str):
        out.write_text(given, encoding="utf-8")
    elif given is not None:
        out.mkdir()
        for name, text in given.items():
            (out / name).write_text(text, encoding="utf-8")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    assert soundscape(["train", "--config", str(path), "--out", str(out), "--no-progress", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"soundscape train: {says.format(out=out)}"
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before
    assert given is not None or not out.exists()


def test_an_empty_folder_or_a_runs_own_takes_a_run(tmp_path):
    empty, run = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    (empty / ".lock").write_text("", encoding="utf-8")  # a killed run's lock, and its half-written checkpoint
    (empty / ".last.4242-4242.tmp.pt").write_bytes(b"partial")
    check_run_dir(empty, resume=False)
    check_run_dir(tmp_path / "new", resume=False)
    run.mkdir()
    for name in ("last.pt", "notes.txt"):
        (run / name).write_bytes(b"x")
    check_run_dir(run, resume=True)
    check_run_dir(run, resume=False)  # refused later, by the run: it says to pass --resume


def test_a_rank_exits_with_its_code_and_its_output_without_the_interpreters_teardown():
    """A rank skips the teardown at exit (where gloo aborted a finished rank now and then), and
    loses nothing it printed or logged: stdout to a pipe is buffered until flushed."""
    script = (
        "import atexit, logging, sys\n"
        "from model.distributed import exit_rank\n"
        "atexit.register(print, 'teardown ran')\n"
        "logging.getLogger('run').warning('logged')\n"
        "print('printed', end='')\n"
        "sys.stderr.write('said')\n"
        "exit_rank(3)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert run.stdout == "printed"
    assert "logged" in run.stderr and "said" in run.stderr


DDP_CASES = {
    "pcmepp": {},
    "infonce": {"train__loss": {"kind": "infonce"}},  # no log-variance head is read
    "sat-audio only": {"train__loss": {"weights": {"sat_audio": 0.5, "sat_text": 0.0, "audio_text": 0.0}}},
    # Recordings without a caption: a batch holding one has no text side, on one rank or both.
    "some captions": {"data": lambda root: captioned_csv_folder(root, lambda i: i % 4 != 1)},
    "no captions": {"data": lambda root: captioned_csv_folder(root, lambda i: False)},
}


@pytest.mark.slow
@pytest.mark.parametrize("changes", DDP_CASES.values(), ids=DDP_CASES.keys())
def test_two_processes_sync_the_parameters_the_loss_reads_as_one_process_trains(tmp_path, changes):
    """Every parameter DDP syncs gets a gradient each step, so find_unused_parameters is off (torch
    warned on every run that it found none unused); those the loss never reads stay as one process
    leaves them."""
    data = changes.get("data")
    cfg = ddp_config(train__batch_size=8, **{k: v for k, v in changes.items() if k != "data"})
    if data is not None:
        cfg["data"] = data(tmp_path / "mine")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    cmd = [sys.executable, "-m", "cli.main", "train", "--processes", "2", "--config", str(path)]
    stderr = run_ranks(cmd, tmp_path / "two")
    assert "find_unused_parameters" not in stderr and "reducer" not in stderr, stderr[-3000:]
    fit(run_config(cfg), tmp_path / "one", progress=False)
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=key)


def captioned_csv_folder(root, captioned) -> dict:
    """A csv data section of 24 recordings in 12 one-degree cells, captioned where `captioned(i)`."""
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for i in range(24):
        soundfile.write(root / "audio" / f"{i}.wav", stereo(0.6, 16000, seed=i), 16000, subtype="PCM_16")
        (root / "images" / f"{i}.png").write_bytes(image_bytes(32, i))
        caption = f"birds and wind number {i % 5}" if captioned(i) else ""
        row = {"lat": 10 + i % 12, "lon": 20, "audio": f"audio/{i}.wav", "image": f"images/{i}.png", "gsd": 10.0}
        rows.append({**row, "caption": caption})
    write_rows(root, rows)
    return {"kind": "csv", "root": str(root), "split": {"val_fraction": 0.2, "test_fraction": 0.1}}


PROBE = """
import gc, sys
import torch
import model.train
from model.train import RunConfig, fit
real = model.train.shutdown
def counted(d):
    gc.collect()
    held = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"rank {d.rank}: {held} DDP wrapper(s) at shutdown", flush=True)
    real(d)
model.train.shutdown = counted
import yaml
fit(RunConfig.from_dict(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_no_ddp_wrapper_holds_the_process_group_when_a_run_leaves_it(tmp_path):
    """A wrapper still alive kept the gloo group past destroy_process_group, to be torn down at
    interpreter exit after the other rank had gone: now and then that rank aborted ('terminate
    called without an active exception', 3 of 85 two-process runs of a probe, none of 70 with the
    wrapper collected first)."""
    path, probe = tmp_path / "ddp.yaml", tmp_path / "probe.py"
    path.write_text(yaml.safe_dump(config(train__steps=2, train__eval_every=0, train__batch_size=8)), encoding="utf-8")
    probe.write_text(PROBE, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(probe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*cmd, str(path), str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if "at shutdown" in line) == [
        "rank 0: 0 DDP wrapper(s) at shutdown",
        "rank 1: 0 DDP wrapper(s) at shutdown",
    ], done.stdout


def write_blockwise(path, wave, rate: int, fmt: str, subtype: str) -> None:
    """soundfile.write in blocks: libsndfile's Vorbis encoder crashed on a minute written at once."""
    with soundfile.SoundFile(path, "w", rate, wave.shape[1], format=fmt, subtype=subtype) as f:
        for start in range(0, len(wave), 1 << 15):
            f.write(wave[start : start + (1 << 15)])


CODECS = [
    ("OGG", "VORBIS", 44100),
    ("OGG", "OPUS", 48000),
    ("MP3", "MPEG_LAYER_III", 44100),  # MPEG-1: mpg123 seeks to the sample
    ("MP3", "MPEG_LAYER_III", 22050),  # MPEG-2: decoded from the start (a seek put CLAP's features 1.4% off)
]


@pytest.mark.parametrize(("fmt", "subtype", "rate"), CODECS)
@pytest.mark.parametrize("front_end", [AudioFeatureSpec(n_mels=32, duration_s=1.0), ClapFusionSpec(duration_s=1.0)])
def test_a_long_compressed_recording_read_after_seeks_gives_the_features_of_the_whole_one(
    tmp_path, fmt, subtype, rate, front_end
):
    """Sought one window after another (CLAP's all along the minute, far enough apart to seek),
    libsndfile's Vorbis decoder gave wrong first samples after some seeks (0.7 off) and Opus's a
    last bit off; decoding from a pre-roll before each window gives the whole decode's samples."""
    path = tmp_path / f"long.{fmt.lower()}"
    write_blockwise(path, stereo(60.0, rate), rate, fmt, subtype)
    whole, whole_rate = decode_audio(path)
    with decoding_for(front_end):
        read, read_rate = decode_audio(path)
    resampled = resample(whole, whole_rate, front_end.sample_rate)
    if rate in MPEG1_RATES or fmt == "OGG":
        np.testing.assert_array_equal(waveform_features(front_end, read, read_rate), front_end.features(resampled))
    else:  # mpg123's MPEG-2 samples differ in the last bit with the reads' buffers, a whole read's too
        sparse = isinstance(read, SparseWave)
        expected = resampled if sparse else fit_length(resampled, front_end.n_samples)
        for a, b in read.spans if sparse else [(0, len(read))]:
            np.testing.assert_allclose(np.asarray(read)[a:b], expected[a:b], rtol=0, atol=1e-6)


def frames_decoded(monkeypatch) -> list[int]:
    """A list that gets the number of frames of every read from a SoundFile (blocks read through it)."""
    counts: list[int] = []
    read = soundfile.SoundFile.read

    def counted(self, *args, **kwargs):
        out = read(self, *args, **kwargs)
        counts.append(len(out))
        return out

    monkeypatch.setattr(soundfile.SoundFile, "read", counted)
    return counts


@pytest.mark.parametrize(("fmt", "subtype", "rate"), CODECS[:3])
def test_the_crop_of_a_long_ogg_or_mp3_is_read_after_a_seek_not_decoded_from_the_start(
    monkeypatch, tmp_path, fmt, subtype, rate
):
    """A 3-minute recording for a 1 s centre crop: the frames up to the crop were all decoded."""
    path = tmp_path / f"long.{fmt.lower()}"
    write_blockwise(path, stereo(180.0, rate), rate, fmt, subtype)
    counts = frames_decoded(monkeypatch)
    with decoding_for(AudioFeatureSpec(n_mels=32, duration_s=1.0)):
        decode_audio(path)
    assert sum(counts) < 0.02 * 180 * rate, f"{sum(counts)} frames decoded of {180 * rate}"
