"""Issue 16: `source=` (who recorded a sound) end to end. The bundle's sources are taken by tiles,
TileJSON, WMTS, /search and /point and change what they answer; an unknown source is a 422 that
lists the known ones; GET /metadata says what each metadata and layer value means; /point answers
per source. The fixture's bundle has two sources (tests/conftest.py: demo, field)."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest

from corpus.sources import SOURCES
from runtime.metadata import encode_metadata
from runtime.scoring import CONTRAST_WEIGHT, REFERENCE_PROMPTS, csd, logits, match_probability, uncertainty
from runtime.tiles import morton
from server.routes.meta import metadata_values
from tests.conftest import FIXTURE_SOURCE_DESCRIPTIONS
from tests.server_support import LAND_TILE, decode_npy, make_client

POINT = (10.5, 47.2)  # the Alps, inside the fixture's store


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def names(client) -> list[str]:
    names = client.app.state.service.bundle.sources.names
    assert len(names) >= 2, "the fixture bundle has two sources"
    return names


def fused_values(client, level: int, rows: np.ndarray, text: str, **meta) -> tuple[np.ndarray, np.ndarray]:
    """(match probability, contrast) of `text` at some cells of `level` under `meta`, computed here
    from the bundle's graphs, independently of the server."""
    service = client.app.state.service
    bundle, arrays = service.bundle, service.store.levels[level].arrays
    source = meta.pop("source", None)
    lonlat = np.asarray(arrays.lonlat[rows])
    encoded = encode_metadata(
        len(rows),
        lat=lonlat[:, 1],
        lon=lonlat[:, 0],
        source=None if source is None else bundle.sources.id(source),
        **meta,
    )
    mu, logvar = bundle.fuse(np.asarray(arrays.sat[rows], np.float32), encoded)
    mu, s = mu.astype(np.float16).astype(np.float32), uncertainty(logvar)  # float16 like the store
    mu_q, logvar_q = bundle.embed_texts([text, *REFERENCE_PROMPTS])
    d = np.stack([csd(m, s_q, mu, s) for m, s_q in zip(mu_q, uncertainty(logvar_q), strict=True)])
    a, b = bundle.calibration
    contrast = logits(d[0], a, b) - CONTRAST_WEIGHT * logits(d[1:], a, b).mean(axis=0)
    return match_probability(d[0], a, b), contrast


def tile(client, layer: str, **params) -> tuple[np.ndarray, str]:
    z, x, y = LAND_TILE
    answer = client.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params={"q": "birdsong", "layer": layer, **params})
    assert answer.status_code == 200, answer.text
    return decode_npy(answer.content), answer.headers["etag"]


@pytest.mark.parametrize("layer", ["heatmap", "contrast", "uncertainty"])
def test_a_tile_under_each_source_differs_from_the_unknown_source_tile(client, names, layer):
    unknown, unknown_etag = tile(client, layer)
    drawn = ~np.isnan(unknown)
    assert drawn.mean() > 0.5
    under = {}
    for name in names:
        values, etag = tile(client, layer, source=name)
        assert etag != unknown_etag
        assert np.array_equal(np.isnan(values), ~drawn), "the same cells, under another source"
        assert np.abs(values - unknown)[drawn].max() > 1e-6, f"source={name} changes the {layer} tile"
        under[name] = values
    first, second = (under[name][drawn] for name in names[:2])
    assert np.abs(first - second).max() > 1e-6, "the sources' tiles differ from each other too"


@pytest.mark.parametrize(
    "path",
    [
        "/tiles/3/4/2.png?q=birdsong",
        "/tiles/WebMercatorQuad/3/4/2.npy?layer=uncertainty",
        "/tilejson.json?q=birdsong&layer=contrast",
        "/WMTSCapabilities.xml?q=birdsong",
        "/search?q=birdsong&level=4",
        "/point/10.5,47.2?q=birdsong",
    ],
)
def test_an_unknown_source_is_a_422_that_lists_the_known_ones(client, names, path):
    answer = client.get(f"{path}&source=radio-aporee")
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith(f"source must be one of {', '.join(names)} ") and "'radio-aporee'" in detail
    assert "/metadata" in detail


def test_tilejson_and_wmts_carry_the_source(client, names):
    name = names[-1]
    doc = client.get("/tilejson.json", params={"q": "birdsong", "source": name, "layer": "contrast"}).json()
    template = doc["tiles"][0]
    assert f"source={name}" in template and "under this hour, month and source" in doc["scale"]["method"]
    z, x, y = LAND_TILE
    via_template = client.get(template.replace("{z}/{x}/{y}", f"{z}/{x}/{y}"))
    direct = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "source": name, "layer": "contrast"})
    assert via_template.headers["etag"] == direct.headers["etag"]
    wmts = client.get("/WMTSCapabilities.xml", params={"q": "birdsong", "source": name, "layer": "contrast"}).text
    templates = [part.split('"', 1)[0] for part in wmts.split('template="')[1:]]
    assert len(templates) == 3, "heatmap, contrast and uncertainty"
    assert all(f"source={name}" in t for t in templates), "every layer, S included, is drawn under the source"


