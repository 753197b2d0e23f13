"""Queries: text or audio turned into an embedding under a short deterministic id.

The id hashes the bundle id with the normalised input (text case-folded and single-spaced;
audio as its waveform at the bundle's sample rate), so the same query always gets the same id
(a text's id also names the precision of a text graph other than fp32: SoundscapeService.text_namespace)
and tile URLs that carry it stay cacheable forever. Records live in the shared cache (Redis
when configured, so every worker and replica resolves an id) with a long TTL.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import soundfile

from runtime.audio import AudioDecodeError, AudioValueError, check_declared_length, decode_audio, resample
from runtime.text import TextError, query_text
from server.engine import QueryEmbedding

ID_LENGTH = 16
ID_PATTERN = f"^[0-9a-f]{{{ID_LENGTH}}}$"  # is_query_id's rule, as OpenAPI states it
SHOWN_INPUT_CHARS = 40  # a client's value is quoted back in an error up to this length
# Uploads are checked against these from the header, before any decode or resampling, so a small
# file cannot cost much memory or CPU: decoding holds frames x channels float32 samples.
SAMPLE_RATES = (8000, 384000)
MAX_CHANNELS = 8
MAX_DECODED_SAMPLES = 1 << 23  # 32 MiB of float32: 60 s of 48 kHz stereo fits


class QueryError(ValueError):
    """A query the client got wrong; `status` is the HTTP status to answer with, and
    `retry_after_s`, when set, its Retry-After (a 503: the same request may succeed later)."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class QueryRecord:
    id: str
    kind: str  # "text" | "audio"
    text: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None  # of the upload; the model hears it at the bundle's rate

    def to_bytes(self, embedding: QueryEmbedding) -> bytes:
        head = json.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()
        return len(head).to_bytes(4, "little") + head + embedding.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int | None = None) -> tuple[QueryRecord, QueryEmbedding]:
        """ValueError or TypeError for bytes of another layout (or `dim`)."""
        n = int.from_bytes(data[:4], "little")
        return cls(**json.loads(data[4 : 4 + n])), QueryEmbedding.from_bytes(data[4 + n :], dim)


def record_id(bundle_id: str, kind: str, content: bytes) -> str:
    return hashlib.sha256(b"\0".join([bundle_id.encode(), kind.encode(), content])).hexdigest()[:ID_LENGTH]


def is_query_id(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in "0123456789abcdef" for c in text)


def shown(value: object) -> str:
    """A client's value quoted back in an error message, cut to SHOWN_INPUT_CHARS."""
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= SHOWN_INPUT_CHARS else text[:SHOWN_INPUT_CHARS] + "...")


def clean_text(text: str) -> str:
    """The normalised text (runtime.text.query_text), or a 422 QueryError saying why not."""
    try:
        return query_text(text)
    except TextError as exc:
        raise QueryError(422, str(exc)) from None


def text_record(namespace: str, text: str) -> QueryRecord:
    """The record of a text; `namespace` is the bundle id, with the text graph's precision
    when that is not fp32."""
    normal = clean_text(text)
    return QueryRecord(record_id(namespace, "text", normal.encode()), "text", text=normal)


@dataclass(frozen=True)
class DecodedAudio:
    record: QueryRecord
    wave: np.ndarray  # mono float32 at the bundle's sample rate
    sample_rate: int


def seconds_over(seconds: float, limit: float) -> str:
    """`seconds`, over `limit`, with the fewest decimals (one at least) that show it over: one
    frame past 60 s at 8 kHz read "60.0 s long; the limit is 60 s"."""
    texts = (f"{seconds:.{digits}f}" for digits in range(1, 10))
    return next((text for text in texts if float(text) > limit), repr(seconds))


def check_audio_header(rate: int, channels: int, frames: int, max_seconds: float) -> None:
    """Refuse, from the header alone, audio whose decoding or resampling would cost too much."""
    lo, hi = SAMPLE_RATES
    if not lo <= rate <= hi:
        raise QueryError(422, f"the audio's sample rate is {rate} Hz; accepted rates are {lo} to {hi} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise QueryError(422, f"the audio has {channels} channels; accepted are 1 to {MAX_CHANNELS}")
    if frames / rate > max_seconds:
        raise QueryError(
            413, f"audio is {seconds_over(frames / rate, max_seconds)} s long; the limit is {max_seconds:g} s"
        )
    if frames * channels > MAX_DECODED_SAMPLES:
        raise QueryError(
            413,
            f"the audio holds {frames * channels} samples (frames x channels); the limit is "
            f"{MAX_DECODED_SAMPLES}: send fewer channels or a lower sample rate",
        )


def decode_upload(bundle_id: str, data: bytes, target_rate: int, max_seconds: float) -> DecodedAudio:
    """Decode an upload (wav, flac, ogg, mp3), enforce the rate, channel, duration and size limits
    from its header before decoding (a 244-byte file can declare hours of audio at a megahertz),
    and resample to the bundle's rate."""
    if not data:
        raise QueryError(422, "the audio upload is empty")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise QueryError(415, f"cannot read the upload as audio (wav, flac, ogg or mp3): {exc}") from None
    try:
        check_declared_length(info.frames)  # before its frame count is taken for a length
        check_audio_header(info.samplerate, info.channels, info.frames, max_seconds)
        wave, rate = decode_audio(data)
    except AudioValueError as exc:  # read, and its samples refused
        raise QueryError(422, str(exc)) from None
    except AudioDecodeError as exc:
        raise QueryError(415, str(exc)) from None
    if len(wave) == 0:
        raise QueryError(422, "the audio upload holds no samples")
    if not np.isfinite(wave).all():
        raise QueryError(422, "the audio holds non-finite samples")
    wave = resample(wave, rate, target_rate)
    record = QueryRecord(
        record_id(bundle_id, "audio", wave.astype("<f4").tobytes()),
        "audio",
        duration_s=round(len(wave) / target_rate, 3),
        sample_rate=rate,
    )
    return DecodedAudio(record, wave, target_rate)
