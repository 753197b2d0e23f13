"""What the internet-facing review of the HTTP surface found (docs/reliability.md, "Reviewed as
the open internet sees it"): each test failed before its fix."""

from __future__ import annotations

import json
import socket
import unicodedata

import pytest

from tests.server_support import LAND_TILE, live_server, make_client, refused

Z, X, Y = LAND_TILE
TILE = f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
POINT = "/point/10.5,47.2"
MAP = "/collections/uncertainty/map"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def test_canonically_equivalent_texts_are_one_query(client):
    """NFC and NFD spell the same text (é as one code point, or e and a combining accent): one
    query id, one ETag, one cache entry and one embedding, on q= and POST /queries alike."""
    composed, decomposed = (unicodedata.normalize(form, "café terrace") for form in ("NFC", "NFD"))
    assert composed != decomposed
    tags = {client.get(TILE, params={"q": text}).headers["etag"] for text in (composed, decomposed)}
    assert len(tags) == 1, tags
    ids = {client.post("/queries", json={"text": text}).json()["id"] for text in (composed, decomposed)}
    assert len(ids) == 1, ids
    assert client.get(f"/queries/{ids.pop()}").json()["text"] == composed


# Python's str.split() takes VT, FF, a lone CR, 1C-1F, NEL, U+2028 and U+2029 for spaces: each was
# dropped, answering 200 with the ETag of q=rain (and POST /queries 201 with its id).
@pytest.mark.parametrize(
    "char",
    ["\x00", "\x07", "\x1b", "\x7f", "\x9b", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x85", "\u2028", "\u2029"],
)
def test_a_control_character_in_a_text_is_refused(client, char):
    """A NUL or another control character is no part of a text anyone writes; taken, it named
    a query of its own for the same map (the tokenizer drops it), a cache entry per byte."""
    detail = refused(client.get(TILE, params={"q": f"rain{char}"}))
    assert detail == f"q: text holds a control character (U+{ord(char):04X}); send the text alone"
    answer = client.post("/queries", json={"text": f"rain{char}"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == f"text holds a control character (U+{ord(char):04X}); send the text alone"


def test_tabs_and_newlines_are_still_spaces(client):
    plain = client.get(TILE, params={"q": "rain on a roof"}).headers["etag"]
    assert client.get(TILE, params={"q": "rain\ton a\r\nroof"}).headers["etag"] == plain
    assert refused(client.get(TILE, params={"q": "rain\ron a roof"})).startswith("q: text holds a control character")


@pytest.mark.parametrize("value", ["1", "0", "yes", "no", "on", "off", "t", "f", "y", "n", "TRUE", "False", " true"])
def test_a_boolean_is_written_true_or_false(client, value):
    """OpenAPI publishes /search's exact as a boolean, which a client serialises true or false;
    pydantic alone also took 1, yes, on, t, y and their capitals (and 0, no, off, f, n): a dozen
    URLs of one search."""
    assert refused(client.get("/search", params={"q": "rain", "exact": value})) == (
        f"exact must be true or false, not {value!r}"
    )


def test_every_boolean_parameter_is_exact(client):
    """exact is the only boolean parameter (a new one needs the rule too)."""
    booleans = {
        (path, parameter["name"])
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        for parameter in operations.get("get", {}).get("parameters", [])
        if parameter["schema"].get("type") == "boolean"
    }
    assert booleans == {("/search", "exact")}
    for value in ("true", "false"):
        assert client.get("/search", params={"q": "rain", "exact": value}).status_code == 200


def _raw_status(base: str, request: bytes) -> tuple[int, bytes]:
    """The status and body of a raw request, sent as bytes so no client corrects it."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


def test_a_method_http_does_not_register_is_400_in_the_one_error_shape(bundle_path, store_path):
    """docs/reliability.md says so of made-up methods and of `get` in lower case: a real uvicorn
    with the hardened protocol answers them, and a registered method the route lacks is 405."""
    with live_server(bundle_path, store_path) as base:
        for method in (b"FOO", b"get", b"G3T", b"BREW"):
            status, body = _raw_status(base, method + b" /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 400, (method, status, body)
            assert json.loads(body) == {"detail": "the request is not valid HTTP/1.1"}, body
        status, _ = _raw_status(base, b"PROPFIND /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 405


@pytest.mark.parametrize(
    "path, slip, meant",
    [
        (TILE, {"Hour": "6"}, "hour"),
        (TILE, {"months": "5"}, "month"),
        (TILE, {"colormapname": "viridis"}, "colormap_name"),
        (TILE, {"layers": "uncertainty"}, "layer"),
        ("/tilejson.json", {"tile-size": "512"}, "tilesize"),
        (POINT, {"SOURCE": "wildlife"}, "source"),
        ("/search", {" k": "3"}, "k"),
        ("/search", {"limit": "3"}, "k"),  # other services' names (OGC API, STAC) too
        ("/search", {"zoom": "5"}, "level"),
        (TILE, {"text": "rain"}, "q"),
        (TILE, {"cmap": "viridis"}, "colormap_name"),  # matplotlib's
        ("/tilejson.json", {"vmax": "3"}, "rescale"),
        # a space inside the name (sent as +), and a trailing s on a name of one letter or ending in s
        (TILE, {"colormap name": "viridis"}, "colormap_name"),
        (TILE, {"tile size": "512"}, "tilesize"),
        (TILE, {"ho ur": "6"}, "hour"),
        ("/search", {"rank by": "contrast"}, "rank_by"),
        ("/tilejson.json", {"tile format": "tif"}, "tile_format"),
        ("/search", {"ks": "3"}, "k"),
        ("/search", {"Ks": "3"}, "k"),
        (MAP, {"bbox crs": "EPSG:3857"}, "bbox-crs"),
        (MAP, {"bbox-crss": "EPSG:3857"}, "bbox-crs"),
    ],
)
def test_a_slip_of_a_parameter_name_is_refused_not_ignored(client, path, slip, meant):
    """`hour` spelled `Hour` or `hours` was an unknown parameter, ignored: the unknown-hour map
    came back 200 for a user who asked for dawn. A name that is a known one but for case, a
    plural, a dash or an underscore answers 422 naming the one meant; other unknown names (a
    cache buster) stay ignored."""
    (name,) = slip
    detail = refused(client.get(path, params={"q": "rain", **slip}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: did you mean {meant!r}?")
    assert client.get(path, params={"q": "rain", "_": "1733040000", "qq": "x", "s": "1"}).status_code == 200


@pytest.mark.parametrize(
    "path, name, value, meant",
    [
        (TILE, "time", "2024-06-01T06:00:00Z", "give the moment as datetime=2024-06-01T06:00:00Z (RFC 3339)"),
        (MAP, "time", "06:00", "or the local hour of day as hour=0..23 and the month as month=1..12"),
        ("/tilejson.json", "TIME", "06:00", "hour=0..23 and the month as month=1..12"),  # WMS's, WMTS's dimension
        (POINT, "times", "6", "hour=0..23 and the month as month=1..12"),
        ("/search", "date", "2024-06-01", "give the moment as datetime="),
        (TILE, "Season", "summer", "month=1..12 (a season's months differ between the hemispheres)"),
        ("/WMTSCapabilities.xml", "Time", "2024-06-01T06:00", "datetime="),
    ],
)
def test_another_services_time_parameter_is_refused_saying_what_to_give(client, path, name, value, meant):
    """`time=` (WMS, WMTS) and `date=` were unknown parameters, ignored: a GIS user asking for 6 a.m.
    in June got the unknown hour's and month's map, 200. Refused with the parameters that draw it
    (`datetime`, OGC API's and STAC's, is one: tests/test_datetime.py); a timestamp cache buster
    (`time=1733040000`) stays ignored."""
    detail = refused(client.get(path, params={"q": "rain", name: value}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: give ") and meant in detail, detail
    for buster in ("1733040000", "1733040000123"):
        assert client.get(path, params={"q": "rain", "time": buster}).status_code == 200


@pytest.mark.parametrize("name, meant", [("hour_of_day", "hour"), ("timeOfDay", "hour"), ("month-of-year", "month")])
def test_a_longer_name_for_the_hour_or_month_is_refused_naming_ours(client, name, meant):
    detail = refused(client.get(TILE, params={"q": "rain", name: "6"}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: did you mean {meant!r}?"), detail


@pytest.mark.parametrize(
    ("raw", "name"),
    [("colormap%20name", "colormap name"), ("colormap+name", "colormap name"), ("Colormap%09Name", "Colormap\tName")],
)
def test_a_name_percent_encoded_with_a_space_is_a_slip_too(client, raw, name):
    detail = refused(client.get(f"{TILE}?q=rain&{raw}=viridis"))
    assert detail.startswith(f"{name!r} is not a parameter of this route: did you mean 'colormap_name'?"), detail
