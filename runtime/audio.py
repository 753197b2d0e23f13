"""A waveform into the audio graph's input, without torch. The bundle manifest's `audio` section
names the front end (`kind`) and its parameters, so training and serving compute the same
features; `audio_front_end` rebuilds it from that section.

Front ends (all take a mono waveform at their `sample_rate`, cropped or padded to `duration_s`):
- `log-mel` (AudioFeatureSpec): natural-log mel power, for the small CNN trained from scratch;
- `aisfx-mel` (AisfxMelSpec): the aisfx CNN's input, librosa-style HTK mel at 44.1 kHz,
  log10(1 + 10^4 S) scaled by aisfx's training maximum;
- `clap-fusion` (ClapFusionSpec): CLAP's fused 4-channel dB mel at 48 kHz (transformers'
  ClapFeatureExtractor with truncation="fusion"), with deterministic crops instead of random ones.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import soundfile
from numpy.typing import ArrayLike
from scipy.signal import resample_poly

from runtime.errors import UserError


class AudioDecodeError(UserError, ValueError):
    """The bytes or file are not audio that libsndfile reads (wav, flac, ogg, mp3, ...)."""


class AudioFrontEnd(Protocol):
    """What the runtime needs from a front end: its rate and the features of a waveform."""

    @property
    def kind(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    def features(self, wave: np.ndarray) -> np.ndarray: ...

    def to_json(self) -> dict: ...


# --------------------------------------------------------------------------------------------
# Shared signal pieces


def _hz_to_mel_htk(hz: ArrayLike) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(mel: ArrayLike) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def htk_mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, norm: str | None
) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangles evenly spaced on the HTK mel scale.

    norm: "area" scales each triangle to unit area (Slaney style), "sum" to unit sum of weights
    (librosa's norm=1), None leaves peaks at 1 (transformers' CLAP filters)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz_htk(np.linspace(_hz_to_mel_htk(fmin), _hz_to_mel_htk(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0.0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    if norm == "area":
        bank = bank * (2.0 / (upper - lower))
    elif norm == "sum":
        bank = bank / np.maximum(bank.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    elif norm is not None:
        raise ValueError(f"unknown mel filter norm {norm!r}")
    return bank


def power_spectrogram(
    wave: np.ndarray, n_fft: int, hop_length: int, pad_mode: Literal["reflect", "constant"]
) -> np.ndarray:
    """(n_fft//2 + 1, frames) |STFT|^2 with a periodic Hann window, frames centred on
    t * hop_length (the signal is padded by n_fft//2 on both sides with `pad_mode`)."""
    wave = np.asarray(wave, dtype=np.float64)
    padded = np.pad(wave, n_fft // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = np.hanning(n_fft + 1)[:-1]
    return (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2).T


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Centre-crop a long clip, repeat-pad a short one: a 2 s clip fills a 10 s window with five
    copies of itself, and a 0.1 s click a hundred (a silent clip stays silent)."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) == 0:
        return np.zeros(n_samples, dtype=np.float32)
    if len(wave) >= n_samples:
        start = (len(wave) - n_samples) // 2
        return wave[start : start + n_samples]
    reps = int(np.ceil(n_samples / len(wave)))
    return np.tile(wave, reps)[:n_samples]


# --------------------------------------------------------------------------------------------
# log-mel: the small CNN's input


@dataclass(frozen=True)
class AudioFeatureSpec:
    """Natural-log mel power (kind `log-mel`), shape (n_mels, n_frames)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    duration_s: float = 10.0  # clips are cropped or repeat-padded to this length
    kind = "log-mel"

    @property
    def n_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop_length

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_json(cls, spec: dict) -> AudioFeatureSpec:
        return cls(**{k: v for k, v in spec.items() if k != "kind"})

    def features(self, wave: np.ndarray) -> np.ndarray:
        return log_mel(wave, self)


def mel_filterbank(spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) unit-area triangles on the HTK mel scale (the log-mel front end)."""
    return htk_mel_filters(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, "area").astype(np.float32)


def log_mel(wave: np.ndarray, spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_frames) float32 log-mel of a mono waveform at spec.sample_rate."""
    power = power_spectrogram(fit_length(wave, spec.n_samples), spec.n_fft, spec.hop_length, "reflect")
    mel = mel_filterbank(spec) @ power.astype(np.float32)
    return np.log(mel + 1e-6).astype(np.float32)


# --------------------------------------------------------------------------------------------
# aisfx-mel: the aisfx CNN's input


@dataclass(frozen=True)
class AisfxMelSpec:
    """aisfx's spectrogram (its librosa path): peak-normalised clip, |STFT|^2 (2048/1024, zero
    padded centre frames), 96 HTK mel bands 0..22050 Hz with unit-sum filters,
    log10(1 + 10^4 S) / 9.4578 (aisfx's "original" min-max scaling). Shape (n_mels, n_frames)."""

    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float = 22050.0
    duration_s: float = 10.0
    log_gain: float = 10000.0
    scale_max: float = 9.457798957824707
    kind = "aisfx-mel"

    @property
    def n_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def filters(self) -> np.ndarray:
        return htk_mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, "sum")

    def mel_power(self, wave: np.ndarray) -> np.ndarray:
        """Mel power of the whole waveform as given (no cropping or normalisation)."""
        return self.filters() @ power_spectrogram(wave, self.n_fft, self.hop_length, "constant")

    def features(self, wave: np.ndarray) -> np.ndarray:
        wave = fit_length(wave, self.n_samples).astype(np.float64)
        peak = np.abs(wave).max()
        wave = wave / peak if peak > 0 else wave
        return (np.log10(self.mel_power(wave) * self.log_gain + 1.0) / self.scale_max).astype(np.float32)


# --------------------------------------------------------------------------------------------
# clap-fusion: CLAP's fused mel


@dataclass(frozen=True)
class ClapFusionSpec:
    """CLAP's input (transformers ClapFeatureExtractor, truncation "fusion", padding
    "repeatpad"): dB mel power (1024/480, reflect padded, 64 HTK bands 0..14 kHz, peak-1
    filters). A clip up to `duration_s` is repeated, zero padded and its mel copied 4 times; a
    longer clip gives [its whole mel shrunk to one chunk, a front, a middle and a back chunk].
    CLAP picks the chunks at random; here each is the middle of its third, so the same
    recording always gets the same features. Shape (4, chunk_frames, n_mels)."""

    sample_rate: int = 48000
    n_fft: int = 1024
    hop_length: int = 480
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 14000.0
    duration_s: float = 10.0
    kind = "clap-fusion"

    @property
    def n_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    @property
    def chunk_frames(self) -> int:
        return self.n_samples // self.hop_length + 1

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def db_mel(self, wave: np.ndarray) -> np.ndarray:
        """(frames, n_mels) dB mel of the whole waveform."""
        filters = htk_mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, None)
        mel = np.maximum(1e-10, filters @ power_spectrogram(wave, self.n_fft, self.hop_length, "reflect"))
        return (10.0 * np.log10(mel)).T

    def chunk_starts(self, total_frames: int) -> list[int]:
        thirds = np.array_split(np.arange(total_frames - self.chunk_frames + 1), 3)
        return [int(t[len(t) // 2]) if len(t) else 0 for t in thirds]

    def features(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float64)
        if len(wave) > self.n_samples:
            mel = self.db_mel(wave)
            if len(mel) > self.chunk_frames:
                chunks = [mel[s : s + self.chunk_frames] for s in self.chunk_starts(len(mel))]
                return np.stack([_shrink_rows(mel, self.chunk_frames), *chunks]).astype(np.float32)
            return np.stack([mel] * 4).astype(np.float32)
        if 0 < len(wave) < self.n_samples:
            wave = np.tile(wave, self.n_samples // len(wave))
        wave = np.pad(wave, (0, self.n_samples - len(wave)))
        return np.stack([self.db_mel(wave)] * 4).astype(np.float32)


def _shrink_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Linear resampling of the rows of x to `rows` rows, half-pixel centres (bilinear with
    align_corners=False along one axis, as CLAP shrinks a long mel)."""
    scale = x.shape[0] / rows
    src = np.maximum((np.arange(rows) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), x.shape[0] - 1)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    frac = (src - lo)[:, None]
    return x[lo] * (1 - frac) + x[hi] * frac


# --------------------------------------------------------------------------------------------


FRONT_ENDS: dict[str, type] = {spec.kind: spec for spec in (AudioFeatureSpec, AisfxMelSpec, ClapFusionSpec)}


def audio_front_end(spec: dict) -> AudioFeatureSpec | AisfxMelSpec | ClapFusionSpec:
    """The front end a manifest's `audio` section describes (its `kind` selects the class)."""
    kind = spec.get("kind", AudioFeatureSpec.kind)
    if kind not in FRONT_ENDS:
        raise ValueError(f"unknown audio feature kind {kind!r}; known: {', '.join(FRONT_ENDS)}")
    return FRONT_ENDS[kind](**{k: v for k, v in spec.items() if k != "kind"})


def waveform_features(front_end: AudioFrontEnd, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Features of a mono waveform at any rate: resampled to the front end's rate first."""
    return front_end.features(resample(wave, sample_rate, front_end.sample_rate))


# Front ends whose features are those of fit_length(wave, n_samples): they keep a recording's
# centre alone. CLAP's fusion reads every frame (its first channel is the whole mel shrunk).
CENTRE_CROPPING = (AudioFeatureSpec, AisfxMelSpec)
_CROP: ContextVar[tuple[int, int] | None] = ContextVar("runtime.audio crop", default=None)


@contextmanager
def decoding_for(front_end: AudioFrontEnd) -> Iterator[None]:
    """Within the block, decode_audio of a recording longer than what `front_end` keeps returns
    only that, already at its rate, from the frames that make it: a 2-hour stereo WAV in a
    training folder was decoded whole (3.6 GB at the peak, 19 s) for a 10 s crop. The features
    are the same to the bit (tested). A front end that reads every frame changes nothing."""
    crop = (front_end.sample_rate, front_end.n_samples) if isinstance(front_end, CENTRE_CROPPING) else None
    token = _CROP.set(crop)
    try:
        yield
    finally:
        _CROP.reset(token)


def decode_audio(source: bytes | str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate) of an audio file or its bytes; inside `decoding_for`,
    only the part its front end keeps."""
    crop = _CROP.get()
    try:
        with soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as f:
            if crop is None:
                return _mono(f.read(dtype="float32", always_2d=True)), int(f.samplerate)
            return _centre(f, *crop), crop[0]
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}") from None


def _mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1)


CANCELLED = 0.01  # a mix 40 dB below its channels: one channel is (nearly) the other inverted
AUDIBLE = 1e-4  # channels quieter than this (-80 dBFS RMS) are silence, whatever their mix


def _trained_mono(frames: np.ndarray) -> np.ndarray:
    """The channels' mean, refused where they cancel out: a recording whose channels are in
    opposite phase (a wiring or export fault) mixes to near silence, which would be trained on
    as the sound of its place. Uploads to the server are mixed as they come (decode_audio)."""
    mono = _mono(frames)
    if frames.shape[1] > 1 and len(frames):
        channels = float(np.sqrt(np.mean(np.square(frames, dtype=np.float64))))
        mix = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
        if channels > AUDIBLE and mix < CANCELLED * channels:
            raise AudioDecodeError(
                f"its {frames.shape[1]} channels cancel out when mixed to mono (one is the other in opposite "
                f"phase): the mix is {20 * np.log10(channels / max(mix, 1e-12)):.0f} dB below them; keep one "
                "channel (sox IN OUT remix 1) or invert one (sox IN OUT remix 1 2i)"
            )
    return mono


# Samples that decode each from its own bytes: a seek reads exactly the samples a whole read
# would. Lossy codecs (MP3 here) may decode the frames after a seek otherwise, so they are read
# from the start, block by block.
EXACT_SEEK_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})
BLOCK_FRAMES = 1 << 16


def _centre(f: soundfile.SoundFile, target: int, n_samples: int) -> np.ndarray:
    """fit_length(resample(whole recording, target), n_samples), from the frames those samples are
    made of: the polyphase filter's reach on either side, from a frame where the resampled window
    falls on the whole recording's sample grid (a multiple of `down`), so every sample kept is the
    one the whole recording gives."""
    rate, n = int(f.samplerate), f.frames
    up, down = resample_ratio(rate, target) if rate != target else (1, 1)
    total = -(-n * up // down)  # resample_poly's output length
    if total <= n_samples:  # repeated (fit_length): the whole recording is needed
        return resample(_trained_mono(f.read(dtype="float32", always_2d=True)), rate, target)
    start = (total - n_samples) // 2
    reach = 0 if up == down else 10 * max(up, down) // up + 2  # resample_poly's half filter, in frames
    first = max(0, (start * down // up - reach) // down * down)
    last = min(n, -(-(start + n_samples) * down // up) + reach)
    frames = _frames(f, first, last)
    if frames is None:  # the file held other frames than it declared: read it whole, as before
        f.seek(0)
        return fit_length(resample(_trained_mono(f.read(dtype="float32", always_2d=True)), rate, target), n_samples)
    offset = start - first * up // down
    return resample(_trained_mono(frames), rate, target)[offset : offset + n_samples]


def _frames(f: soundfile.SoundFile, first: int, last: int) -> np.ndarray | None:
    """Frames [first, last) of `f`, read after a seek where that is exact, else decoded from the
    start block by block (memory: the window and a block); None when the decoder reached another
    end than the frame count the file declared (the centre would then be elsewhere)."""
    if f.subtype in EXACT_SEEK_SUBTYPES and f.seekable():
        f.seek(first)
        window = f.read(last - first, dtype="float32", always_2d=True)
        return window if len(window) == last - first else None
    kept, position = [], 0
    for block in f.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
        if position + len(block) > first and position < last:
            kept.append(block[max(0, first - position) : last - position])
        position += len(block)
    return np.concatenate(kept) if position == f.frames and kept else None


# The polyphase filter has ~20 max(up, down) taps: an exact ratio of two coprime rates (e.g.
# 44100 / 383987) would cost a filter of millions of taps (1.2 s and 90 MB for 1000 samples).
MAX_RESAMPLE_FACTOR = 4096


def resample_ratio(rate: int, target: int) -> tuple[int, int]:
    """(up, down) of the resampling: exact for the usual rates, else the nearest ratio with a
    denominator <= MAX_RESAMPLE_FACTOR (a pitch error below 1e-6 for audio rates)."""
    g = gcd(int(rate), int(target))
    up, down = int(target) // g, int(rate) // g
    if max(up, down) <= MAX_RESAMPLE_FACTOR:
        return up, down
    ratio = Fraction(int(target), int(rate)).limit_denominator(MAX_RESAMPLE_FACTOR)
    return ratio.numerator, ratio.denominator


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from `rate` to `target` Hz, at bounded cost."""
    if rate == target:
        return np.asarray(wave, dtype=np.float32)
    up, down = resample_ratio(rate, target)
    return resample_poly(np.asarray(wave, dtype=np.float32), up, down).astype(np.float32)
