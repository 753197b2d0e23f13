"""Training audit leftovers: a frozen tower's cache follows its weights (an upgraded package is
never read through the old package's outputs); a signal during validation abandons it between two
batches, and the resumed run redoes it and ends bit for bit as an uninterrupted one, also under
torchrun, and `soundscape train --processes N` stops as one process does; a long recording is read
only where the front end reads it (a centre crop, CLAP's frames)."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import load_file, save_file

import model.evaluate
from cli.main import build_parser
from model.batches import Examples
from model.checkpoint import load_checkpoint
from model.commands import _rank_command
from model.config import ModelConfig
from model.data import reader
from model.frozen_cache import fingerprint
from model.nn import audio_towers, text_towers
from model.nn.psm import PSMModel
from model.stopping import Interrupted
from model.train import fit
from runtime.audio import (
    CENTRE_CROPPING,
    AisfxMelSpec,
    AudioFeatureSpec,
    ClapFusionSpec,
    SparseWave,
    decode_audio,
    decoding_for,
    resample,
    waveform_features,
)
from tests.test_model_frozen_cache import cached_text as cached_reader_text
from tests.test_model_frozen_cache import write_rows
from tests.test_model_readers import image_bytes, prep
from tests.test_model_train import config, run_config, weights
from tests.test_train_interrupt import ROOT, rows, signal_at_step, wait_for_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SYNTHETIC = {"kind": "synthetic", "samples": {"train": 6, "val": 2, "test": 2}, "duration_s": 0.5}
SMALL = {
    "embed_dim": 16,
    "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
    "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64},
    "text": {"kind": "minilm", "max_length": 32},
    "audio": {"kind": "melcnn", "channels": [8], "width": 32, "features": {"duration_s": 0.5}},
}


def small_model(**towers) -> PSMModel:
    torch.manual_seed(0)
    return PSMModel(ModelConfig.from_dict({**SMALL, **towers}))


def upgraded_minilm(tmp_path) -> Path:
    """A copy of the MiniLM package's model folder with other weights, as a new release would ship."""
    folder = tmp_path / "minilm-2"
    shutil.copytree(text_towers.minilm_package_dir(), folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, folder / "model.safetensors")
    return folder


def cached_text(model: PSMModel, cache_dir) -> np.ndarray:
    return cached_reader_text(model, {k: v for k, v in SYNTHETIC.items() if k != "kind"}, cache_dir, "synthetic")


def test_an_upgraded_text_tower_package_is_not_read_through_the_old_packages_cache(monkeypatch, tmp_path):
    """The same config (`path` left to the package) over another release's weights: the cache was
    named by the config alone, so the old release's outputs were read back, silently."""
    cache_dir = tmp_path / "cache"
    old = cached_text(small_model(), cache_dir)
    folder = upgraded_minilm(tmp_path)
    monkeypatch.setattr(text_towers, "minilm_package_dir", lambda: folder)
    upgraded = small_model()
    new = cached_text(upgraded, cache_dir)
    assert not np.allclose(new, old, atol=1e-3)
    source = reader("synthetic")({k: v for k, v in SYNTHETIC.items() if k != "kind"}, 16).train
    captions = [source[i].caption for i in range(len(source))]
    ids, mask = upgraded.tokenizer().encode(captions)
    with torch.no_grad():
        want = upgraded.text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(new, want, atol=1e-5)
    files = sorted(cache_dir.iterdir())
    assert len(files) == 2
    np.testing.assert_array_equal(cached_text(upgraded, cache_dir), new)  # and its own cache is found again
    assert sorted(cache_dir.iterdir()) == files


def test_the_cache_name_follows_the_text_towers_tokenizer_file(monkeypatch, tmp_path):
    folder = tmp_path / "minilm-tokenizer"
    shutil.copytree(text_towers.minilm_package_dir(), folder)
    before = fingerprint(small_model(text={"kind": "minilm", "path": str(folder)}), "text", "train", SYNTHETIC, "c")
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text(encoding="utf-8").replace('"[UNK]"', '"[UNKNOWN]"'), encoding="utf-8")
    after = fingerprint(small_model(text={"kind": "minilm", "path": str(folder)}), "text", "train", SYNTHETIC, "c")
    assert after != before


