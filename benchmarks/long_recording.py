"""What training pays to read one sample of a long recording: the whole file decoded and then
centre-cropped (runtime.audio.decode_audio, as server uploads are read) against only the frames the
front end keeps (inside runtime.audio.decoding_for, as training reads them since 8d32434).

    python benchmarks/long_recording.py [--minutes 20] [--format wav|flac|ogg]
        [--front-end log-mel|aisfx-mel|clap-fusion] [--json FILE]

A generated stereo 44.1 kHz recording (noise with a tone, 16-bit for WAV and FLAC) of `--minutes`
is written to a temporary folder; each way reads it `--repeat` times (median wall time), once
under tracemalloc (peak of Python and numpy allocations, which hold the decoded samples) and once
in a fresh process (its peak resident memory above what it held before the read, Linux's VmHWM:
what the machine gives). Both end in the front end's features (default log-mel), compared for
equality. CLAP's fusion reads frames all along the recording (runtime.audio.SparseWave).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from runtime.arguments import integer_in, number_above
from runtime.audio import FRONT_ENDS, audio_front_end, decode_audio, decoding_for, waveform_features

RATE = 44100
SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}


def write_recording(path: Path, minutes: float, fmt: str) -> None:
    """Stereo noise with a 440 Hz tone, written block by block (a long file never whole in memory)."""
    rng = np.random.default_rng(0)
    block, total = RATE * 10, round(minutes * 60 * RATE)
    with soundfile.SoundFile(path, "w", RATE, 2, subtype=SUBTYPES[fmt], format=fmt.upper()) as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            tone = 0.2 * np.sin(2 * np.pi * 440 * (start + np.arange(n)) / RATE)
            f.write((tone[:, None] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))


def timed(read: Callable[[], np.ndarray], repeat: int) -> tuple[np.ndarray, float, float]:
    """The features, the median wall seconds of `repeat` reads and the peak MB one read allocates."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        features = read()
        seconds.append(time.perf_counter() - began)
    tracemalloc.start()
    read()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return features, statistics.median(seconds), peak


def read_features(path: Path, front_end: str, crop: bool) -> np.ndarray:
    """The front end's features of the recording: decoded whole, or read for the front end only."""
    spec = audio_front_end({"kind": front_end})
    if not crop:
        return waveform_features(spec, *decode_audio(path))
    with decoding_for(spec):
        return waveform_features(spec, *decode_audio(path))


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), MB."""
    line = next(
        line
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines()
        if line.startswith(field + ":")
    )
    return int(line.split()[1]) / 2**10


def _read_rss(path: Path, front_end: str, crop: bool) -> float:
    import scipy.signal  # noqa: F401  runtime.audio imports it on a first resampling: not the read's memory

    before = _status_mb("VmRSS")
    read_features(path, front_end, crop)
    return _status_mb("VmHWM") - before


def peak_rss(path: Path, front_end: str, crop: bool) -> float:
    """MB of resident memory one read adds at its peak (VmHWM), in a fresh process: the peak only
    grows, and ru_maxrss carries the parent's over a fork."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_read_rss, path, front_end, crop).result()


def measure(minutes: float, fmt: str, repeat: int, front_end: str = "log-mel") -> dict:
    result: dict = {
        "recording": {"minutes": minutes, "format": fmt, "channels": 2, "rate": RATE},
        "front_end": audio_front_end({"kind": front_end}).to_json(),
    }
    features = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"long.{fmt}"
        write_recording(path, minutes, fmt)
        result["recording"]["file_mb"] = round(path.stat().st_size / 2**20, 1)
        for way, crop in (("whole_decode", False), ("crop_only", True)):
            read, seconds, peak = timed(lambda crop=crop: read_features(path, front_end, crop), repeat)
            features.append(read)
            rss = peak_rss(path, front_end, crop)
            result[way] = {"seconds": round(seconds, 3), "peak_mb": round(peak, 1), "peak_rss_mb": round(rss, 1)}
    result["features_equal"] = bool(np.array_equal(*features))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=number_above(0), default=20.0, help="length of the recording")
    parser.add_argument("--format", choices=sorted(SUBTYPES), default="wav")
    parser.add_argument("--repeat", type=integer_in(1, 100), default=3, help="timed reads of each way")
    parser.add_argument("--front-end", choices=sorted(FRONT_ENDS), default="log-mel", help="whose features")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    emit({**provenance(), **measure(args.minutes, args.format, args.repeat, args.front_end)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
