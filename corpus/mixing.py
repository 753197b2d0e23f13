"""Audio mixtures as recipes: a sample's sound is a list of events (clip, where in the clip,
where in the output, how long, gain). The corpus stores recipes, not waveforms (a 10 s, 44.1 kHz
waveform is ~1.7 MB as float32; a recipe is a few dozen bytes), and `render` turns a recipe into
the same waveform every time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpus.clips import Clip, Recording

FADE_S = 0.01  # fade every event in and out, so cuts never click
OUTPUT_RMS = 0.05  # mixtures are levelled to this RMS, then limited below full scale


@dataclass
class Events:
    """Parallel arrays, one entry per event."""

    clip: np.ndarray  # index into the clip table
    src: np.ndarray  # first frame inside the clip
    dst: np.ndarray  # first frame in the output
    length: np.ndarray  # frames
    gain_db: np.ndarray


def layer_events(
    pool: list[Recording],
    gain_db: float,
    n_frames: int,
    rate: int,
    rng: np.random.Generator,
    max_events: int = 12,
) -> list[tuple[int, int, int, int, float]]:
    """Events for one sound layer from a pool of recordings of its class: a random crop of a
    long recording, or short ones (events such as a bark or a horn) placed at random times with
    random gaps until the output is covered."""
    events: list[tuple[int, int, int, int, float]] = []
    t = int(rng.integers(0, max(1, n_frames // 4)))  # time shift of the first event
    while t < n_frames and len(events) < max_events:
        recording = pool[int(rng.integers(len(pool)))]
        jitter = float(rng.uniform(-2.0, 2.0))
        if recording.frames >= n_frames and not events:
            src = recording.start + int(rng.integers(0, recording.frames - n_frames + 1))
            return [(recording.clip, src, 0, n_frames, gain_db + jitter)]
        length = min(recording.frames, n_frames - t)
        events.append((recording.clip, recording.start, t, length, gain_db + jitter))
        t += length + int(rng.uniform(0.2, 2.5) * rate)
    return events


def _fade(n: int, rate: int) -> np.ndarray:
    k = max(1, min(n // 2, int(FADE_S * rate)))
    env = np.ones(n, dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
    env[:k], env[n - k :] = ramp, ramp[::-1]
    return env


def render(events: Events, bank: np.ndarray, clips: list[Clip], n_frames: int, rate: int) -> np.ndarray:
    """The mono float32 waveform of a recipe (deterministic: a pure function of its inputs)."""
    out = np.zeros(n_frames, dtype=np.float32)
    for clip, src, dst, length, gain_db in zip(
        events.clip, events.src, events.dst, events.length, events.gain_db, strict=True
    ):
        c = clips[int(clip)]
        start = c.offset + int(src)
        segment = np.asarray(bank[start : start + int(length)], dtype=np.float32) / 32767.0
        scale = c.gain * 10.0 ** (float(gain_db) / 20.0)
        out[int(dst) : int(dst) + len(segment)] += segment * scale * _fade(len(segment), rate)
    rms = float(np.sqrt(np.mean(out**2)))
    if rms > 0:
        out *= OUTPUT_RMS / rms
    peak = float(np.abs(out).max()) if n_frames else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return out