@pytest.mark.usefixtures("aisfx_installed")
def test_the_cache_name_follows_the_aisfx_packages_weights(monkeypatch, tmp_path):
    aisfx = {"kind": "aisfx", "duration_s": 1.0}
    before = fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c")
    assert fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c") == before
    weights, datasets = torch.load(audio_towers.aisfx_checkpoint(), map_location="cpu", weights_only=False)
    name = next(k for k in weights if k.startswith("embedding_net.") and weights[k].is_floating_point())
    weights = {**weights, name: weights[name] + 0.01}
    torch.save((weights, datasets), tmp_path / "checkpoint.pth")
    monkeypatch.setattr(audio_towers, "aisfx_checkpoint", lambda: tmp_path / "checkpoint.pth")
    assert fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c") != before


def signal_in_validation(monkeypatch, signum: int) -> list[int]:
    """Send this process `signum` while the first batch of the first validation is embedded;
    the list counts the validation batches embedded."""
    embedded: list[int] = []
    to_tensors = model.evaluate.to_tensors

    def to_tensors_and_signal(batch, device):
        embedded.append(len(batch["index"]))
        if len(embedded) == 1:
            os.kill(os.getpid(), signum)
        return to_tensors(batch, device)

    monkeypatch.setattr(model.evaluate, "to_tensors", to_tensors_and_signal)
    return embedded


