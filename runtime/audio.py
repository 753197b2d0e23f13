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

import functools
import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, Protocol

import numpy as np
import soundfile
from numpy.typing import ArrayLike

from runtime.errors import UserError


class AudioDecodeError(UserError, ValueError):
    """The bytes or file are not audio that libsndfile reads (wav, flac, ogg, mp3, ...)."""


class AudioValueError(AudioDecodeError):
    """Audio libsndfile reads whose samples no recording holds: the file is read, its values are
    refused (the server answers 422 where it answers 415 for a file it cannot read)."""


class AudioFrontEnd(Protocol):
    """What the runtime needs from a front end: its rate and the features of a waveform."""

    @property
    def kind(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    def features(self, wave: np.ndarray) -> np.ndarray: ...

    def reads(self, n: int) -> list[tuple[int, int]] | None: ...

    def to_json(self) -> dict: ...


# --------------------------------------------------------------------------------------------
# Shared signal pieces


def _hz_to_mel_htk(hz: ArrayLike) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(mel: ArrayLike) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)  # a few front ends' filters: designed once, not once per clip
def htk_mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, norm: str | None
) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangles evenly spaced on the HTK mel scale, read-only (kept for
    the next clip: the design took a quarter of a short clip's log-mel).

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
    return _read_only(bank)


@functools.lru_cache(maxsize=16)
def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window of n_fft samples, read-only (kept for the next clip)."""
    return _read_only(np.hanning(n_fft + 1)[:-1])


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def power_spectrogram(
    wave: np.ndarray, n_fft: int, hop_length: int, pad_mode: Literal["reflect", "constant"]
) -> np.ndarray:
    """(n_fft//2 + 1, frames) |STFT|^2 with a periodic Hann window, frames centred on
    t * hop_length (the signal is padded by n_fft//2 on both sides with `pad_mode`)."""
    wave = np.asarray(wave, dtype=np.float64)
    padded = np.pad(wave, n_fft // 2, mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = hann_window(n_fft)
    return (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2).T


def centre_read(n: int, n_samples: int) -> list[tuple[int, int]] | None:
    """The samples of an n-sample clip that fit_length(clip, n_samples) keeps: its centre, or
    None (every sample) for a clip it repeats."""
    start = (n - n_samples) // 2
    return [(start, start + n_samples)] if n > n_samples else None


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


class ClipSpec:
    """What every front end's spec shares: a window of `duration_s` at `sample_rate` (its
    `n_samples`), and the JSON a manifest records (its fields and `kind`)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # each spec is a dataclass
    kind: ClassVar[str]
    sample_rate: int
    duration_s: float

    @property
    def n_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


# --------------------------------------------------------------------------------------------
# log-mel: the small CNN's input


@dataclass(frozen=True)
class AudioFeatureSpec(ClipSpec):
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
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop_length

    @classmethod
    def from_json(cls, spec: dict) -> AudioFeatureSpec:
        return cls(**{k: v for k, v in spec.items() if k != "kind"})

    def features(self, wave: np.ndarray) -> np.ndarray:
        return log_mel(wave, self)

    def reads(self, n: int) -> list[tuple[int, int]] | None:
        return centre_read(n, self.n_samples)


@functools.lru_cache(maxsize=16)
def mel_filterbank(spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) unit-area triangles on the HTK mel scale (the log-mel front end),
    float32 and read-only."""
    bank = htk_mel_filters(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, "area")
    return _read_only(bank.astype(np.float32))


def log_mel(wave: np.ndarray, spec: AudioFeatureSpec) -> np.ndarray:
    """(n_mels, n_frames) float32 log-mel of a mono waveform at spec.sample_rate."""
    power = power_spectrogram(fit_length(wave, spec.n_samples), spec.n_fft, spec.hop_length, "reflect")
    mel = mel_filterbank(spec) @ power.astype(np.float32)
    return np.log(mel + 1e-6).astype(np.float32)


# --------------------------------------------------------------------------------------------
# aisfx-mel: the aisfx CNN's input


@dataclass(frozen=True)
class AisfxMelSpec(ClipSpec):
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

    def filters(self) -> np.ndarray:
        return htk_mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, "sum")

    def mel_power(self, wave: np.ndarray) -> np.ndarray:
        """Mel power of the whole waveform as given (no cropping or normalisation)."""
        return self.filters() @ power_spectrogram(wave, self.n_fft, self.hop_length, "constant")

    def reads(self, n: int) -> list[tuple[int, int]] | None:
        return centre_read(n, self.n_samples)

    def features(self, wave: np.ndarray) -> np.ndarray:
        wave = fit_length(wave, self.n_samples).astype(np.float64)
        peak = np.abs(wave).max()
        wave = wave / peak if peak > 0 else wave
        return (np.log10(self.mel_power(wave) * self.log_gain + 1.0) / self.scale_max).astype(np.float32)


# --------------------------------------------------------------------------------------------
# clap-fusion: CLAP's fused mel


@dataclass(frozen=True)
class ClapFusionSpec(ClipSpec):
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
    def chunk_frames(self) -> int:
        return self.n_samples // self.hop_length + 1

    def db_mel(self, wave: np.ndarray | SparseWave, frames: np.ndarray | None = None) -> np.ndarray:
        """(frames, n_mels) dB mel of the waveform: of every frame, or of those numbered in `frames`."""
        filters = htk_mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, None)
        if frames is None:
            frames = np.arange(1 + len(wave) // self.hop_length)
        mel = np.maximum(1e-10, filters @ frame_power(wave, frames, self.n_fft, self.hop_length))
        return (10.0 * np.log10(mel)).T

    def chunk_starts(self, total_frames: int) -> list[int]:
        thirds = np.array_split(np.arange(total_frames - self.chunk_frames + 1), 3)
        return [int(t[len(t) // 2]) if len(t) else 0 for t in thirds]

    def frames_read(self, total_frames: int) -> np.ndarray:
        """The frames a clip of `total_frames` (more than chunk_frames) is given by: the two rows
        each row of the shrunk mel mixes, and the three chunks' (sorted, each once)."""
        lo, hi, _ = _shrink_weights(total_frames, self.chunk_frames)
        chunks = [np.arange(s, s + self.chunk_frames) for s in self.chunk_starts(total_frames)]
        return np.unique(np.concatenate([lo, hi, *chunks]))

    def reads(self, n: int) -> list[tuple[int, int]] | None:
        """The samples [a, b) of an n-sample clip that its features are computed from: those of
        `frames_read`, half a window more on either side (which covers the samples its reflected
        ends take); None for a clip of at most duration_s, which is repeated whole."""
        if n <= self.n_samples:
            return None
        total_frames = 1 + n // self.hop_length
        if total_frames <= self.chunk_frames:
            return [(0, n)]
        centres = self.frames_read(total_frames) * self.hop_length
        spans: list[tuple[int, int]] = []
        for a, b in zip(np.maximum(0, centres - self.n_fft), np.minimum(n, centres + self.n_fft), strict=True):
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], int(b))
            else:
                spans.append((int(a), int(b)))
        return spans

    def features(self, wave: np.ndarray | SparseWave) -> np.ndarray:
        """The fused mel of a mono clip; of a long one, only the samples `reads` names are read
        (a SparseWave holds no others)."""
        if not isinstance(wave, SparseWave):
            wave = np.asarray(wave)  # as it comes: a long clip is never copied whole
        if len(wave) > self.n_samples:
            total_frames = 1 + len(wave) // self.hop_length
            if total_frames <= self.chunk_frames:
                return np.stack([self.db_mel(wave)] * 4).astype(np.float32)
            frames = self.frames_read(total_frames)
            mel = self.db_mel(wave, frames)

            def rows(numbers: np.ndarray) -> np.ndarray:
                return mel[np.searchsorted(frames, numbers)]

            lo, hi, frac = _shrink_weights(total_frames, self.chunk_frames)
            chunks = [rows(np.arange(s, s + self.chunk_frames)) for s in self.chunk_starts(total_frames)]
            return np.stack([rows(lo) * (1 - frac) + rows(hi) * frac, *chunks]).astype(np.float32)
        wave = np.asarray(wave, dtype=np.float64)
        if 0 < len(wave) < self.n_samples:
            wave = np.tile(wave, self.n_samples // len(wave))
        wave = np.pad(wave, (0, self.n_samples - len(wave)))
        return np.stack([self.db_mel(wave)] * 4).astype(np.float32)


def frame_power(wave: np.ndarray | SparseWave, frames: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(n_fft//2 + 1, len(frames)) columns of power_spectrogram(wave, n_fft, hop_length, "reflect"):
    frame t is centred on sample t * hop_length, the wave reflected at its ends; only the samples
    of those frames are read, FRAME_BATCH frames at a time (memory: a batch's samples)."""
    window = hann_window(n_fft)
    columns = []
    for batch in np.split(frames, range(FRAME_BATCH, len(frames), FRAME_BATCH)):
        index = np.abs(batch[:, None] * hop_length - n_fft // 2 + np.arange(n_fft))
        index = np.where(index >= len(wave), 2 * (len(wave) - 1) - index, index)
        columns.append(np.abs(np.fft.rfft(np.asarray(wave[index], dtype=np.float64) * window, axis=-1)) ** 2)
    return np.concatenate(columns).T


FRAME_BATCH = 256


@dataclass(frozen=True, eq=False)
class SparseWave:
    """A mono waveform of `length` samples of which only `spans` ([a, b), sorted, apart) were
    read, their samples one after another in `held`: what decode_audio returns for CLAP's fusion
    inside `decoding_for`, whose features read a few frames all along a long recording. An array
    of the recording's length holding them took 4 bytes a sample of the whole recording (1.4 GB
    for 2 hours at 48 kHz), where a 10 s window reads ~4 million samples whatever its length."""

    length: int
    spans: tuple[tuple[int, int], ...]
    held: np.ndarray

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        return self.held.nbytes

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        """The samples at the integer positions `index` (any shape); IndexError where one was not
        read, rather than a made-up zero (the front end's `reads` and its features disagree)."""
        starts, ends = np.array(self.spans).T
        offsets = np.cumsum(ends - starts) - (ends - starts)  # where each span's samples begin in held
        span = np.searchsorted(starts, index, side="right") - 1
        if np.any(span < 0) or np.any(index >= ends[span]):
            raise IndexError("a sample that was not read (SparseWave.spans)")
        return self.held[offsets[span] + index - starts[span]]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """The waveform as decode_audio returned it before: the recording's length, zeros where
        nothing was read (4 bytes a sample), for code that knows only arrays."""
        wave = np.zeros(self.length, dtype=np.float32)
        bounds = np.cumsum([b - a for a, b in self.spans])[:-1]
        for (a, b), piece in zip(self.spans, np.split(self.held, bounds), strict=True):
            wave[a:b] = piece
        return wave if dtype is None else wave.astype(dtype)


def _shrink_weights(n: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear resampling of n rows to `rows` rows, half-pixel centres (bilinear with
    align_corners=False along one axis, as CLAP shrinks a long mel): row i is
    x[lo[i]] * (1 - frac[i]) + x[hi[i]] * frac[i]."""
    scale = n / rows
    src = np.maximum((np.arange(rows) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (src - lo)[:, None]


# --------------------------------------------------------------------------------------------


FRONT_ENDS: dict[str, type] = {spec.kind: spec for spec in (AudioFeatureSpec, AisfxMelSpec, ClapFusionSpec)}


def audio_front_end(spec: dict) -> AudioFeatureSpec | AisfxMelSpec | ClapFusionSpec:
    """The front end a manifest's `audio` section describes (its `kind` selects the class)."""
    kind = spec.get("kind", AudioFeatureSpec.kind)
    if kind not in FRONT_ENDS:
        raise ValueError(f"unknown audio feature kind {kind!r}; known: {', '.join(FRONT_ENDS)}")
    return FRONT_ENDS[kind](**{k: v for k, v in spec.items() if k != "kind"})


def waveform_features(front_end: AudioFrontEnd, wave: np.ndarray | SparseWave, sample_rate: int) -> np.ndarray:
    """Features of a mono waveform at any rate: resampled to the front end's rate first. A
    SparseWave is read for CLAP's fusion at its rate (decoding_for); any other front end would
    take its unread samples for silence."""
    if isinstance(wave, SparseWave):
        if not isinstance(front_end, ClapFusionSpec) or sample_rate != front_end.sample_rate:
            raise ValueError(
                f"a SparseWave is read for clap-fusion at its own rate, not for {front_end.kind} at "
                f"{front_end.sample_rate} Hz from {sample_rate} Hz"
            )
        return front_end.features(wave)
    return front_end.features(resample(wave, sample_rate, front_end.sample_rate))


# Front ends whose features are those of fit_length(wave, n_samples): the centre they keep is
# all a decode for them returns.
CENTRE_CROPPING = (AudioFeatureSpec, AisfxMelSpec)
_DECODING: ContextVar[AudioFrontEnd | None] = ContextVar("runtime.audio decoding for", default=None)


@contextmanager
def decoding_for(front_end: AudioFrontEnd) -> Iterator[None]:
    """Within the block, decode_audio of a recording reads only the frames of the samples
    `front_end` computes its features from (`reads`), already at its rate: a 2-hour stereo WAV
    in a training folder was decoded whole (3.6 GB at the peak, 19 s) for a 10 s crop. The
    features are the same to the bit (tested). A ContextVar, not a parameter: the readers between
    training's Examples and decode_audio (model.data.SampleSource, one's own included) then need
    not know the model's front end."""
    token = _DECODING.set(front_end)
    try:
        yield
    finally:
        _DECODING.reset(token)


def decode_audio(source: bytes | str | Path) -> tuple[np.ndarray | SparseWave, int]:
    """(mono float32 waveform, sample rate) of an audio file or its bytes; inside `decoding_for`,
    the part its front end reads (`_kept`): a SparseWave of a long recording for CLAP's fusion."""
    front_end = _DECODING.get()
    wave: np.ndarray | SparseWave
    try:
        with soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as f:
            _check_rate(int(f.samplerate))
            check_declared_length(f.frames)
            if f.format == "OGG":
                _check_one_ogg_stream(source)
            if front_end is None:
                wave, rate = _mono(_every_frame(f)), int(f.samplerate)
            else:
                wave, rate = _kept(f, front_end), front_end.sample_rate
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}") from None
    _check_amplitude(wave)
    return wave, rate


# The lowest sample rate a recording of sound has (telephony's is 8000 Hz; 1000 Hz still keeps
# what is under 500 Hz). A WAV header can say 1 Hz: read for CLAP, 20 KB of such samples (10,000, "2.8
# hours") took 71 s and 4.7 GB, each window resampled 48,000-fold.
MIN_SAMPLE_RATE = 1000


def _check_rate(rate: int) -> None:
    """AudioDecodeError for a sample rate no recording of sound has."""
    if rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(
            f"its sample rate is {rate} Hz, below any recording of sound ({MIN_SAMPLE_RATE} Hz and up): a damaged "
            "header, or a file of other data?"
        )


# The frame count libsndfile gives a file that declares none (SF_COUNT_MAX): a FLAC stream, as an
# encoder writing to a pipe leaves its STREAMINFO (flac -, ffmpeg's pipe:), says 0 samples.
UNKNOWN_FRAMES = (1 << 63) - 1


def check_declared_length(frames: int) -> None:
    """AudioDecodeError for a file that declares no length (`frames` is UNKNOWN_FRAMES): soundfile
    sizes a whole read by that count (an array of 2^63 frames), and a read in blocks fails at the
    end (each read seeks past what it read, and the decoder cannot seek to a stream's end), so it
    cannot be read to its end; the server called a 3 s clip 209146758205323.7 s long. Re-encoded
    as a file it declares its length."""
    if frames == UNKNOWN_FRAMES:
        raise AudioDecodeError(
            "it declares no length (a FLAC stream, as an encoder writing to a pipe leaves it), so it cannot be "
            "read to its end: re-encode it as a file (ffmpeg -i IN.flac OUT.flac)"
        )


# An Ogg page's header (RFC 3533): "OggS", version, header type (2: the first page of a logical
# stream), granule position, serial number, page number, CRC, segment count, then the segments'
# lacing values; a page is at most 27 + 255 + 255 * 255 bytes.
_OGG_PAGE = struct.Struct("<4sBBqIIIB")
_OGG_FIRST_PAGE = 2
_OGG_MAX_PAGE = _OGG_PAGE.size + 255 + 255 * 255


def _check_one_ogg_stream(source: bytes | str | Path) -> None:
    """AudioDecodeError for a chained Ogg file, logical streams one after another (`cat a.ogg
    b.ogg`): libsndfile reads the first alone, and the rest of the recording was dropped without a
    word. Its last page belongs to none of the streams its first pages begin (two pages read, not
    the file); the streams are counted only then."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as stream:
        size = stream.seek(0, io.SEEK_END)
        first = {serial for _, begins, serial in _ogg_pages(stream, 0, size) if begins}
        stream.seek(max(0, size - _OGG_MAX_PAGE))
        tail = stream.read()
        last = _last_ogg_serial(tail)
        links = 0 if last is None or last in first else _chained_streams(stream, size)
    if links > 1:
        raise AudioDecodeError(
            f"it holds {links} chained Ogg streams (files joined end to end, as cat a.ogg b.ogg makes them), of "
            "which only the first would be read: chained Ogg streams are not supported; re-encode it as one "
            "stream (from the files it was joined from: sox a.ogg b.ogg joined.ogg)"
        )


def _ogg_pages(stream: BinaryIO, start: int, size: int, first_only: bool = True) -> Iterator[tuple[int, bool, int]]:
    """(offset, begins a stream, serial) of the pages from `start`: the first stream's opening pages
    alone (up to its first page of data) with `first_only`, else every page, to where a page's
    header is no Ogg page's (the end, or a damaged page)."""
    at = start
    while at + _OGG_PAGE.size <= size:
        stream.seek(at)
        header = stream.read(_OGG_PAGE.size)
        capture, version, kind, _, serial, _, _, count = _OGG_PAGE.unpack(header)
        if capture != b"OggS" or version != 0 or (first_only and not kind & _OGG_FIRST_PAGE):
            return
        yield at, bool(kind & _OGG_FIRST_PAGE), serial
        at += _OGG_PAGE.size + count + sum(stream.read(count))


def _chained_streams(stream: BinaryIO, size: int) -> int:
    """How many logical streams follow one another in an Ogg file: a page that begins a stream
    after one that does not begins the next (streams multiplexed side by side begin together)."""
    streams, previous = 0, False
    for _, begins, _ in _ogg_pages(stream, 0, size, first_only=False):
        streams += begins and not previous
        previous = begins
    return streams


def _last_ogg_serial(tail: bytes) -> int | None:
    """The serial number of the last whole Ogg page in `tail` (the file's last bytes)."""
    at = tail.rfind(b"OggS")
    while at >= 0:
        if at + _OGG_PAGE.size <= len(tail):
            _, version, _, _, serial, _, _, count = _OGG_PAGE.unpack_from(tail, at)
            lacing = tail[at + _OGG_PAGE.size : at + _OGG_PAGE.size + count]
            if version == 0 and len(lacing) == count and at + _OGG_PAGE.size + count + sum(lacing) <= len(tail):
                return int(serial)
        at = tail.rfind(b"OggS", 0, at)
    return None


def non_finite(wave: np.ndarray | SparseWave) -> int:
    """How many samples of a decoded waveform are NaN or infinite (a float file can hold them),
    of a SparseWave those read alone: the others make no feature."""
    return int(np.count_nonzero(~np.isfinite(wave.held if isinstance(wave, SparseWave) else wave)))


# The largest sample a recording's decode holds: 1 as written, 2^31 in a float file scaled as
# 32-bit integers. A float file holding other data can reach 1e20 (finite): the log-mel front end's
# power overflowed float32 from ~1e17, its features were infinite and training stopped as diverged.
MAX_AMPLITUDE = 1e12


def _check_amplitude(wave: np.ndarray | SparseWave) -> None:
    """AudioDecodeError where a decode's samples (of a SparseWave, those read) reach past
    MAX_AMPLITUDE; NaN and infinities are the callers' to refuse (non_finite)."""
    samples = wave.held if isinstance(wave, SparseWave) else wave
    finite = samples[np.isfinite(samples)] if non_finite(wave) else samples
    loudest = float(max(finite.max(initial=0.0), -finite.min(initial=0.0)))
    if loudest > MAX_AMPLITUDE:
        raise AudioValueError(
            f"its samples reach {loudest:.3g}, where audio's are at most 1 (2.1e9 scaled as 32-bit integers): "
            "a float file holding other data?"
        )


def _mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1)


CANCELLED = 0.01  # a mix 40 dB below its channels: one channel is (nearly) the other inverted
AUDIBLE = 1e-4  # channels quieter than this (-80 dBFS RMS) are silence, whatever their mix


def _trained_mono(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The channels' mean of each part of a recording (frames, channels), refused where they
    cancel out over all of them: a recording whose channels are in opposite phase (a wiring or
    export fault) mixes to near silence, which would be trained on as the sound of its place.
    Uploads to the server are mixed as they come (decode_audio)."""
    monos = [_mono(frames) for frames in parts]
    count = sum(len(frames) for frames in parts)
    if parts[0].shape[1] > 1 and count:
        power = sum(float(np.sum(np.square(frames, dtype=np.float64))) for frames in parts) / parts[0].shape[1]
        channels = np.sqrt(power / count)
        mix = np.sqrt(sum(float(np.sum(np.square(mono, dtype=np.float64))) for mono in monos) / count)
        if channels > AUDIBLE and mix < CANCELLED * channels:
            raise AudioDecodeError(
                f"its {parts[0].shape[1]} channels cancel out when mixed to mono (one is the other in opposite "
                f"phase): the mix is {20 * np.log10(channels / max(mix, 1e-12)):.0f} dB below them; keep one "
                "channel (sox IN OUT remix 1) or invert one (sox IN OUT remix 1 2i)"
            )
    return monos


# Samples that decode each from its own bytes: a seek reads exactly the samples a whole read
# would.
EXACT_SEEK_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})
# Codecs whose decoder, after a seek, gives the samples of a whole decode once it has decoded
# PREROLL_FRAMES before them: a Vorbis sample depends on its block and the one before (8192
# samples at most); Opus needs 80 ms (RFC 7845). libsndfile 1.2's Vorbis seek alone gave wrong
# first samples now and then (0.7 off), Opus's the last bit off. MP3 of MPEG-1 (32 kHz and up)
# seeks to the sample (a mono one's samples differ in the last bit with mpg123's buffers, read in
# blocks from the start too: 9e-8; tests/test_review_audio.py). MPEG-2 and 2.5 (below 32 kHz)
# stay decoded from the start: mpg123's samples there differ in the last bit with its buffers, a
# whole read's too, so no read of them is exact and a seek's could not be checked
# (tests/test_training_leftovers2.py).
PREROLL_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_III"})
MPEG1_RATES = frozenset({32000, 44100, 48000})
PREROLL_FRAMES = 1 << 14
BLOCK_FRAMES = 1 << 16


def _every_frame(f: soundfile.SoundFile) -> np.ndarray:
    """Every frame of `f` (frames, channels), from its start. A file libsndfile cannot seek in (GSM
    6.10 or G.721 in a WAV) is read as it comes, by the frame count its header declares: soundfile
    takes no read to the end of one ('frames must be specified for non-seekable files'). A file of
    doubles is read as doubles a block at a time, each block's samples checked before they become
    float32 (`_checked_float32`)."""
    if f.subtype == "DOUBLE":
        return np.concatenate([np.empty((0, f.channels), np.float32), *map(_checked_float32, _blocks(f, "float64"))])
    if not f.seekable():
        return f.read(f.frames, dtype="float32", always_2d=True)
    f.seek(0)
    return f.read(dtype="float32", always_2d=True)


def _checked_float32(frames: np.ndarray) -> np.ndarray:
    """Decoded doubles as float32, once their amplitude is checked (`_check_amplitude`): a finite
    double past float32's range (1e300) becomes an infinity, and was refused as a non-finite
    sample it is not."""
    _check_amplitude(frames)
    return frames.astype(np.float32)


def _kept(f: soundfile.SoundFile, front_end: AudioFrontEnd) -> np.ndarray | SparseWave:
    """resample(whole recording, front end's rate) where `front_end` reads it, from the frames
    those samples are made of: a centre-cropping front end's centre alone; for CLAP's fusion
    (two frames in every few all along the recording, and three chunks) a SparseWave of those
    samples, whose memory is theirs, not the recording's."""
    rate, target = int(f.samplerate), front_end.sample_rate
    up, down = resample_ratio(rate, target)
    n = -(-f.frames * up // down)  # resample_poly's output length
    spans = front_end.reads(n) if f.seekable() else None  # no seek: the file is read once, whole
    pieces = None if spans is None else _read_spans(f, target, spans)
    if spans is None or pieces is None:  # every sample is read, or the file held other frames than it declared
        return resample(_trained_mono([_every_frame(f)])[0], rate, target)
    if isinstance(front_end, CENTRE_CROPPING):
        return pieces[0]
    return SparseWave(n, tuple(spans), np.concatenate(pieces))


def _read_spans(f: soundfile.SoundFile, target: int, spans: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """resample(whole recording, target)[a:b] for each (a, b) of `spans` (sorted), from the
    frames those samples are made of: the polyphase filter's reach on either side, from a frame
    where the resampled window falls on the whole recording's sample grid (a multiple of `down`),
    so every sample kept is the one the whole recording gives. None where `_frames` is."""
    rate = int(f.samplerate)
    up, down = resample_ratio(rate, target)
    reach = 0 if up == down else 10 * max(up, down) // up + 2  # resample_poly's half filter, in frames
    windows = [
        (max(0, (a * down // up - reach) // down * down), min(f.frames, -(-b * down // up) + reach)) for a, b in spans
    ]
    frames = _frames(f, windows)
    if frames is None:
        return None
    mono = _trained_mono(frames)
    del frames  # the stereo windows go before their mixes are resampled (memory: the mixes and the result)
    return [
        resample(m, rate, target)[a - first * up // down : b - first * up // down]
        for m, (first, _), (a, b) in zip(mono, windows, spans, strict=True)
    ]


def _frames(f: soundfile.SoundFile, windows: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """Frames [first, last) of `f` for each window (sorted): read after a seek where that gives
    a whole decode's samples (after a pre-roll for compressed audio), else decoded from the start
    block by block (memory: the windows and a block); None when the file holds another number of
    frames than it declared (the windows would then be elsewhere)."""
    if f.seekable() and f.subtype in EXACT_SEEK_SUBTYPES:
        read = _sought(f, windows, 0)
    elif f.seekable() and _seeks_after_preroll(f) and _declared_length_holds(f):
        read = _sought(f, windows, PREROLL_FRAMES)
    else:
        return _decoded_through(f, windows)
    return read if all(len(w) == last - first for w, (first, last) in zip(read, windows, strict=True)) else None


def _sought(f: soundfile.SoundFile, windows: list[tuple[int, int]], preroll: int) -> list[np.ndarray]:
    """Each window, `preroll` frames decoded before it after a seek; a window that starts at most
    that far after the last one ends is read on from it (CLAP's close windows: no seek). A
    compressed file's window is read from END_FRAMES before its end at the latest (_read_from)."""
    read, at = [], None
    for first, last in windows:
        start = _read_from(f, first) if preroll else first
        if at is None or not at <= start <= at + preroll:
            at = max(0, start - preroll)
            f.seek(at)
        f.read(start - at, dtype="float32", always_2d=True)
        frames = f.read(last - start, dtype="float32", always_2d=True)
        read.append(frames[first - start :])
        at = start + len(frames)
    return read


# libsndfile 1.2's Opus decoder gives other samples than a whole decode's (up to 0.8 off) for a read
# that starts in a file's last few hundred frames (21 to 624 measured, by rate and length; its last
# packet and pre-skip), after a pre-roll or not; one that starts before them and reads on is exact.
# Opus packets are 120 ms at most (5760 frames at 48 kHz): reads of compressed audio start at least
# END_FRAMES before the end, whatever the codec.
END_FRAMES = 1 << 14


def _read_from(f: soundfile.SoundFile, first: int) -> int:
    """Where a read of a compressed file for frames from `first` on starts: `first`, or END_FRAMES
    before the declared end where `first` is later (the frames between are read and dropped)."""
    return max(0, min(first, f.frames - END_FRAMES))


def _seeks_after_preroll(f: soundfile.SoundFile) -> bool:
    return f.subtype in PREROLL_SUBTYPES and (f.subtype != "MPEG_LAYER_III" or f.samplerate in MPEG1_RATES)


def _declared_length_holds(f: soundfile.SoundFile) -> bool:
    """Whether a compressed file holds the frames it declared (an MP3 without its info frame
    declares an estimate, which may be more): its last one is there. A whole decode stops at the
    declared count in any case (soundfile reads no further)."""
    try:
        f.seek(f.frames - 1)
        return len(f.read(1, dtype="float32", always_2d=True)) == 1
    except soundfile.LibsndfileError:
        return False


def _decoded_through(f: soundfile.SoundFile, windows: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """Each window, decoding the file from the start block by block; None when the decoder
    reached another end than the declared frame count."""
    kept: list[list[np.ndarray]] = [[] for _ in windows]
    position, open_from = 0, 0  # windows before open_from end before the block
    for block in _blocks(f):
        end = position + len(block)
        while open_from < len(windows) and windows[open_from][1] <= position:
            open_from += 1
        for i in range(open_from, len(windows)):
            first, last = windows[i]
            if first >= end:
                break
            kept[i].append(block[max(0, first - position) : last - position].copy())  # not a view: the block goes
        position = end
    if position != f.frames or not all(kept):
        return None
    return [np.concatenate(parts) for parts in kept]


def _blocks(f: soundfile.SoundFile, dtype: str = "float32") -> Iterator[np.ndarray]:
    """The frames of `f` from its start, BLOCK_FRAMES at a time as `dtype`, each as the decoder gave
    it, up to the first it left short. soundfile's blocks() yields every block whole: one the
    decoder left short (a file holding fewer frames than it declares, such as an MP3 cut short) came
    padded with what its buffer held before, stale samples up to 5e37 and NaN."""
    f.seek(0)
    while True:
        block = f.read(BLOCK_FRAMES, dtype=dtype, always_2d=True)
        if len(block):
            yield block
        if len(block) < BLOCK_FRAMES:
            return


# The polyphase filter has ~20 max(up, down) taps: an exact ratio of two coprime rates (e.g.
# 44100 / 383987) would cost a filter of millions of taps (1.2 s and 90 MB for 1000 samples).
MAX_RESAMPLE_FACTOR = 4096


def resample_ratio(rate: int, target: int) -> tuple[int, int]:
    """(up, down) of the resampling: exact for the usual rates, else the nearest ratio with a
    denominator <= MAX_RESAMPLE_FACTOR: a pitch error below 1 / MAX_RESAMPLE_FACTOR (0.4 cent),
    and (1, 1) for a rate within about that of the target (44,099 Hz for 44,100)."""
    g = gcd(int(rate), int(target))
    up, down = int(target) // g, int(rate) // g
    if max(up, down) <= MAX_RESAMPLE_FACTOR:
        return up, down
    ratio = Fraction(int(target), int(rate)).limit_denominator(MAX_RESAMPLE_FACTOR)
    return ratio.numerator, ratio.denominator


def resample(wave: ArrayLike, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from `rate` to `target` Hz, at bounded cost."""
    if rate == target:
        return np.asarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly  # here: importing scipy.signal takes 0.8 s of every command's start

    up, down = resample_ratio(rate, target)
    if up == down:  # within 0.4 cent of the target: nothing to resample (firwin refuses a cutoff of 1)
        return np.asarray(wave, dtype=np.float32)
    return resample_poly(np.asarray(wave, dtype=np.float32), up, down, window=_lowpass(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=8)  # an upload may have any rate: a few filters (up to 320 KB each) are kept
def _lowpass(up: int, down: int) -> np.ndarray:
    """The filter resample_poly designs for float32 input by default (Kaiser 5.0, 20 max(up, down)
    + 1 taps), designed once per ratio: the design took 1 ms a call, and a long recording read for
    CLAP resamples a thousand short windows."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    return firwin(20 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)
