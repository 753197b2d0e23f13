"""Integer parameters: what OpenAPI publishes (`integer`) is what the server takes. A value is
written in plain decimal digits, one spelling per number (no sign, spaces, leading zeros,
fraction, exponent or underscores), so `tilesize=512.0` or `hour=06` is refused with a 422
naming the parameter on every route, and no two URLs of one tile differ only in how a number
is written (the fast path and the front door key on the URL)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.server_support import make_client

NOT_PLAIN = "no leading zero, sign, space or fraction"
# A value each integer parameter takes, and the values that fill each route's other path parts.
VALID = {"hour": 6, "month": 5, "tilesize": 512, "k": 5, "width": 64, "height": 8, "z": 1, "x": 1, "y": 0, "scale": 2}
VALID |= {"minzoom": 1, "maxzoom": 5, "bins": 7}
PATH = {
    "tms": "WebMercatorQuad",
    "fmt": "npy",
    "lon": "10.5",
    "lat": "47.2",
    "colormap_name": "viridis",
    "collectionId": "contrast",
}


def spellings(value: int) -> list[str]:
    """Other ways to write `value` than its decimal digits, which pydantic alone reads as numbers
    (1e1 and a fullwidth digit one it refuses too)."""
    lax = [f"{value}.0", f"0{value}", f"+{value}", f" {value}", f"{value} ", f"{value}.00", f"{value}_0"]
    return [*lax, "1e1", "\uff11"]


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def integer_parameters(client) -> list[tuple[str, str, str]]:
    """(path template, in, name) of every integer parameter of every GET operation."""
    found = []
    document = client.get("/openapi.json").json()
    for template, operations in document["paths"].items():
        for parameter in operations.get("get", {}).get("parameters", []):
            schema = parameter["schema"]
            if "$ref" in schema:  # a list the server holds, named once in components (the store's levels)
                schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            if any(s.get("type") == "integer" for s in schema.get("anyOf", [schema])):
                found.append((template, parameter["in"], parameter["name"]))
    return found


def valid(client, name: str) -> int:
    """The value `name` is given when it is not the one under test."""
    return client.app.state.service.store.maxlevel if name == "level" else VALID[name]


def request_of(client, template: str, where: str, name: str, value: str) -> tuple[str, dict]:
    """The URL and query of a valid request of `template` with `name` given as `value`."""
    values = {**PATH, **{k: str(valid(client, k)) for k in (*VALID, "level")}}
    if where == "path":
        values[name] = quote(value)
    url = template.format(**{k: v for k, v in values.items() if "{" + k + "}" in template})
    query = {"q": "birdsong"}
    if where == "query":
        query[name] = value
    return url, query


def test_every_integer_parameter_is_listed(client):
    """The table above covers every integer parameter OpenAPI publishes (a new one needs a value)."""
    names = {name for _, _, name in integer_parameters(client)}
    assert names <= {*VALID, "level"}, names
    assert {"hour", "month", "tilesize", "k", "level", "z", "x", "y", "width", "height", "bins"} <= names


def test_integer_parameters_take_their_decimal_digits(client):
    for template, where, name in integer_parameters(client):
        url, query = request_of(client, template, where, name, str(valid(client, name)))
        answer = client.get(url, params=query)
        assert answer.status_code == 200, (url, query, answer.text)


def test_integer_parameters_refuse_other_spellings_naming_the_parameter(client):
    wrong = []
    for template, where, name in integer_parameters(client):
        for value in spellings(valid(client, name)):
            url, query = request_of(client, template, where, name, value)
            answer = client.get(url, params=query)
            detail = answer.json().get("detail", "") if answer.status_code == 422 else ""
            # /tiles/{tms}/{z}/{x}/0.0 is the route of {y}.{fmt}: its format 0 is what is refused
            refused = "fmt" if template.endswith("{y}") and name == "y" and "." in value else name
            if not detail.startswith(f"{refused} must be "):
                wrong.append((template, name, value, answer.status_code, detail or answer.headers["content-type"]))
    assert not wrong, "\n".join(map(str, wrong))


def test_a_refused_spelling_says_how_to_write_the_number(client):
    answer = client.get("/tiles/WebMercatorQuad/1/1/0.png", params={"q": "birdsong", "tilesize": "512.0"})
    assert answer.status_code == 422
    assert (
        answer.json()["detail"]
        == f"tilesize must be one of 256, 512, written in plain decimal digits ({NOT_PLAIN}), not '512.0'"
    )
    answer = client.get("/tiles/WebMercatorQuad/1/1/0.png", params={"q": "birdsong", "hour": "06"})
    assert (
        answer.json()["detail"]
        == f"hour must be an integer in 0..23, written in plain decimal digits ({NOT_PLAIN}), not '06'"
    )
    answer = client.get("/tiles/WebMercatorQuad/1/1/0.png", params={"q": "birdsong", "hour": "six"})
    assert answer.json()["detail"] == "hour must be an integer in 0..23, not 'six'"  # no number: no spelling
    answer = client.get("/tiles/WebMercatorQuad/1/1/0.png", params={"q": "birdsong", "hour": "9" * 4400})
    assert answer.json()["detail"].startswith("hour must be an integer in 0..23, not '999")