def assert_same_run(a: Path, b: Path) -> None:
    """Bit for bit: weights, calibration, best validation, best.pt and metrics.csv."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = (load_checkpoint(d / "last.pt") for d in (a, b))
    assert ca["calibration"] == cb["calibration"] and ca["best"] == cb["best"] and ca["best_step"] == cb["best_step"]
    assert "validation_due" not in ca and "validation_due" not in cb
    ba, bb = (load_checkpoint(d / "best.pt") for d in (a, b))
    assert ba["step"] == bb["step"] and all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])
    assert rows(a) == rows(b)


def test_a_signal_during_validation_abandons_it_and_the_resumed_run_redoes_it(monkeypatch, tmp_path):
    """Validation waited for its last batch (minutes on configs/paper.yaml) before the run saved
    and exited; now the pass stops at the next batch, last.pt holds the step with its validation
    due, and --resume validates it first."""
    cfg = config(train__eval_batch_size=2, train__checkpoint_every=1000)  # 16 validation samples: 8 batches
    run, whole = tmp_path / "run", tmp_path / "whole"
    embedded = signal_in_validation(monkeypatch, signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        fit(run_config(cfg), run, progress=False)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 3
    assert embedded == [2]  # the batch under way, then none
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == 3 and saved["validation_due"]["step"] == 3 and saved["best"] is None
    assert not (run / "best.pt").exists()
    assert [r["step"] for r in rows(run)] == ["1", "2"]  # step 3's row waits for its validation
    monkeypatch.undo()
    assert fit(run_config(cfg), run, resume=True, progress=False).last_step == 6
    fit(run_config(cfg), whole, progress=False)
    assert_same_run(whole, run)


def test_a_signal_on_the_last_step_abandons_the_final_validation_which_resume_does(monkeypatch, tmp_path):
    cfg = config(train__eval_batch_size=2)
    run, whole = tmp_path / "run", tmp_path / "whole"
    signal_at_step(monkeypatch, 5, signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        fit(run_config(cfg), run, progress=False)
    assert stopped.value.step == 6 and load_checkpoint(run / "last.pt")["validation_due"]["step"] == 6
    monkeypatch.undo()
    assert fit(run_config(cfg), run, resume=True, progress=False).last_step == 6
    fit(run_config(cfg), whole, progress=False)
    assert_same_run(whole, run)


# Run under torchrun: rank 1 signals itself as it reaches the first validation (which rank 0 runs),
# as a scheduler preempting one node would.
RANK_1_SIGNALLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
import model.train
from cli.main import main

validate = model.train._evaluate_and_select

def signalled(run, *args):
    if run.dist.rank == 1 and not getattr(signalled, "sent", False):
        signalled.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
    return validate(run, *args)

model.train._evaluate_and_select = signalled
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_signal_to_one_rank_during_validation_stops_every_rank_at_that_step(tmp_path):
    """Rank 1 waits while rank 0 validates: its signal reaches rank 0 between two validation
    batches, both stop at that step with no rank left in a collective, and the resumed
    two-process run ends bit for bit as an uninterrupted one."""
    cfg = config(train__steps=8, train__eval_every=4, train__eval_batch_size=2, train__checkpoint_every=1000)
    path, run, whole = tmp_path / "ddp.yaml", tmp_path / "run", tmp_path / "whole"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    script = tmp_path / "signalled.py"
    script.write_text(RANK_1_SIGNALLED.format(root=str(ROOT)), encoding="utf-8")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    train = ["train", "--config", str(path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    stopped = torchrun(str(script), *train, "--out", str(run))
    assert stopped.returncode != 0 and stopped.stderr.count("stopped by SIGTERM at step 4") == 1, stopped.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["validation_due"]["step"] == 4
    assert [r["step"] for r in rows(run)] == ["1", "2", "3"]
    for out, more in ((run, ["--resume"]), (whole, [])):
        done = torchrun("-m", "cli.main", *train, "--out", str(out), *more)
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(whole, run)


def stereo(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Two different channels of noise and tones, changing along the clip (so a crop in the wrong
    place differs)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t) + 0.05 * rng.standard_normal(len(t))
    right = 0.2 * np.sin(2 * np.pi * 330 * t) * np.cos(t) + 0.05 * rng.standard_normal(len(t))
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [
        ("WAV", "PCM_16", 44100),
        ("FLAC", "PCM_24", 48000),
        ("WAV", "FLOAT", 22050),
        ("OGG", "VORBIS", 44100),
        ("MP3", "MPEG_LAYER_III", 32000),
    ],
)
@pytest.mark.parametrize(
    "front_end",
    [AudioFeatureSpec(n_mels=32, duration_s=1.0), AisfxMelSpec(duration_s=1.0), ClapFusionSpec(duration_s=1.0)],
)
def test_a_long_recording_read_for_a_front_end_gives_the_features_of_the_whole_one(
    tmp_path, fmt, subtype, rate, front_end
):
    """Seeked (PCM, FLAC) or decoded block by block (Vorbis, MP3: a seek may decode other samples),
    the samples read are the ones the whole recording resampled gives, to the bit: a centre crop,
    or for CLAP's fusion frames all along the recording."""
    path = tmp_path / f"long.{fmt.lower()}"
    soundfile.write(path, stereo(7.3, rate), rate, format=fmt, subtype=subtype)
    whole, whole_rate = decode_audio(path)  # as the server decodes an upload: every frame, at its own rate
    assert whole_rate == rate and len(whole) == soundfile.info(path).frames
    with decoding_for(front_end):
        crop, crop_rate = decode_audio(path)
    resampled = resample(whole, rate, crop_rate)
    kept = front_end.n_samples if isinstance(front_end, CENTRE_CROPPING) else len(resampled)
    assert crop_rate == front_end.sample_rate and len(crop) == kept
    if isinstance(crop, SparseWave):  # CLAP's: as an array, the recording's samples where read
        dense = np.asarray(crop)
        for a, b in crop.spans:
            np.testing.assert_array_equal(dense[a:b], resampled[a:b])
    np.testing.assert_array_equal(
        waveform_features(front_end, crop, crop_rate), front_end.features(resample(whole, rate, front_end.sample_rate))
    )


def csv_folder(root: Path, recordings: list[np.ndarray], rate: int) -> None:
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    rows = []
    for i, wave in enumerate(recordings):
        soundfile.write(root / "audio" / f"{i}.wav", wave, rate, subtype="PCM_16")
        (root / "images" / f"{i}.png").write_bytes(image_bytes(32, i))
        rows.append({"lat": 10, "lon": 20, "audio": f"audio/{i}.wav", "image": f"images/{i}.png", "gsd": 10.0})
    write_rows(root, rows)


