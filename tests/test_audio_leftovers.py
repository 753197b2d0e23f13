"""What runtime.audio still read wrong: a chained Ogg file (two streams joined end to end, as
`cat a.ogg b.ogg` makes it) was read as its first stream alone, without a word; and libsndfile
gives other samples than a whole decode's for a read of an Opus file that starts in its last few
hundred frames."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile

from model.data import BadSample
from model.readers.csv_folder import CsvFolderConfig, CsvFolderSource, Row
from runtime.audio import (
    AudioDecodeError,
    AudioFeatureSpec,
    ClapFusionSpec,
    SparseWave,
    decode_audio,
    decoding_for,
    resample,
    waveform_features,
)
from tests.server_support import make_client


def signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A tone sweeping up with noise (frames, channels): a read from the wrong place differs."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal((len(t), channels))
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t)[:, None] + 0.05 * noise).astype(np.float32)


def ogg(wave: np.ndarray, rate: int, subtype: str) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, wave, rate, format="OGG", subtype=subtype)
    return out.getvalue()


# 1. chained Ogg --------------------------------------------------------------------------------

OGG_CODECS = [("VORBIS", 44100), ("OPUS", 48000)]


def chained(subtype: str, rate: int, parts: int = 2) -> bytes:
    """`cat` of `parts` Ogg files, each its own logical stream (its own serial number)."""
    return b"".join(ogg(signal(1.0 + i, rate, seed=i), rate, subtype) for i in range(parts))


@pytest.mark.parametrize(("subtype", "rate"), OGG_CODECS)
@pytest.mark.parametrize("parts", [2, 3])
def test_a_chained_ogg_file_is_refused_in_a_sentence_wherever_it_is_read(tmp_path, subtype, rate, parts):
    """libsndfile declared the first stream's frames and decoded it alone: the rest of the
    recording was dropped, in training and on upload, without a word."""
    data = chained(subtype, rate, parts)
    path = tmp_path / "joined.ogg"
    path.write_bytes(data)
    expected = f"holds {parts} chained Ogg streams"
    for source in (data, path):
        with pytest.raises(AudioDecodeError, match=expected) as caught:
            decode_audio(source)
        assert "not supported" in str(caught.value) and "re-encode it as one stream" in str(caught.value)
        with decoding_for(ClapFusionSpec(duration_s=1.0)), pytest.raises(AudioDecodeError, match=expected):
            decode_audio(source)


def test_one_ogg_stream_is_read_as_before(tmp_path):
    wave = signal(2.0, 48000)
    wave_read, rate = decode_audio(ogg(wave, 48000, "OPUS"))
    assert rate == 48000 and len(wave_read) == len(wave)


def test_a_chained_ogg_file_is_a_skipped_sample_saying_why(tmp_path):
    (tmp_path / "joined.ogg").write_bytes(chained("VORBIS", 44100))
    row = Row(2, "k", 45.5, 5.5, None, None, None, "joined.ogg", None, None, None, None, 7)
    source = CsvFolderSource([row], CsvFolderConfig(root=str(tmp_path), imagery="unused.tif"), 16)
    with pytest.raises(BadSample, match="holds 2 chained Ogg streams"):
        source.get(0, without=frozenset({"image"}))


def test_a_chained_ogg_upload_is_refused_saying_why(bundle_path, store_path):
    client = make_client(bundle_path, store_path)
    answer = client.post("/queries", content=chained("VORBIS", 44100), headers={"Content-Type": "audio/ogg"})
    assert 400 <= answer.status_code < 500 and "holds 2 chained Ogg streams" in answer.text, answer.text


# 2. the end of an Opus file ----------------------------------------------------------------------


@dataclass(frozen=True)
class SpanReader:
    """A front end that reads the frames [a, b) of a recording at its own rate (decode_audio inside
    decoding_for returns them as a SparseWave), to read any part of a file as training would."""

    span: tuple[int, int]
    sample_rate: int
    kind = "span"

    def reads(self, n: int) -> list[tuple[int, int]]:
        return [self.span]

    def features(self, wave: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_json(self) -> dict:
        return {}


def read_span(data: bytes, rate: int, a: int, b: int) -> np.ndarray:
    with decoding_for(SpanReader((a, b), rate)):
        wave, _ = decode_audio(data)
    assert isinstance(wave, SparseWave) and wave.spans == ((a, b),)
    return wave.held


@pytest.mark.parametrize(("rate", "seconds"), [(48000, 2.37), (48000, 3.0), (16000, 2.37), (24000, 1.0)])
@pytest.mark.parametrize("channels", [1, 2])
def test_a_read_anywhere_in_an_opus_file_is_the_whole_decodes_samples(rate, seconds, channels):
    """A read that began in the last 21-624 frames (by rate and length) gave other samples (up to
    0.8 off) than the whole decode, even after a pre-roll."""
    data = ogg(signal(seconds, rate, channels), rate, "OPUS")
    whole, _ = decode_audio(data)
    n = len(whole)
    starts = [0, n // 3, n - 5000, n - 700, n - 500, n - 300, n - 144, n - 100, n - 20, n - 1]
    for a in starts:
        for b in (n, min(n, a + 64)):
            np.testing.assert_array_equal(read_span(data, rate, a, b), whole[a:b], err_msg=f"frames [{a}, {b}) of {n}")


# 3. a compressed file that holds fewer frames than it declares -----------------------------------


def mp3(wave: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, wave, rate, format="MP3", subtype="MPEG_LAYER_III")
    return out.getvalue()


@pytest.mark.parametrize("rate", [44100, 22050])  # MPEG-1 (tried after a seek first) and MPEG-2
@pytest.mark.parametrize("front_end", [AudioFeatureSpec(n_mels=32, duration_s=1.0), ClapFusionSpec(duration_s=1.0)])
@pytest.mark.parametrize("seed", range(3))
def test_a_truncated_mp3_read_for_a_front_end_is_its_whole_decode(rate, front_end, seed):
    """An MP3 cut short (a copy or download stopped) declares the frames of its info frame, more than
    it holds: read for a front end it gave samples of stale memory (up to 5e37, and NaN: the row
    was skipped as 'NaN or infinite', or trained on noise), where its whole decode is clean.
    soundfile's blocks() pads a block the decoder leaves short with what the buffer held before."""
    data = mp3(signal(3.0, rate, channels=2, seed=seed), rate)
    data = data[: len(data) // 2]
    whole, whole_rate = decode_audio(data)
    with decoding_for(front_end):
        read, read_rate = decode_audio(data)
    assert np.all(np.isfinite(np.asarray(read)))
    expected = front_end.features(resample(whole, whole_rate, front_end.sample_rate))
    np.testing.assert_array_equal(waveform_features(front_end, read, read_rate), expected)


# 4. a sample rate no recording of sound has ------------------------------------------------------


def wav(seconds_or_frames: int, rate: int) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, signal(seconds_or_frames / rate, rate), rate, format="WAV")
    return out.getvalue()


