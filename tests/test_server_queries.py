"""POST /queries: text and audio uploads (wav, flac, ogg, mp3) become deterministic ids usable
in tile URLs; size, duration and type limits answer 413/415 with a message."""

import io

import numpy as np
import pytest
import soundfile

from server.queries import record_id
from tests.server_support import decode_npy, make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_upload_mb=1.9, max_audio_s=12) as client:
        yield client


def clip(
    seconds: float = 2.0,
    rate: int = 44100,
    fmt: str = "WAV",
    subtype: str = "PCM_16",
    tone: float = 0.3,
    noise: float = 0.05,
) -> bytes:
    """A recording-like clip: a chirp plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    wave = tone * np.sin(2 * np.pi * (300 + 900 * t) * t) + noise * rng.standard_normal(len(t))
    buf = io.BytesIO()
    soundfile.write(buf, wave.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_text_query_id_is_deterministic_and_normalised(client):
    bundle_id = client.app.state.service.bundle.id
    a = client.post("/queries", json={"text": "Birdsong at  dawn "})
    b = client.post("/queries", json={"text": "birdsong at dawn"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] == b.json()["id"] == record_id(bundle_id, "text", b"birdsong at dawn")
    assert a.json()["text"] == "birdsong at dawn"
    assert a.headers["location"].endswith(f"/queries/{a.json()['id']}")
    got = client.get(f"/queries/{a.json()['id']}").json()
    assert got["kind"] == "text" and got["uncertainty"] == pytest.approx(a.json()["uncertainty"])
    form = client.post("/queries", files={"text": (None, "BIRDSONG at dawn")})
    assert form.json()["id"] == a.json()["id"]


def test_tile_by_id_equals_tile_by_text(client):
    qid = client.post("/queries", json={"text": "waves on the open ocean"}).json()["id"]
    by_id = client.get("/tiles/3/4/2.png", params={"query": qid})
    by_text = client.get("/tiles/3/4/2.png", params={"q": "Waves on the open ocean"})
    assert by_id.status_code == 200 and by_id.content == by_text.content
    assert by_id.headers["etag"] == by_text.headers["etag"]


@pytest.mark.parametrize(
    "fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
def test_audio_uploads_in_every_format(client, fmt, subtype):
    body = clip(fmt=fmt, subtype=subtype)
    r = client.post("/queries", files={"file": (f"clip.{fmt.lower()}", body, "application/octet-stream")})
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["kind"] == "audio" and answer["sample_rate"] == 44100
    assert answer["duration_s"] == pytest.approx(2.0, abs=0.1)
    again = client.post("/queries", content=body, headers={"Content-Type": f"audio/{fmt.lower()}"})
    assert again.json()["id"] == answer["id"]
    values = decode_npy(client.get("/tiles/WebMercatorQuad/3/4/2.npy", params={"query": answer["id"]}).content)
    assert np.isfinite(values).mean() > 0.5 and np.nanstd(values) > 0


def test_audio_is_resampled_to_the_bundle_rate(client):
    """One chirp recorded at 44.1 kHz and at the bundle's rate maps alike; white noise does not."""
    rate = client.app.state.service.bundle.audio_spec.sample_rate

    def values(body: bytes) -> np.ndarray:
        qid = client.post("/queries", content=body, headers={"Content-Type": "audio/flac"}).json()["id"]
        return decode_npy(client.get("/tiles/WebMercatorQuad/3/4/2.npy", params={"query": qid}).content)

    high = values(clip(rate=44100, fmt="FLAC", noise=0.0))
    native = values(clip(rate=rate, fmt="FLAC", noise=0.0))
    noise = values(clip(rate=44100, fmt="FLAC", tone=0.0, noise=0.3))
    assert np.nanmean(np.abs(high - native)) < 0.25 * np.nanmean(np.abs(high - noise))


