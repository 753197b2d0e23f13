"""POST /queries as the uploads audit found it: each test a defect that answered a wrong status, a
misleading sentence or another id for the same map, now fixed (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile

from runtime.audio import UNKNOWN_FRAMES, AudioDecodeError, decode_audio
from server.service import BODY_HOLD_S
from tests.server_support import beside_stalled_uploads, make_client


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


def flac_stream(frames: int, rate: int = 8000) -> bytes:
    """A FLAC as an encoder writing to a pipe leaves it: STREAMINFO's 36-bit count of samples 0."""
    buf = io.BytesIO()
    soundfile.write(buf, np.full(frames, 0.1, np.float32), rate, format="FLAC")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first, its fields from byte 8
    data[21] &= 0xF0  # the count's top 4 bits share byte 21 with the bits per sample
    data[22:26] = bytes(4)
    return bytes(data)


def test_a_flac_stream_of_unknown_length_is_refused_in_a_sentence_not_called_millions_of_years(client):
    """libsndfile counts a stream that declares no length as 2^63 - 1 frames: a 0.5 s clip was
    refused as "1152921504606847.0 s long", and decode_audio (the training readers') failed
    allocating an array of that many frames."""
    stream = flac_stream(4000)
    assert soundfile.info(io.BytesIO(stream)).frames == UNKNOWN_FRAMES
    for answer in (
        post_audio(client, stream, "audio/flac"),
        client.post("/queries", files={"file": ("dawn.flac", stream, "audio/flac")}),
    ):
        assert answer.status_code == 415
        assert answer.json()["detail"].startswith("it declares no length (a FLAC stream"), answer.text
    with pytest.raises(AudioDecodeError, match=r"declares no length .*: re-encode it as a file"):
        decode_audio(stream)


@pytest.mark.parametrize(
    "body, reach",
    [
        (wav(800, dtype="float32", value=1e13, subtype="FLOAT"), "1e+13"),
        (wav(800, dtype="float64", value=1e300, subtype="DOUBLE"), "1e+300"),
    ],
)
def test_audio_of_impossible_amplitude_is_422_and_named_so_even_past_float32s_range(client, body, reach):
    """Samples of 1e13 were refused 415, the status of a file that cannot be read; finite doubles
    of 1e300, infinite once decoded to float32, were refused as "non-finite samples"."""
    for answer in (post_audio(client, body), client.post("/queries", files={"file": ("x.wav", body, "audio/wav")})):
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith(f"its samples reach {reach}, where audio's are at most 1")


INVISIBLE = [
    "bird\u00adsong",  # a soft hyphen
    "bird\u200bsong",  # a zero-width space
    "\u2067birdsong\u2069",  # a right-to-left isolate and its end
    "\u202ebirdsong\u202c",  # a right-to-left override and its end
    "\ufeffbirdsong",  # a byte order mark
    "birdsong\ufe0f",  # a variation selector (emoji presentation)
    "birdsong\U000e0041",  # a tag character
]


def test_invisible_characters_name_the_same_query_id_and_tile_etag(client):
    """Unicode's format characters and variation selectors draw nothing and mean nothing to the
    map: each registered another query id, with the character kept in its text, and each q= of a
    tile another ETag and cache entry, of the same PNG. They are dropped, as the MiniLM tokenizer
    drops them; an emoji sequence's joiner too (its emoji stay, one beside the other)."""
    plain = client.post("/queries", json={"text": "birdsong"}).json()
    tile = client.get("/tiles/3/4/2.png", params={"query": plain["id"]})
    assert tile.status_code == 200
    for text in INVISIBLE:
        registered = client.post("/queries", json={"text": text})
        assert registered.status_code == 201 and registered.json()["id"] == plain["id"], text.encode()
        assert registered.json()["text"] == "birdsong"
        assert client.get("/tiles/3/4/2.png", params={"q": text}).headers["etag"] == tile.headers["etag"]
    family = "birdsong \U0001f468\u200d\U0001f469\u200d\U0001f467"
    joined = client.post("/queries", files={"text": (None, family)}).json()
    assert joined["text"] == "birdsong \U0001f468\U0001f469\U0001f467"
    assert joined["id"] == client.post("/queries", json={"text": joined["text"]}).json()["id"]
    nothing = client.post("/queries", json={"text": "\u200b\u2060"})
    assert nothing.status_code == 422 and nothing.json()["detail"] == "text must not be empty (e.g. birdsong)"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "latin-1"])
def test_a_json_body_not_in_utf8_is_refused_as_the_docs_say(client, encoding):
    """json.loads of bytes reads UTF-16 and UTF-32 by itself: such a body was registered (201),
    where docs/api.md (and RFC 8259) have JSON in UTF-8 and a body of other bytes answer 422."""
    body = '{"text": "birdsong café"}'.encode(encoding)
    answer = client.post("/queries", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "the body is not valid JSON: JSON is sent as UTF-8, not UTF-16, UTF-32 or another encoding"
    )
    bom = b"\xef\xbb\xbf" + '{"text": "birdsong café"}'.encode()  # a UTF-8 BOM RFC 8259 lets a parser take
    assert client.post("/queries", content=bom, headers={"Content-Type": "application/json"}).status_code == 201


