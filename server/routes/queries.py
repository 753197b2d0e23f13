"""Queries: `POST /queries` (a text, or an audio upload) -> a deterministic id for tile URLs;
`GET /queries/{id}`."""
from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from server.engine import QueryEmbedding
from server.http import errors
from server.queries import QueryRecord, is_query_id
from server.routes.deps import ServiceDep, SettingsDep
from server.service import SoundscapeService

router = APIRouter(tags=["queries"])
AUDIO_TYPES = ("audio/", "application/octet-stream")
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["text"],
                                    "properties": {"text": {"type": "string", "maxLength": 500}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "text": {"type": "string"}, "file": {"type": "string", "format": "binary"}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}},
}}}


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the upload is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def parse_form(request: Request, body: bytes) -> tuple[str | None, bytes | None]:
    """(text, audio bytes) of a multipart form with a `text` field or a `file` upload."""
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise HTTPException(422, f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    text = form.get("text")
    if isinstance(upload, UploadFile):
        return None, await upload.read()
    if isinstance(text, str):
        return text, None
    raise HTTPException(422, "the form needs a `text` field or a `file` audio upload")


async def describe(service: SoundscapeService, record: QueryRecord, embedding: QueryEmbedding, base: str) -> dict:
    """The query's facts, its score range (a good `rescale`) and its links."""
    lo, hi = await service.run(service.engine.score_range, embedding)
    tiles = f"{base}/tiles/{{z}}/{{x}}/{{y}}.png?query={record.id}"
    return {**{k: v for k, v in vars(record).items() if v is not None}, "uncertainty": embedding.s,
            "score_range": [round(lo, 6), round(hi, 6)],
            "links": {"self": f"{base}/queries/{record.id}", "tiles": tiles,
                      "tilejson": f"{base}/tilejson.json?query={record.id}",
                      "wmts": f"{base}/WMTSCapabilities.xml?query={record.id}"}}


@router.post("/queries", status_code=201, openapi_extra=REQUEST_BODY,
             responses=errors(413, 415, 422, 503, notes={422: "Empty or malformed query."}))
async def register(request: Request, service: ServiceDep, settings: SettingsDep) -> JSONResponse:
    """Register a text (`{"text": ...}`) or an audio clip (multipart `file`, or a raw `audio/*`
    body); answers the query's id, the same for the same bundle and normalised input."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type in ("application/json", "multipart/form-data") or content_type.startswith(AUDIO_TYPES)):
        raise HTTPException(415, f"send application/json {{\"text\": ...}}, multipart/form-data or an "
                                 f"audio/* body, not {content_type or 'no Content-Type'!r}")
    body = await read_capped(request, settings.max_upload_bytes)
    text, audio = None, None
    if content_type == "application/json":
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(422, "the body is not valid JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise HTTPException(422, 'the JSON body must be {"text": "..."}')
        text = payload["text"]
    elif content_type == "multipart/form-data":
        text, audio = await parse_form(request, body)
    else:
        audio = body
    record, embedding = await (service.text_query(text) if text is not None else service.audio_query(audio))
    base = str(request.base_url).rstrip("/")
    return JSONResponse(await describe(service, record, embedding, base), status_code=201,
                        headers={"Location": f"{base}/queries/{record.id}"})


@router.get("/queries/{query_id}", responses=errors(404, 422, 503, notes={404: "Unknown query id."}))
async def get_query(query_id: str, request: Request, service: ServiceDep, settings: SettingsDep) -> JSONResponse:
    """A registered query: its kind, normalised text or audio facts, uncertainty and links."""
    if not is_query_id(query_id):
        raise HTTPException(404, f"{query_id!r} is not a query id (16 hex digits from POST /queries)")
    record, embedding = await service.resolve(query_id)
    return JSONResponse(await describe(service, record, embedding, str(request.base_url).rstrip("/")),
                        headers={"Cache-Control": settings.cache_control})