@pytest.mark.parametrize(
    "kwargs,status,needle",
    [
        ({"json": {"text": "   "}}, 422, "must not be empty"),
        ({"json": {"text": "\u00bf?"}}, 422, "no word the text model knows"),
        ({"json": {"words": "x"}}, 422, '{"text"'),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, "not valid JSON"),
        ({"content": b"text=birdsong", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "send"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "send"),
        ({"content": b"hello"}, 415, "no Content-Type"),
        ({"content": b"RIFF\x00\x00garbage" * 10, "headers": {"Content-Type": "audio/wav"}}, 415, "cannot read"),
        ({"content": b"", "headers": {"Content-Type": "audio/wav"}}, 422, "empty"),
        ({"files": {"other": ("a.wav", b"x", "audio/wav")}}, 422, "takes only 'text' or 'file', not 'other'"),
        ({"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 422, "form"),
    ],
)
def test_bad_queries_are_4xx(client, kwargs, status, needle):
    r = client.post("/queries", **kwargs)
    assert r.status_code == status, r.text
    assert needle.lower() in r.json()["detail"].lower()


def test_limits_answer_413(client):
    too_big = client.post("/queries", content=b"\0" * 2_000_001, headers={"Content-Type": "audio/wav"})
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(40):
            yield b"\0" * 100_000

    streamed = client.post("/queries", content=chunks(), headers={"Content-Type": "audio/wav"})
    assert streamed.status_code == 413
    # 20 s of silence is a small FLAC file but over the 12 s limit: refused before decoding.
    silence = io.BytesIO()
    soundfile.write(silence, np.zeros(16000 * 20, np.float32), 16000, format="FLAC")
    assert len(silence.getvalue()) < 2_000_000
    long = client.post("/queries", content=silence.getvalue(), headers={"Content-Type": "audio/flac"})
    assert long.status_code == 413 and "12 s" in long.json()["detail"]


@pytest.mark.parametrize(
    "request_args, says",
    [
        ({"json": {"text": "birdsong", "hour": 6}}, "the JSON body takes only 'text', not 'hour'"),
        ({"json": {"text": "birdsong", "Months": 5}}, "the JSON body takes only 'text', not 'Months'"),
        (
            {"files": {"text": (None, "birdsong"), "month": (None, "5")}},
            "the form takes only 'text' or 'file', not 'month'",
        ),
        ({"json": {"text": "birdsong"}, "params": {"source": "wildlife"}}, "POST /queries takes no 'source'"),
        ({"json": {"text": "birdsong"}, "params": {"Hours": "6"}}, "POST /queries takes no 'Hours'"),
        (
            {"content": clip(), "headers": {"content-type": "audio/wav"}, "params": {"hour": "6"}},
            "POST /queries takes no 'hour'",
        ),
    ],
)
def test_a_registration_naming_metadata_is_refused_not_registered_without_it(client, request_args, says):
    """{"text": "birdsong", "hour": 6} registered birdsong and dropped the hour silently: its links
    drew the unknown-hour map where the client asked for dawn. A query is its text or recording;
    the answer says where hour, month and source go."""
    answer = client.post("/queries", **request_args)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(says)
    assert answer.json()["detail"].endswith("a query's hour, month and source go on its tile URLs (hour=6&month=5)")
    assert (
        client.get("/queries/" + record_id(client.app.state.service.bundle.id, "text", b"birdsong")).status_code == 404
    )


@pytest.mark.parametrize(
    "body, says",
    [
        ({"text": "birdsong", "Text": "rain"}, "the JSON body takes only 'text', not 'Text': did you mean 'text'?"),
        ({"text": "birdsong", "lang": "en"}, "the JSON body takes only 'text', not 'lang'"),
        ({"Text": "rain"}, "the JSON body takes only 'text', not 'Text': did you mean 'text'?"),  # text not given
        ({"texts": "rain", "lang": "en"}, "the JSON body takes only 'text', not 'texts': did you mean 'text'?"),
    ],
)
def test_another_key_is_refused_and_told_where_it_belongs_only_when_known(client, body, says):
    """The sentence on metadata is for metadata: a slip of `text` is told the name, another key
    is named alone."""
    answer = client.post("/queries", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(says) and "tile URLs" not in answer.json()["detail"]
