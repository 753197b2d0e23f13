"""The torch-free audio front ends against their reference implementations (librosa for aisfx,
transformers' ClapFeatureExtractor for CLAP), and the aisfx tower against aisfx's own network."""

import numpy as np
import pytest
import torch

from runtime.audio import (
    AisfxMelSpec,
    AudioFeatureSpec,
    ClapFusionSpec,
    audio_front_end,
    hann_window,
    htk_mel_filters,
    log_mel,
    mel_filterbank,
    waveform_features,
)


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(len(t))).astype(np.float32)


def test_aisfx_mel_matches_librosa_as_aisfx_calls_it():
    librosa = pytest.importorskip("librosa", reason="librosa is in the test extra")
    spec = AisfxMelSpec(duration_s=3.0)

    def aisfx_mel(wave: np.ndarray) -> np.ndarray:
        """The mel power spectrogram as aisfx asks librosa for it."""
        options = {"n_mels": 96, "norm": 1.0, "fmin": 0.0, "fmax": 22050.0, "htk": True, "power": 2.0}
        return librosa.feature.melspectrogram(
            y=wave.astype(np.float64), sr=spec.sample_rate, hop_length=1024, win_length=2048, **options
        )

    wave = noise(3.0, spec.sample_rate)
    ref = aisfx_mel(wave)
    mine = spec.mel_power(wave.astype(np.float64))
    assert mine.shape == ref.shape == (96, 1 + len(wave) // 1024)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-9 * ref.max())
    # Features: peak-normalised clip, log10(1 + 1e4 S) / aisfx's training maximum.
    ref_features = np.log10(1 + 1e4 * aisfx_mel(wave / np.abs(wave).max())) / spec.scale_max
    np.testing.assert_allclose(spec.features(wave), ref_features, rtol=1e-4, atol=1e-5)


def test_clap_fusion_matches_transformers_feature_extractor():
    from transformers import ClapFeatureExtractor

    spec = ClapFusionSpec()
    extractor = ClapFeatureExtractor()
    short = noise(4.0, spec.sample_rate)  # repeat-padded, 4 copies of one mel
    ref = extractor(short, sampling_rate=spec.sample_rate, return_tensors="np")["input_features"][0]
    mine = spec.features(short)
    assert mine.shape == ref.shape == (4, 1001, 64)
    np.testing.assert_allclose(mine, ref, atol=1e-3)
    long = noise(25.0, spec.sample_rate, seed=1)  # shrunk whole mel + front/middle/back chunks
    mine = spec.features(long)
    full = spec.db_mel(long.astype(np.float64))
    shrunk = torch.nn.functional.interpolate(
        torch.tensor(full[None, None]), size=[1001, 64], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(mine[0], shrunk, atol=1e-4)
    starts = spec.chunk_starts(len(full))
    assert starts[0] < starts[1] < starts[2] <= len(full) - 1001
    for channel, start in zip(mine[1:], starts, strict=True):
        np.testing.assert_allclose(channel, full[start : start + 1001], atol=1e-4)
    ref = extractor(long, sampling_rate=spec.sample_rate, return_tensors="np")["input_features"][0]
    np.testing.assert_allclose(mine[0], ref[0], atol=0.02)  # transformers computes in float32


def test_front_ends_round_trip_through_the_manifest_and_resample():
    for spec in (AudioFeatureSpec(n_mels=32, duration_s=1.0), AisfxMelSpec(duration_s=2.5), ClapFusionSpec()):
        again = audio_front_end(spec.to_json())
        assert again == spec and again.kind == spec.kind
    spec = AudioFeatureSpec(n_mels=32, duration_s=1.0)
    at_44k = waveform_features(spec, noise(1.0, 44100), 44100)
    at_16k = spec.features(noise(1.0, 16000))
    assert at_44k.shape == at_16k.shape == (32, spec.n_frames)
    with pytest.raises(ValueError, match="unknown audio feature kind"):
        audio_front_end({"kind": "mfcc"})


def test_aisfx_tower_equals_the_aisfx_network_on_its_blocks(aisfx_installed):
    from aisfx.inference import get_path_modelWeights, load_bestModel
    from aisfx.preprocessing import blocking

    from model.config import AisfxAudioConfig
    from model.nn.audio_towers import AisfxTower

    tower = AisfxTower(AisfxAudioConfig(duration_s=5.0))
    assert tower.frozen and not any(p.requires_grad for p in tower.parameters())
    # aisfx's own load_weights predates torch's weights_only default; load its file the same way.
    weights, datasets = torch.load(get_path_modelWeights(), map_location="cpu", weights_only=False)
    reference = load_bestModel(weights, datasets, "cpu")
    features = AisfxMelSpec(duration_s=5.0).features(noise(5.0, 44100))  # (96, frames)
    blocks = blocking(features.T, block_size=100, hop_size=50, drop_partial_block=True)
    with torch.no_grad():
        want = reference.get_embedding(torch.tensor(blocks, dtype=torch.float32)).mean(0)
        got = tower(torch.from_numpy(features)[None])[0]
    assert got.shape == (512,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_filters_are_designed_once_per_front_end_and_cannot_be_changed_by_a_caller():
    """Each clip's features reuse its front end's filters and window (their design was a quarter
    of a short clip's log-mel): one caller writing into them would change every later clip."""
    spec = AudioFeatureSpec(n_mels=32, duration_s=0.5)
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    first = log_mel(wave, spec)
    for kept in (mel_filterbank(spec), htk_mel_filters(16000, 512, 32, 50.0, 8000.0, "sum"), hann_window(512)):
        with pytest.raises(ValueError, match="read-only"):
            kept[0] = 1.0
    assert mel_filterbank(spec) is mel_filterbank(AudioFeatureSpec(n_mels=32, duration_s=0.5))
    assert hann_window(512) is hann_window(512)
    np.testing.assert_array_equal(log_mel(wave, spec), first)