@pytest.mark.parametrize("rate", [1, 7, 999])
def test_a_sample_rate_below_any_recording_of_sound_is_refused_in_a_sentence(rate):
    """A 20 KB WAV whose header says 1 Hz (10,000 samples: 2.8 hours) read for CLAP took 71 s and
    4.7 GB (each of its ~2,000 windows resampled 48,000-fold); a larger one ran training out of
    memory. No recording of sound has such a rate: a damaged header, or other data in a WAV."""
    data = wav(10_000, rate)
    for front_end in (None, ClapFusionSpec()):
        with pytest.raises(AudioDecodeError, match=f"its sample rate is {rate} Hz, below"):
            if front_end is None:
                decode_audio(data)
            else:
                with decoding_for(front_end):
                    decode_audio(data)


def test_the_lowest_rate_of_sound_is_read():
    wave, rate = decode_audio(wav(2000, 1000))
    assert rate == 1000 and len(wave) == 2000


# 5. float samples far beyond any audio's ---------------------------------------------------------


def float_wav(path, amplitude: float) -> None:
    wave = signal(1.0, 16000) * np.float32(amplitude / 0.5)
    soundfile.write(path, wave, 16000, format="WAV", subtype="FLOAT")


def csv_source(root) -> CsvFolderSource:
    row = Row(2, "k", 45.5, 5.5, None, None, None, "loud.wav", None, None, None, None, 7)
    return CsvFolderSource([row], CsvFolderConfig(root=str(root), imagery="unused.tif"), 16)


@pytest.mark.parametrize("amplitude", [1e13, 1e20, 1e30])
def test_a_float_file_whose_samples_are_no_audio_is_a_skipped_sample_saying_why(tmp_path, amplitude):
    """A float WAV holding other data (samples up to 1e20, all finite) made the log-mel front end's
    features infinite, so training stopped as 'diverged' (a NaN loss) without naming the file."""
    float_wav(tmp_path / "loud.wav", amplitude)
    with pytest.raises(BadSample, match=r"its samples reach .*: a float file holding other data"):
        csv_source(tmp_path).get(0, without=frozenset({"image"}))


@pytest.mark.parametrize("amplitude", [1.0, 32768.0, 2.0**31])  # as written, and scaled as 16- or 32-bit integers
def test_a_loud_float_file_is_read(tmp_path, amplitude):
    float_wav(tmp_path / "loud.wav", amplitude)
    sample = csv_source(tmp_path).get(0, without=frozenset({"image"}))
    assert len(sample.audio) == 16000


def test_an_upload_whose_samples_are_no_audio_is_refused_saying_why(bundle_path, store_path):
    """POST /queries of such a WAV answered 500 (its uncertainty was NaN: 'Out of range float values
    are not JSON compliant')."""
    out = io.BytesIO()
    soundfile.write(out, signal(1.0, 16000) * np.float32(2e20), 16000, format="WAV", subtype="FLOAT")
    answer = make_client(bundle_path, store_path).post(
        "/queries", content=out.getvalue(), headers={"Content-Type": "audio/wav"}
    )
    assert 400 <= answer.status_code < 500 and "its samples reach" in answer.text, answer.text
