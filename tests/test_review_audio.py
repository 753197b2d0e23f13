"""An adversarial review of recordings read after a seek (dab9bd5): mono files, which its tests
(stereo alone) did not cover, and files libsndfile cannot seek in."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from runtime.audio import (
    AudioFeatureSpec,
    ClapFusionSpec,
    SparseWave,
    decode_audio,
    decoding_for,
    fit_length,
    resample,
    waveform_features,
)
from tests.server_support import make_client
from tests.test_training_leftovers import stereo
from tests.test_training_leftovers2 import frames_decoded, write_blockwise

FRONT_ENDS = [AudioFeatureSpec(n_mels=32, duration_s=1.0), ClapFusionSpec(duration_s=1.0)]


def read_and_whole(path, front_end) -> tuple[np.ndarray | SparseWave, np.ndarray, int]:
    """(what training reads for `front_end`, the whole decode resampled to its rate, that rate)."""
    whole, whole_rate = decode_audio(path)
    with decoding_for(front_end):
        read, read_rate = decode_audio(path)
    assert read_rate == front_end.sample_rate
    return read, resample(whole, whole_rate, front_end.sample_rate), read_rate


@pytest.mark.parametrize(("fmt", "subtype", "rate"), [("OGG", "VORBIS", 44100), ("OGG", "OPUS", 48000)])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_mono_ogg_read_after_seeks_gives_the_features_of_the_whole_one(tmp_path, fmt, subtype, rate, front_end):
    path = tmp_path / f"mono.{fmt.lower()}"
    write_blockwise(path, stereo(30.0, rate)[:, :1], rate, fmt, subtype)
    read, resampled, read_rate = read_and_whole(path, front_end)
    np.testing.assert_array_equal(waveform_features(front_end, read, read_rate), front_end.features(resampled))


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_mono_mpeg1_mp3_is_read_after_a_seek_within_the_last_bit(monkeypatch, tmp_path, front_end):
    """docs/training.md said an MP3 of 32 kHz and up gives the whole decode's features to the bit:
    a stereo one does, but mpg123's mono samples differ in the last bit with its buffers (a read in
    blocks from the start as well: 9e-8 at most), so a mono MPEG-1 MP3 read after a seek is the
    whole decode within 1e-6, as an MPEG-2 one is, and still read after a seek (the centre crop of
    30 s decodes under a tenth of it)."""
    rate = 44100
    path = tmp_path / "mono.mp3"
    write_blockwise(path, stereo(30.0, rate)[:, :1], rate, "MP3", "MPEG_LAYER_III")
    read, resampled, _ = read_and_whole(path, front_end)
    sparse = isinstance(read, SparseWave)
    expected = resampled if sparse else fit_length(resampled, front_end.n_samples)
    for a, b in read.spans if sparse else [(0, len(read))]:
        np.testing.assert_allclose(np.asarray(read)[a:b], expected[a:b], rtol=0, atol=1e-6)
    if not sparse:
        counts = frames_decoded(monkeypatch)
        with decoding_for(front_end):
            decode_audio(path)
        assert sum(counts) < 0.1 * 30 * rate, f"{sum(counts)} frames decoded of {30 * rate}"


UNSEEKABLE = [("GSM610", 8000), ("G721_32", 8000)]  # telephony codecs in WAV: libsndfile cannot seek in them


def telephony_wav(path, subtype: str, rate: int, seconds: float) -> None:
    soundfile.write(path, stereo(seconds, rate)[:, :1], rate, format="WAV", subtype=subtype)


@pytest.mark.parametrize(("subtype", "rate"), UNSEEKABLE)
def test_a_wav_libsndfile_cannot_seek_in_decodes_whole_and_for_each_front_end(tmp_path, subtype, rate):
    """A GSM 6.10 or G.721 WAV (a telephone or an old voice recorder's) stopped decode_audio with
    soundfile's ValueError 'frames must be specified for non-seekable files', and a training read
    with AudioDecodeError 'Seek attempted on unseekable file type'. It is read whole, by the frame
    count its header declares, and a front end's part of it from that."""
    path = tmp_path / f"{subtype}.wav"
    telephony_wav(path, subtype, rate, 12.0)
    wave, wave_rate = decode_audio(path)
    with soundfile.SoundFile(path) as f:
        expected = f.read(f.frames, dtype="float32", always_2d=True)[:, 0]
    assert wave_rate == rate and len(wave) == 12 * rate
    np.testing.assert_array_equal(wave, expected)
    for front_end in FRONT_ENDS:
        read, resampled, read_rate = read_and_whole(path, front_end)
        np.testing.assert_array_equal(waveform_features(front_end, read, read_rate), front_end.features(resampled))


@pytest.mark.parametrize(("subtype", "rate"), UNSEEKABLE)
def test_an_upload_libsndfile_cannot_seek_in_is_a_query_not_a_500(bundle_path, store_path, tmp_path, subtype, rate):
    """POST /queries of such a WAV answered 500 ('the server failed on this request')."""
    path = tmp_path / f"{subtype}.wav"
    telephony_wav(path, subtype, rate, 3.0)
    client = make_client(bundle_path, store_path)
    answer = client.post("/queries", content=path.read_bytes(), headers={"Content-Type": "audio/wav"})
    assert answer.status_code == 201, answer.text
    declared = soundfile.info(path).frames / rate  # GSM 6.10 pads to its 320-sample blocks: 3.04 s
    assert answer.json()["kind"] == "audio" and answer.json()["duration_s"] == pytest.approx(declared, abs=1e-3)
