"""`soundscape pack`: a map's tiles in one MBTiles file, byte for byte the tiles the server
serves, read back by GDAL's MBTiles driver, or in a PMTiles archive, read back by Protomaps'
pmtiles.js in Chromium as a web map reads it; an interrupted run resumes to the same file; a
map, box or file it cannot make is refused in one sentence, leaving every file as it was."""

import base64
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from runtime.files import lock_file, unlock_file
from server.pack import tile_ranges
from server.routes.viewer import STATIC
from tests.server_support import REPO, make_client, png_difference, soundscape_here, tile_differences
from tests.test_doc_snippets import _drawn, _page, code_block, run_on_a_maplibre_map
from tests.test_server_collections import rgba
from tests.test_viewer import ARGS, CHROMIUM

PMTILES_JS = REPO / "tests" / "assets" / "pmtiles" / "pmtiles.js"
QUERY = {"q": "birdsong", "hour": "6"}
MAPLIBRE_SNIPPET = (
    "MapLibre GL JS over a PMTiles archive on a static web host (pmtiles.js, npm package `pmtiles`, on the page):"
)
MAP = "q=birdsong&hour=6"


def pack(bundle_path, store_path, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`soundscape pack` as a user runs it, with a query registry of its own."""
    command = [sys.executable, "-m", "cli.main", "pack", "--bundle", str(bundle_path), "--store", str(store_path)]
    command += ["--query-db", str(tmp_path / "queries.sqlite"), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`pack` as above, run by the CLI's main in this process (for its refusals)."""
    argv = ["pack", "--bundle", str(bundle_path), "--store", str(store_path)]
    return soundscape_here(monkeypatch, capfd, [*argv, "--query-db", str(tmp_path / "queries.sqlite"), *args])


def tiles_of(path) -> dict[tuple[int, int, int], bytes]:
    """The file's tiles by XYZ (z, x, y): MBTiles counts rows from the bottom."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    return {(z, x, (1 << z) - 1 - row): data for z, x, row, data in rows}


def metadata_of(path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, value FROM metadata"))


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def packed_once(bundle_path, store_path, folder, name: str) -> tuple:
    """MAP packed with the defaults into `folder / name`: its path and what the command said."""
    done = pack(bundle_path, store_path, folder, MAP, str(folder / name))
    assert done.returncode == 0, done.stderr
    return folder / name, done.stdout


@pytest.fixture(scope="module")
def packed(bundle_path, store_path, tmp_path_factory):
    """The map of birdsong at 6 h over the store's bounds and zooms (the defaults)."""
    return packed_once(bundle_path, store_path, tmp_path_factory.mktemp("pack"), "birdsong.mbtiles")


def test_the_file_holds_the_served_tiles_of_the_map_and_its_legend(packed, client):
    path, said = packed
    tilejson = client.get("/tilejson.json", params=QUERY).json()
    zooms = range(tilejson["minzoom"], tilejson["maxzoom"] + 1)
    expected = {(t.z, t.x, t.y) for t in mercantile.tiles(*tilejson["bounds"], zooms=zooms)}
    tiles = tiles_of(path)
    assert set(tiles) == expected and len(expected) > 1
    for z, x, y in sorted(expected):
        served = client.get(f"/tiles/{z}/{x}/{y}.png", params=QUERY).content
        assert tiles[(z, x, y)] == served, ((z, x, y), png_difference(tiles[(z, x, y)], served))
    metadata = metadata_of(path)
    assert metadata["name"] == tilejson["name"] and metadata["description"] == tilejson["description"]
    assert metadata["attribution"] == tilejson["attribution"] and metadata["format"] == "png"
    assert (int(metadata["minzoom"]), int(metadata["maxzoom"])) == (zooms[0], zooms[-1])
    assert [float(v) for v in metadata["bounds"].split(",")] == pytest.approx(tilejson["bounds"])
    assert f"{len(expected)} tiles" in said and not path.with_name(path.name + ".partial").exists()


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="GDAL is installed by scripts/test.sh")
def test_gdal_reads_the_packed_tiles(packed):
    path, _ = packed
    info = subprocess.run(["gdalinfo", str(path)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "Driver: MBTiles/MBTiles" in info.stdout, info.stderr
    assert f"name={metadata_of(path)['name']}" in info.stdout
    tiles = tiles_of(path)
    top = max(z for z, _, _ in tiles)
    with rasterio.open(path) as opened:  # through GDAL's MBTiles driver, at the finest zoom: the bounds' pixels
        left, bottom, right, upper = opened.bounds
        inside = [
            (x, y)
            for z, x, y in tiles
            if z == top
            and left - 1e-6 <= mercantile.xy_bounds(x, y, z).left
            and mercantile.xy_bounds(x, y, z).right <= right + 1e-6
            and bottom - 1e-6 <= mercantile.xy_bounds(x, y, z).bottom
            and mercantile.xy_bounds(x, y, z).top <= upper + 1e-6
        ]
        assert inside, "a tile lies wholly in the raster"
        for x, y in inside:
            box = mercantile.xy_bounds(x, y, top)
            window = from_bounds(*box, transform=opened.transform).round_offsets().round_lengths()
            assert np.array_equal(opened.read(window=window), rgba(tiles[(top, x, y)])), (top, x, y)


def read_with_pmtiles_js(archive: bytes, tiles: list[tuple[int, int, int]]) -> dict:
    """The archive's header, metadata and `tiles` as pmtiles.js reads them in Chromium (from a
    File, as from any static web host: the same range reads)."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.add_script_tag(content=PMTILES_JS.read_text(encoding="utf-8"))
        read = page.evaluate(
            """async ([b64, tiles]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const archive = new pmtiles.PMTiles(new pmtiles.FileSource(new File([bytes], "map.pmtiles")));
            const header = await archive.getHeader();
            const found = {};
            for (const [z, x, y] of tiles) {
                const tile = await archive.getZxy(z, x, y);
                found[`${z}/${x}/${y}`] = tile ? Array.from(new Uint8Array(tile.data)) : null;
            }
            return {minZoom: header.minZoom, maxZoom: header.maxZoom, tileType: header.tileType,
                    metadata: await archive.getMetadata(), tiles: found};
        }""",
            [base64.b64encode(archive).decode(), tiles],
        )
        browser.close()
    return read


def test_a_pmtiles_archive_holds_the_same_tiles_for_pmtiles_js(packed, bundle_path, store_path, tmp_path):
    whole, _ = packed
    out = tmp_path / "birdsong.pmtiles"
    done = pack(bundle_path, store_path, tmp_path, MAP, str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if "birdsong" in p.name) == ["birdsong.pmtiles"]
    expected = tiles_of(whole)
    read = read_with_pmtiles_js(out.read_bytes(), sorted(expected))
    zooms = sorted({z for z, _, _ in expected})
    assert (read["minZoom"], read["maxZoom"], read["tileType"]) == (zooms[0], zooms[-1], 2)  # 2: PNG
    assert read["metadata"]["name"] == metadata_of(whole)["name"]
    assert read["metadata"]["description"] == metadata_of(whole)["description"]
    found = {tuple(int(v) for v in k.split("/")): bytes(v) for k, v in read["tiles"].items()}
    assert found == expected, tile_differences(found, expected)


def test_maplibre_draws_the_archive_as_the_docs_say(packed, bundle_path, store_path, tmp_path):
    """docs/api.md's MapLibre snippet, with the archive at its URL on a host that answers range
    requests (Playwright stands in for it): every request is a range, and the map is drawn."""
    from playwright.sync_api import sync_playwright

    out = tmp_path / "birdsong.pmtiles"
    assert pack(bundle_path, store_path, tmp_path, MAP, str(out)).returncode == 0
    archive = out.read_bytes()
    snippet = code_block(MAPLIBRE_SNIPPET, "js")
    url = re.search(r"pmtiles://(\S+\.pmtiles)", snippet).group(1)
    ranges = []

    def host(route) -> None:
        first, last = (int(v) for v in re.fullmatch(r"bytes=(\d+)-(\d+)", route.request.headers["range"]).groups())
        ranges.append((first, last))
        headers = {"Content-Range": f"bytes {first}-{min(last, len(archive) - 1)}/{len(archive)}"}
        headers |= {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Range, ETag"}
        route.fulfill(status=206, headers=headers, body=archive[first : last + 1])

    with sync_playwright() as pw:
        browser, page, _ = _page(pw, url)
        page.route(url, host)
        page.add_script_tag(content=(STATIC / "maplibre" / "maplibre-gl.js").read_text(encoding="utf-8"))
        page.add_script_tag(content=PMTILES_JS.read_text(encoding="utf-8"))
        run_on_a_maplibre_map(page, snippet)
        drawn = _drawn(page)
        browser.close()
    assert ranges and all(last - first < len(archive) for first, last in ranges)
    assert drawn > 0.05, "the heatmap is drawn over the page"


def test_an_interrupted_pack_resumes_to_the_same_file(packed, bundle_path, store_path, tmp_path):
    whole, _ = packed
    out = tmp_path / "birdsong.mbtiles"
    partial = tmp_path / "birdsong.mbtiles.partial"
    shutil.copy(whole, partial)  # what a run stopped after some batches leaves: some tiles, committed
    with sqlite3.connect(partial) as db:
        gone = db.execute("DELETE FROM tiles WHERE (zoom_level + tile_column + tile_row) % 2 = 0").rowcount
    assert gone > 0
    done = pack(bundle_path, store_path, tmp_path, MAP, str(out))
    assert done.returncode == 0, done.stderr
    assert f"({gone} made by this run)" in done.stdout
    assert tiles_of(out) == tiles_of(whole), tile_differences(tiles_of(out), tiles_of(whole))
    assert not partial.exists()


def test_a_second_pack_of_one_file_at_once_is_refused_in_a_sentence(bundle_path, store_path, tmp_path):
    """Two packs of one OUT wrote one .partial at once: one died with sqlite3's traceback (a
    GeoTIFF's with a bare errno), leaving .partial and .converting files of PMTiles behind."""
    out = tmp_path / "map.pmtiles"
    lock = tmp_path / ".map.pmtiles.lock"
    held = lock_file(lock, wait=False)  # what the first pack holds while it writes
    try:
        done = pack(bundle_path, store_path, tmp_path, MAP, str(out), "--zooms", "0")
    finally:
        unlock_file(lock, held)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"another pack is writing {out}; wait for it to finish" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if "map" in p.name) == []
    assert pack(bundle_path, store_path, tmp_path, MAP, str(out), "--zooms", "0").returncode == 0


def test_webp_tiles_over_a_box_across_the_antimeridian(bundle_path, store_path, tmp_path, caplog):
    out = tmp_path / "pacific.mbtiles"
    done = pack(bundle_path, store_path, tmp_path, "q=waves&tile_format=webp", str(out), "--zooms", "0-2",
                "--bbox", "170,-10,-170,10")  # fmt: skip
    assert done.returncode == 0, done.stderr
    tiles = tiles_of(out)
    east = {(t.z, t.x, t.y) for t in mercantile.tiles(170, -10, 180, 10, zooms=[0, 1, 2])}
    west = {(t.z, t.x, t.y) for t in mercantile.tiles(-180, -10, -170, 10, zooms=[0, 1, 2])}
    assert set(tiles) == east | west and all(body[:4] == b"RIFF" and body[8:12] == b"WEBP" for body in tiles.values())
    # every longitude in `bounds` (readers take west > east for no box), the box itself in soundscape_map
    assert metadata_of(out)["format"] == "webp" and metadata_of(out)["bounds"] == "-180,-10,180,10"
    assert json.loads(metadata_of(out)["soundscape_map"])["bbox"] == [170, -10, -170, 10]
    with caplog.at_level(logging.WARNING, logger="rasterio"), rasterio.open(out) as opened:  # GDAL's MBTiles driver
        assert opened.driver == "MBTiles"
    assert not [r.message for r in caplog.records if "bounds" in r.message]  # GDAL took the bounds as written


def test_a_registered_query_packs_as_its_id_serves(bundle_path, store_path, tmp_path):
    """An id from POST /queries (an uploaded recording's, or a text's) names the map, through the
    registry the server keeps (--query-db here; Redis with --redis-url)."""
    served = make_client(bundle_path, store_path, query_db=str(tmp_path / "queries.sqlite"))
    query = served.post("/queries", json={"text": "frogs croaking at night"}).json()["id"]
    out = tmp_path / "frogs.mbtiles"
    done = pack(bundle_path, store_path, tmp_path, f"query={query}&month=7", str(out), "--zooms", "0-1")
    assert done.returncode == 0, done.stderr
    tiles = tiles_of(out)
    bounds = served.get("/tilejson.json", params={"query": query}).json()["bounds"]
    assert set(tiles) == {(t.z, t.x, t.y) for t in mercantile.tiles(*bounds, zooms=[0, 1])}
    for (z, x, y), body in tiles.items():
        assert body == served.get(f"/tiles/{z}/{x}/{y}.png", params={"query": query, "month": 7}).content


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["q="], "q: text must not be empty"),
        (["q=birdsong&hour=25"], "hour must be an integer in 0..23, not '25'"),
        (["q=birdsong&hours=6"], "'hours' is not a parameter of this route: did you mean 'hour'?"),
        (["query=0123456789abcdef"], "queries.sqlite: no such file; a query= id is read from the file serve keeps"),
        (["q=birdsong&tile_format=npy"], "tile_format must be one of png, webp, not 'npy'"),
        (["q=birdsong", "--zooms", "0-14"], "over --max-tiles 100000: narrow --zooms or --bbox"),
        (["q=birdsong", "--zooms", "0-99"], "argument --zooms: zooms must lie in 0..24"),
        (["q=birdsong", "--bbox", "10,50,20"], "argument --bbox: bbox must be four numbers"),
        ([""], "no tile parameters in ''"),
    ],
)
def test_a_map_it_cannot_make_is_one_sentence_and_no_file(
    bundle_path, store_path, tmp_path, monkeypatch, capfd, args, sentence
):
    out = tmp_path / "map.mbtiles"
    done = pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, args[0], str(out), *args[1:])
    assert done.returncode == 2 and sentence in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not out.with_name("map.mbtiles.partial").exists()