FORM = {"Content-Type": "multipart/form-data; boundary=B"}
TEXT_PART = b'--B\r\nContent-Disposition: form-data; name="text"\r\n\r\nbirdsong\r\n'
FILE_PART = (
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="dawn.wav"\r\nContent-Type: audio/wav\r\n\r\n'
)


@pytest.mark.parametrize(
    "request_args, says",
    [
        (  # curl -F 'file=<dawn.wav': was told its bytes were not UTF-8 text
            {"files": {"file": (None, wav(800))}},
            "the form's 'file' is a text field, not a file upload: send the recording as a file part",
        ),
        (  # the same of ASCII bytes: was told to send a `text` field or a `file`
            {"files": {"file": (None, b"dawn.wav")}},
            "the form's 'file' is a text field, not a file upload: send the recording as a file part",
        ),
        (  # curl -F 'text=@words.txt': was told to send a `text` field or a `file`
            {"files": {"text": ("words.txt", b"birdsong", "text/plain")}},
            "the form's 'text' is a file upload, not a text field: send the text as a field",
        ),
        (  # cut before the closing boundary: was told to send a `text` field or a `file`
            {"content": TEXT_PART, "headers": FORM},
            "the form ends before its closing boundary: the body was cut short",
        ),
        ({"content": FILE_PART + wav(8000)[:5000], "headers": FORM}, "the form ends before its closing boundary"),
    ],
)
def test_common_form_mistakes_are_told_what_they_are(client, request_args, says):
    answer = client.post("/queries", **request_args)
    assert answer.status_code == 422 and answer.json()["detail"].startswith(says), answer.text
    whole = client.post("/queries", content=TEXT_PART + b"--B--\r\n", headers=FORM)
    assert whole.status_code == 201 and whole.json()["text"] == "birdsong"


@pytest.fixture(scope="module")
def small_uploads(bundle_path, store_path):
    """Uploads of at most 0.1 MB: four bodies of 100 kB fill a worker's budget of 4 x 104,857 bytes."""
    with make_client(bundle_path, store_path, max_upload_mb=0.1) as client:
        yield client


UPLOAD = wav(50_000, rate=16000)  # 100,044 bytes


def test_stalled_uploads_keep_no_text_out_and_a_refused_upload_is_told_when_to_retry(small_uploads):
    """Four uploads that sent most of their bodies and stalled filled the worker's budget, and
    every registration, a text's too (its JSON counted in the same budget), got 503 with
    `Retry-After: 5` for as long as they stalled (the 60 s body timeout). A text now has its own
    budget; an upload is told to retry when the stalled bodies may be cut."""
    service = small_uploads.app.state.service

    async def text_and_upload(http):
        return [
            await http.post("/queries", json={"text": "rain on leaves"}),
            await http.post("/queries", content=UPLOAD, headers={"Content-Type": "audio/wav"}),
        ]

    stalled, (text, upload) = asyncio.run(
        beside_stalled_uploads(small_uploads.app, UPLOAD, 100_000, 4, text_and_upload)
    )
    assert text.status_code == 201, text.text
    assert upload.status_code == 503 and upload.json()["detail"].startswith("uploads being received hold 400000 bytes")
    assert BODY_HOLD_S - 2 <= int(upload.headers["retry-after"]) <= BODY_HOLD_S  # they began 0.3 s before
    assert [r.status_code for r in stalled] == [201] * 4
    assert service.upload_bodies.held == service.json_bodies.held == 0


def test_an_upload_stalled_past_the_hold_gives_its_bytes_to_a_newer_one(small_uploads):
    """A body still arriving `hold_s` after it began holds its bytes no longer than a newer body
    needs them: the oldest stalled body is cut (408, its connection closed) and the new one goes
    through; the others, needed by none, finish."""
    service = small_uploads.app.state.service
    service.upload_bodies.hold_s = 0.2  # the default BODY_HOLD_S is 10 s

    async def upload(http):
        return await http.post("/queries", content=UPLOAD, headers={"Content-Type": "audio/wav"})

    try:
        stalled, answer = asyncio.run(beside_stalled_uploads(small_uploads.app, UPLOAD, 100_000, 4, upload))
    finally:
        service.upload_bodies.hold_s = BODY_HOLD_S
    assert answer.status_code == 201, answer.text
    assert sorted(r.status_code for r in stalled) == [201, 201, 201, 408]
    (cut,) = (r for r in stalled if r.status_code == 408)
    assert cut.json()["detail"] == (
        "the body was still arriving 0.2 s after it began while newer uploads needed the memory it held: "
        "send it again, whole within 0.2 s"
    )
    assert cut.headers["connection"] == "close" and service.upload_bodies.held == 0