def train_examples(root: Path, front_end) -> Examples:
    split = {"cell_deg": 90.0, "val_fraction": 0.0, "test_fraction": 0.0}
    preparation = prep(front_end)
    return Examples(reader("csv")({"root": str(root), "split": split}, 32).train, preparation)


def first_audio_and_peak(examples) -> tuple:
    """The first example's audio features and the peak of Python memory (bytes) reading them took."""
    tracemalloc.start()
    try:
        features = examples[0].audio
        return features, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_recording_in_a_training_folder_is_not_decoded_whole(tmp_path):
    """A 60 s stereo file for a 0.5 s crop: decoding it whole took 21 MB of float32 frames (a
    2-hour file 2.5 GB) before the crop; now the reader holds the crop's frames."""
    front_end = AudioFeatureSpec(n_mels=32, duration_s=0.5)
    csv_folder(tmp_path / "mine", [stereo(60.0, 44100)], 44100)
    features, peak = first_audio_and_peak(train_examples(tmp_path / "mine", front_end))
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB"
    whole, rate = decode_audio(tmp_path / "mine" / "audio" / "0.wav")
    np.testing.assert_array_equal(features, waveform_features(front_end, whole, rate))


def test_a_recording_whose_channels_cancel_out_is_skipped_naming_why(tmp_path):
    """Channels in opposite phase mix to silence, which training took for the sound of the place."""
    left = stereo(2.0, 16000)[:, 0]
    csv_folder(tmp_path / "mine", [np.stack([left, -left], axis=1), stereo(2.0, 16000, seed=1)], 16000)
    prepared = train_examples(tmp_path / "mine", AudioFeatureSpec(n_mels=32, duration_s=0.5))[0]
    assert prepared.index == 1 and len(prepared.skipped) == 1
    assert prepared.skipped[0][1].endswith("0.wav") and "channels cancel out" in prepared.skipped[0][2]
    # an upload to the server is mixed as it comes
    wave, _ = decode_audio(tmp_path / "mine" / "audio" / "0.wav")
    assert np.abs(wave).max() < 1e-4  # silence, but for 16-bit rounding


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_soundscape_train_processes_ends_it_as_one_process_would(tmp_path, stop):
    """torchrun answers the signal with a SignalException traceback of its own and exit code 1,
    after its ranks stopped cleanly; `soundscape train --processes 2` launches them itself and
    ends with rank 0's sentence, the resume command that relaunches both, and 143 or 130."""
    path, run = tmp_path / "ddp.yaml", tmp_path / "run"
    path.write_text(
        yaml.safe_dump(config(train__steps=200, train__eval_every=100, train__checkpoint_every=1000)), encoding="utf-8"
    )
    cmd = [sys.executable, "-m", "cli.main", "train", "--processes", "2", "--config", str(path), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*cmd, "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_rows(run, 3, process)
        process.send_signal(stop)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    reached = load_checkpoint(run / "last.pt")["step"]
    assert process.returncode == 128 + stop, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    assert err.rstrip().endswith(
        f"stopped by {stop.name} at step {reached}, saved in {run / 'last.pt'}; continue exactly with "
        f"`soundscape train --processes 2 --config {path} --out {run} --resume`"
    ), err[-3000:]


def test_the_ranks_of_soundscape_train_processes_get_every_option_given_to_it():
    """Each rank runs `train` with the launcher's options but --processes: one left out (a new
    option not passed on) would make the ranks run another training than the one asked for."""
    parser = build_parser()
    given = ["--verbose", "train", "--config", "c.yaml", "--out", "o", "--init-from", "w", "--stop-after", "5"]
    launched = parser.parse_args([*given, "--resume", "--no-progress", "--processes", "4"])
    assert None not in vars(launched).values() and False not in vars(launched).values()  # every option given
    assert vars(parser.parse_args(_rank_command(launched))) == {**vars(launched), "processes": 1}


class FramesRead:
    """Counts the frames soundfile decodes (SoundFile.read, which blocks() reads through too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.frames = 0
        read = soundfile.SoundFile.read

        def counted(f, *args, **kwargs):
            out = read(f, *args, **kwargs)
            self.frames += len(out)
            return out

        monkeypatch.setattr(soundfile.SoundFile, "read", counted)


def decode_peak(path: Path, front_end=None) -> tuple[tuple[np.ndarray, int], int]:
    """decode_audio(path), inside decoding_for(front_end) when given, and the bytes it allocated at its peak."""
    tracemalloc.start()
    try:
        if front_end is None:
            decoded = decode_audio(path)
        else:
            with decoding_for(front_end):
                decoded = decode_audio(path)
        return decoded, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("OGG", "VORBIS")])
def test_a_long_recording_read_for_clap_gives_the_features_of_the_whole_one_from_its_frames(
    tmp_path, monkeypatch, fmt, subtype
):
    """CLAP's fusion reads the whole mel shrunk (a pair of frames in every 60 of a 60 s recording
    for a 1 s window) and three chunks: the recording was decoded whole for them, stereo, mixed
    and resampled. Now a WAV is read for those frames alone (an Ogg, which cannot seek exactly,
    is decoded block by block) and the features are the whole recording's, to the bit."""
    front_end = ClapFusionSpec(duration_s=1.0)
    path = tmp_path / f"long.{fmt.lower()}"
    with soundfile.SoundFile(path, "w", 44100, 2, format=fmt, subtype=subtype) as f:
        for block in np.array_split(stereo(60.0, 44100), 60):  # libsndfile's Vorbis crashes on a long write
            f.write(block)
    (whole, rate), whole_peak = decode_peak(path)  # as the server decodes an upload
    counted = FramesRead(monkeypatch)
    (kept, kept_rate), kept_peak = decode_peak(path, front_end)
    np.testing.assert_array_equal(
        waveform_features(front_end, kept, kept_rate), waveform_features(front_end, whole, rate)
    )
    if fmt == "WAV":
        assert counted.frames < len(whole) / 4, f"{counted.frames} of {len(whole)} frames"
    assert kept_peak < whole_peak / 2, f"{kept_peak / 1e6:.1f} MB against {whole_peak / 1e6:.1f} MB"


