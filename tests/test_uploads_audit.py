"""POST /queries as the uploads audit found it: each test a defect that answered a wrong status, a
misleading sentence or another id for the same map, now fixed (docs/reliability.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from tests.server_support import make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_audio_s=1) as client:
        yield client


def wav(frames: int, rate: int = 8000, dtype: str = "int16", value: float = 0.1, subtype: str = "PCM_16") -> bytes:
    """A WAV of `frames` frames at `rate`, every sample `value` (in `dtype`, of file `subtype`)."""
    buf = io.BytesIO()
    soundfile.write(buf, np.full(frames, value, dtype), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def post_audio(client, body: bytes, kind: str = "audio/wav"):
    return client.post("/queries", content=body, headers={"Content-Type": kind})


def test_audio_one_frame_over_the_duration_limit_says_by_how_much(client):
    """8,001 frames at 8 kHz under a 1 s limit read "1.0 s long; the limit is 1 s"."""
    over = post_audio(client, wav(8001))
    assert over.status_code == 413
    assert over.json()["detail"] == "audio is 1.0001 s long; the limit is 1 s"
    assert post_audio(client, wav(8000)).status_code == 201