def test_search_under_a_source_ranks_the_fused_level_and_reports_contrast(client, names):
    name, level = names[-1], 4
    body = client.get("/search", params={"q": "birdsong", "k": 6, "level": level, "source": name}).json()
    assert body["properties"]["source"] == name
    rows = np.arange(len(client.app.state.service.store.levels[level]))
    truth, contrast = fused_values(client, level, rows, "birdsong", source=name)
    best = np.argsort(-truth)[:6]
    found = [f["properties"] for f in body["features"]]
    assert np.allclose([f["score"] for f in found], truth[best], atol=1e-4)
    assert np.allclose([f["contrast"] for f in found], contrast[best], atol=3e-3)
    unknown = client.get("/search", params={"q": "birdsong", "k": 6, "level": level}).json()
    assert [f["properties"]["score"] for f in unknown["features"]] != [f["score"] for f in found]


def test_point_answers_per_source(client, names):
    lon, lat = POINT
    body = client.get(f"/point/{lon},{lat}", params={"q": "birdsong", "hour": 6}).json()
    by = {entry["source"]: entry for entry in body["by_source"]}
    assert list(by) == [None, *names], "the unknown source first, then the bundle's in its order"
    assert by[None]["score"] == pytest.approx(body["score"], abs=1e-6)
    assert by[None]["contrast"] == pytest.approx(body["contrast"], abs=1e-6)
    assert by[None]["uncertainty"] == pytest.approx(body["uncertainty"], rel=1e-6)

    level = client.app.state.service.store.levels[body["cell"]["level"]]
    t = mercantile.tile(lon, lat, level.level)
    row = np.flatnonzero(np.asarray(level.arrays.codes) == morton(t.x, t.y))
    for name in names:
        score, contrast = fused_values(client, level.level, row, "birdsong", hour=6, source=name)
        assert by[name]["score"] == pytest.approx(float(score[0]), abs=1e-5)
        assert by[name]["contrast"] == pytest.approx(float(contrast[0]), abs=3e-3)
        assert abs(by[name]["score"] - by[None]["score"]) > 1e-6, f"source={name} changes the score here"
        under = client.get(f"/point/{lon},{lat}", params={"q": "birdsong", "hour": 6, "source": name}).json()
        assert under["source"] == name and under["score"] == pytest.approx(by[name]["score"], abs=1e-6)
        assert under["contrast"] == pytest.approx(by[name]["contrast"], abs=1e-6)
        assert under["by_source"] == body["by_source"], "the same cell's table, whichever source was asked"
        assert under["hours"][6]["score"] == pytest.approx(by[name]["score"], abs=1e-5), "profiles follow the source"


def test_metadata_says_what_each_value_means(client, names):
    answer = client.get("/metadata")
    assert answer.status_code == 200 and answer.headers["etag"].startswith('W/"')
    assert client.get("/metadata", headers={"If-None-Match": answer.headers["etag"]}).status_code == 304
    body = answer.json()
    assert [v["value"] for v in body["source"]["values"]] == names
    # As the fixture bundle's manifest describes them: `field`, not `demo`.
    described = {v["value"]: v["description"] for v in body["source"]["values"]}
    assert described == {name: FIXTURE_SOURCE_DESCRIPTIONS.get(name) for name in names}
    assert "left out" in body["source"]["unknown"]
    for name, (lo, hi) in (("hour", (0, 23)), ("month", (1, 12))):
        assert (body[name]["min"], body[name]["max"]) == (lo, hi)
        for value, status in ((lo, 200), (hi, 200), (lo - 1, 422), (hi + 1, 422)):
            assert client.get("/tiles/0/0/0.png", params={"layer": "uncertainty", name: value}).status_code == status
    layers = body["layer"]["values"]
    assert [v["value"] for v in layers] == ["heatmap", "contrast", "uncertainty"]
    default = client.get("/tiles/3/4/2.png", params={"q": "birdsong"}).headers["etag"]
    named = client.get("/tiles/3/4/2.png", params={"q": "birdsong", "layer": body["layer"]["default"]})
    assert named.headers["etag"] == default, "the default layer is the one a tile without layer= draws"
    for layer in layers:
        without_query = client.get("/tiles/3/4/2.png", params={"layer": layer["value"]}).status_code
        assert without_query == (422 if layer["needs_query"] else 200)
        doc = client.get("/tilejson.json", params={"q": "birdsong", "layer": layer["value"]}).json()
        assert doc["scale"]["units"] == layer["description"], "the legend's units are the layer's meaning"


def test_metadata_describes_sources_in_the_bundles_order():
    described = {s.name: s.recordist for s in SOURCES[1:]}
    values = metadata_values([s.name for s in SOURCES], described)["source"]["values"]
    assert [v["description"] for v in values] == [None] + [s.recordist for s in SOURCES[1:]]
