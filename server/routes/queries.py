"""Queries: `POST /queries` (a text, or an audio upload) -> a deterministic id for tile URLs;
`GET /queries/{id}`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from contextlib import nullcontext
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse, Response
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from runtime.text import MAX_TEXT_LENGTH, TEXT_PATTERN
from server.bodies import load_json, read_capped
from server.engine import QueryEmbedding, QueryMetadata
from server.http import conditional, errors
from server.params import MAX_SENT_TEXT, slip_of
from server.queries import ID_PATTERN, QueryRecord, is_query_id
from server.routes.deps import ServiceDep, SettingsDep
from server.service import SoundscapeService
from server.urls import base_url, tile_template

router = APIRouter(tags=["queries"])
AUDIO_TYPES = ("audio/", "application/octet-stream")
# {"text": ...} with any text the schema takes (MAX_SENT_TEXT characters, each escaped as a
# \uXXXX surrogate pair: 12 bytes) fits, so a text over it answers the text's own 422.
MAX_JSON_BYTES = 12 * MAX_SENT_TEXT + 1024
MAX_JSON_DEPTH = 8
# A text as the schema states it: a word at least (not only spaces), within the length it is held
# to as sent, as q= is (the rule on its normal form, which no schema states, in words).
TEXT_SCHEMA = {
    "type": "string",
    "maxLength": MAX_SENT_TEXT,
    "pattern": TEXT_PATTERN,
    "description": f"At most {MAX_TEXT_LENGTH} characters once case-folded and single-spaced "
    f"(a JSON body holds at most {MAX_JSON_BYTES} bytes).",
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": TEXT_SCHEMA},
                    "additionalProperties": False,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"text": TEXT_SCHEMA, "file": {"type": "string", "format": "binary"}},
                    "additionalProperties": False,
                }
            },
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def parse_json_text(body: bytes) -> str:
    """The `text` of a {"text": "..."} body (read capped at MAX_JSON_BYTES); 422 with a sentence
    for anything else."""
    payload = load_json(body, MAX_JSON_DEPTH, '{"text": "..."}')
    if isinstance(payload, dict) and "text" not in payload:  # {"Text": ...}: told the name meant
        _only_known([key for key in payload if slip_of(key, ("text",))], ("text",), "the JSON body")
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise HTTPException(422, 'the JSON body must be {"text": "..."}')
    _only_known(payload, ("text",), "the JSON body")
    return payload["text"]


# A query is its text or recording alone: hour, month and source go on the URLs that draw it, so a
# registration naming them would draw the unknown-metadata map where its client asked for another.
METADATA_GOES_ON_URLS = "a query's hour, month and source go on its tile URLs (hour=6&month=5)"
METADATA_PARAMS = ("hour", "month", "source")


def _only_known(fields: Iterable[str], known: tuple[str, ...], what: str) -> None:
    """422 naming the first field of `fields` outside `known`, never dropped silently, and where
    it belongs when it is metadata or a slip of a known name (`slip_of`)."""
    other = next((name for name in fields if name not in known), None)
    if other is None:
        return
    keys = " or ".join(repr(k) for k in known)
    meant = slip_of(other, known)
    if slip_of(other, METADATA_PARAMS):
        where = f": {METADATA_GOES_ON_URLS}"
    elif meant is not None:
        where = f": did you mean {meant!r}? (names are exact)"
    else:
        where = ""
    raise HTTPException(422, f"{what} takes only {keys}, not {other[:40]!r}{where}")


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


class _BadForm(MultiPartException):
    """A form refused in a sentence of its own (starlette's say "malformed"): a field whose bytes
    are not UTF-8, another charset, a recording sent as a field, a form cut short."""


class TextFieldParser(MultiPartParser):
    """starlette's multipart parser, strict about the text of fields: starlette reads bytes that are
    not UTF-8 (or not text in an unknown charset) as Latin-1, so `-F text=caf$'\\xe9'` registered
    text nobody wrote where `q=caf%E9` answers 422. Fields are UTF-8 text, as browsers and curl
    send them (neither names a charset). A form must reach its closing boundary: starlette returns
    the parts that ended before the body did, and a form cut short was told it had no text."""

    ended = False

    async def parse(self) -> FormData:
        _, options = parse_options_header(self.headers.get("content-type", ""))
        charset = options.get(b"charset", b"utf-8").decode("latin-1")
        if charset.lower() not in ("utf-8", "utf8"):
            raise _BadForm(f"the form's charset must be UTF-8 (or left out), not {charset[:40]!r}")
        form = await super().parse()
        if not self.ended:
            raise _BadForm("the form ends before its closing boundary: the body was cut short; send the whole form")
        return form

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and part.field_name == "file":  # `-F file=<dawn.wav`: was told it was not UTF-8
            raise _BadForm(
                "the form's 'file' is a text field, not a file upload: send the recording as a file part "
                "(curl -F file=@dawn.wav; file=<dawn.wav sends its bytes as a text field)"
            )
        if part.file is None:
            try:
                part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise _BadForm(
                    f"the form's {part.field_name[:40]!r} is not UTF-8 text: send the UTF-8 bytes of each "
                    "character (é is C3 A9)"
                ) from None
        super().on_part_end()


async def parse_form(request: Request, body: bytes) -> tuple[str | None, bytes | None]:
    """(text, audio bytes) of a multipart form with a `text` field or a `file` upload."""
    try:
        form = await TextFieldParser(request.headers, _once(body), max_files=1, max_fields=4).parse()
    except _BadForm as exc:
        raise HTTPException(422, exc.message) from None
    except MultiPartException as exc:
        raise HTTPException(422, f"malformed multipart body: {exc.message}") from None
    _only_known(form.keys(), ("text", "file"), "the form")
    for name in ("file", "text"):  # of two, the last would be registered silently
        if (times := len(form.getlist(name))) > 1:
            raise HTTPException(422, f"the form gives {name} {times} times: give one text or one file")
    upload = form.get("file")
    text = form.get("text")
    if upload is not None and text is not None:  # the file would be heard, the text dropped silently
        raise HTTPException(422, "the form gives both a text and a file: register each in its own request")
    if isinstance(upload, UploadFile):
        return None, await upload.read()
    if isinstance(text, str):
        return text, None
    if text is not None:  # `-F text=@words.txt`
        raise HTTPException(
            422,
            "the form's 'text' is a file upload, not a text field: send the text as a field "
            "(curl -F text=birdsong, or -F 'text=<words.txt' to send a file's text)",
        )
    raise HTTPException(422, "the form needs a `text` field or a `file` audio upload")


async def describe(service: SoundscapeService, record: QueryRecord, embedding: QueryEmbedding, base: str) -> dict:
    """The query's facts, its score range (a good `rescale`) and its links."""
    scale = await service.scale("heatmap", record.id, embedding, QueryMetadata())
    tiles = tile_template(base, f"query={record.id}")
    return {
        **{k: v for k, v in vars(record).items() if v is not None},
        "uncertainty": embedding.s,
        "score_range": [scale.lo, scale.hi],
        "links": {
            "self": f"{base}/queries/{record.id}",
            "tiles": tiles,
            "tilejson": f"{base}/tilejson.json?query={record.id}",
            "wmts": f"{base}/WMTSCapabilities.xml?query={record.id}",
        },
    }


@router.post(
    "/queries",
    status_code=201,
    openapi_extra=REQUEST_BODY,
    responses=errors(413, 415, 422, 503, 507, notes={422: "Empty or malformed query."}),
)
async def register(request: Request, service: ServiceDep, settings: SettingsDep) -> JSONResponse:
    """Register a text (`{"text": ...}`) or an audio clip (multipart `file`, or a raw `audio/*`
    body); answers the query's id, the same for the same bundle and normalised input."""
    if asked := [name for name in request.query_params if slip_of(name, METADATA_PARAMS)]:
        raise HTTPException(422, f"POST /queries takes no {asked[0]!r}: {METADATA_GOES_ON_URLS}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type in ("application/json", "multipart/form-data") or content_type.startswith(AUDIO_TYPES)):
        raise HTTPException(
            415,
            f'send application/json {{"text": ...}}, multipart/form-data or an '
            f"audio/* body, not {content_type or 'no Content-Type'!r}",
        )
    is_json = content_type == "application/json"
    # A form or audio body may hold max_upload_bytes, a JSON one MAX_JSON_BYTES: the bytes received
    # are bounded per worker while bodies arrive (JSON and uploads apart, so uploads never keep a text
    # out), and only a few uploads are decoded at once.
    with (service.json_bodies if is_json else service.upload_bodies).body() as place:
        body = await read_capped(request, MAX_JSON_BYTES if is_json else settings.max_upload_bytes, place)
        async with nullcontext() if is_json else service.decodes.place():
            return await _register_body(request, service, content_type, body)


async def _register_body(request: Request, service: SoundscapeService, content_type: str, body: bytes) -> JSONResponse:
    """register's work once the whole body is in: the query it holds, registered and described."""
    text, audio = None, None
    if content_type == "application/json":
        text = parse_json_text(body)
    elif content_type == "multipart/form-data":
        text, audio = await parse_form(request, body)
    else:
        audio = body
    if text is not None:
        if len(text) > MAX_SENT_TEXT:  # what q= is held to as sent; a form's field may hold megabytes
            raise HTTPException(422, f"text must be a text of at most {MAX_SENT_TEXT} characters, not {len(text)}")
        record, embedding = await service.text_query(text, register=True)
    else:
        assert audio is not None  # parse_form answers 422 to a form with neither
        record, embedding = await service.audio_query(audio)
    base = base_url(request)
    return JSONResponse(
        await describe(service, record, embedding, base),
        status_code=201,
        headers={"Location": f"{base}/queries/{record.id}"},
    )


@router.get("/queries/{query_id}", responses=errors(404, 422, 503, notes={404: "Unknown query id."}))
async def get_query(
    query_id: Annotated[str, Path(json_schema_extra={"pattern": ID_PATTERN})], request: Request, service: ServiceDep
) -> Response:
    """A registered query: its kind, normalised text or audio facts, uncertainty and links."""
    if not is_query_id(query_id):
        raise HTTPException(404, f"{query_id!r} is not a query id (16 hex digits from POST /queries)")
    record, embedding = await service.resolve(query_id)
    return conditional(request, JSONResponse(await describe(service, record, embedding, base_url(request))), "document")