def silent_wav(path: Path, seconds: int, rate: int = 44100) -> None:
    """A stereo 16-bit WAV of `seconds` of silence whose samples are a hole in a sparse file: a
    2-hour recording without writing its 1.2 GB."""
    size = seconds * rate * 4
    fmt = struct.pack("<IHHIIHH", 16, 1, 2, rate, rate * 4, 4, 16)  # PCM, 2 channels, 16 bits
    with path.open("wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", size))
        f.truncate(44 + size)


def test_a_two_hour_recording_read_for_clap_costs_the_memory_of_the_samples_it_reads(tmp_path):
    """Read for CLAP's fusion, a 2-hour stereo 44.1 kHz recording came back as an array of its
    length at 48 kHz holding the samples read, zero elsewhere, which the csv reader's NaN check
    then went over whole: 1.73 GB at the peak. Now a SparseWave holds those samples alone
    (16 MB), the check reads only them, and the peak is 59 MB."""
    front_end = ClapFusionSpec()
    csv_folder(tmp_path / "mine", [stereo(1.0, 44100)], 44100)
    silent_wav(tmp_path / "mine" / "audio" / "0.wav", 2 * 3600)
    features, peak = first_audio_and_peak(train_examples(tmp_path / "mine", front_end))
    assert peak < 80_000_000, f"{peak / 1e6:.1f} MB"
    assert features is not None and np.all(features == -100)  # silence: the mel's floor, 1e-10
    with decoding_for(front_end):
        wave, rate = decode_audio(tmp_path / "mine" / "audio" / "0.wav")
    assert isinstance(wave, SparseWave) and len(wave) == 2 * 3600 * rate and wave.nbytes < 20_000_000
    with pytest.raises(IndexError, match="not read"):
        wave[np.array([wave.spans[0][1]])]
    with pytest.raises(ValueError, match="clap-fusion"):  # another front end would hear silence between
        waveform_features(AudioFeatureSpec(), wave, rate)