@pytest.mark.slow
def test_files_already_there_are_kept(packed, bundle_path, store_path, tmp_path, monkeypatch, capfd):
    whole, _ = packed
    out, partial = tmp_path / "map.mbtiles", tmp_path / "other.mbtiles.partial"
    shutil.copy(whole, out)
    shutil.copy(whole, partial)
    before = out.read_bytes()
    done = pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, "q=rain", str(out))
    assert done.returncode == 2 and "map.mbtiles exists: give another path, or --overwrite" in done.stderr
    # --overwrite keeps the old file until the new one is complete: a refused map replaces nothing
    done = pack_here(
        monkeypatch, capfd, bundle_path, store_path, tmp_path, "q=rain", str(out), "--overwrite", "--zooms", "0-14"
    )
    assert done.returncode == 2 and "over --max-tiles" in done.stderr and out.read_bytes() == before
    # the part of another map is neither resumed nor replaced
    done = pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, "q=rain", str(tmp_path / "other.mbtiles"))
    assert done.returncode == 2 and "holds part of another map" in done.stderr
    assert tiles_of(partial) == tiles_of(whole)
    done = pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, "q=rain", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert metadata_of(out)["name"].endswith("rain") and not out.with_name("map.mbtiles.partial").exists()


def test_a_missing_folder_or_a_foreign_partial_is_one_sentence(bundle_path, store_path, tmp_path, monkeypatch, capfd):
    done = pack_here(
        monkeypatch, capfd, bundle_path, store_path, tmp_path, MAP, str(tmp_path / "nowhere" / "map.mbtiles")
    )
    assert done.returncode == 2 and f"there is no folder {tmp_path / 'nowhere'} to write map.mbtiles in" in done.stderr
    foreign = tmp_path / "map.mbtiles.partial"
    foreign.write_text("notes, not tiles", encoding="utf-8")
    done = pack_here(monkeypatch, capfd, bundle_path, store_path, tmp_path, MAP, str(tmp_path / "map.mbtiles"))
    assert done.returncode == 2 and "cannot write the MBTiles file" in done.stderr and "Traceback" not in done.stderr
    assert foreign.read_text(encoding="utf-8") == "notes, not tiles" and not (tmp_path / "map.mbtiles").exists()


