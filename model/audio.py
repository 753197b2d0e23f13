"""A waveform into the audio graph's input, without torch: a log-mel spectrogram whose
parameters the bundle manifest records, so training and serving compute the same features."""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly


class AudioDecodeError(ValueError):
    """The bytes or file are not audio that libsndfile reads (wav, flac, ogg, mp3, ...)."""


@dataclass(frozen=True)
class AudioFeatureSpec:
    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    duration_s: float = 10.0  # clips are cropped or repeat-padded to this length

    @property
    def n_samples(self) -> int:
        return int(round(self.duration_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop_length

    def to_json(self) -> dict:
        return {"kind": "log-mel", **asdict(self)}

    @classmethod
    def from_json(cls, spec: dict) -> "AudioFeatureSpec":
        return cls(**{k: v for k, v in spec.items() if k != "kind"})


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular filters on the HTK mel scale, each of unit area."""
    freqs = np.linspace(0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax), spec.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    return (bank * (2.0 / (upper - lower))).astype(np.float32)


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Centre-crop a long clip, repeat-pad a short one (a silent clip stays silent)."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) == 0:
        return np.zeros(n_samples, dtype=np.float32)
    if len(wave) >= n_samples:
        start = (len(wave) - n_samples) // 2
        return wave[start : start + n_samples]
    reps = int(np.ceil(n_samples / len(wave)))
    return np.tile(wave, reps)[:n_samples]


def log_mel(wave: np.ndarray, spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_frames) float32 log-mel of a mono waveform at spec.sample_rate."""
    wave = fit_length(wave, spec.n_samples)
    pad = spec.n_fft // 2
    padded = np.pad(wave, pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[:: spec.hop_length]
    window = np.hanning(spec.n_fft + 1)[:-1].astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = mel_filterbank(spec) @ power.T.astype(np.float32)
    return np.log(mel + 1e-6).astype(np.float32)


def decode_audio(source: bytes | str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate) of an audio file or its bytes."""
    try:
        data, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                    dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}") from None
    return data.mean(axis=1), int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from `rate` to `target` Hz."""
    if rate == target:
        return np.asarray(wave, dtype=np.float32)
    g = gcd(int(rate), int(target))
    return resample_poly(np.asarray(wave, dtype=np.float32), target // g, rate // g).astype(np.float32)