@pytest.mark.slow
def test_an_unwritable_folder_or_a_registry_that_is_no_database_is_one_sentence(bundle_path, store_path, tmp_path):
    """Both were tracebacks (exit 1): sqlite3's 'unable to open database file', and the registry's
    OSError, which serve already said in a sentence."""
    notes = tmp_path / "notes.txt"
    notes.write_text("notes, not queries", encoding="utf-8")
    done = pack(bundle_path, store_path, tmp_path, MAP, str(tmp_path / "map.mbtiles"), "--query-db", str(notes))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot open the query registry {notes}: file is not a database" in done.stderr
    assert notes.read_text(encoding="utf-8") == "notes, not queries"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        unprivileged = ["setpriv", "--bounding-set", "-dac_override"] if os.geteuid() == 0 else []
        command = [*unprivileged, sys.executable, "-m", "cli.main", "pack", "--bundle", str(bundle_path)]
        command += ["--store", str(store_path), MAP, str(locked / "map.mbtiles")]
        command += ["--query-db", str(tmp_path / "queries.sqlite")]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot write the MBTiles file {locked / 'map.mbtiles.partial'}" in done.stderr
    assert not list(locked.iterdir())


@pytest.mark.parametrize(
    "box",
    [
        (-180, -85, 180, 85),
        (-12, 28, 36, 62),
        (170, -10, -170, 10),
        (179.9, -5, -179.9, 5),
        (10, 60, -10, 70),
        (0, 0, 0.001, 0.001),
        (-20, -90, 20, 90),
        (179, 0, 180, 1),
    ],
)
def test_tile_ranges_count_the_tiles_mercantile_lists(box):
    west, south, east, north = box
    for z in range(8):
        found = [t for r in tile_ranges(box, [z]) for t in r.tiles()]
        if west < east:
            listed = set(mercantile.tiles(west, south, east, north, zooms=[z]))
        else:
            listed = set(mercantile.tiles(west, south, 180, north, zooms=[z]))
            listed |= set(mercantile.tiles(-180, south, east, north, zooms=[z]))
        assert len(found) == len(set(found)) == sum(len(r) for r in tile_ranges(box, [z]))
        assert set(found) == {(t.z, t.x, t.y) for t in listed}, (box, z)
