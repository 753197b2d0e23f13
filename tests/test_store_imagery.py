"""A store names its imagery relative to itself, so a data folder moved or mounted elsewhere (a
container's /data) still serves its basemap; older stores (absolute or cwd-relative paths) still
resolve; a missing imagery gives one warning naming the path and SOUNDSCAPE_IMAGERY, and a 404."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from precompute.merge import merge
from precompute.run import run
from runtime.bundle import Bundle
from runtime.files import json_sha256
from runtime.imagery import Imagery
from server.service import store_imagery
from store.format import MANIFEST_FILE, STORE_FORMAT_VERSION, StoreError, content_id
from store.reader import Store
from store.verify import verify_store
from tests.conftest import FIXTURE_BBOX
from tests.server_support import LAND_TILE, make_client

BASEMAP = "/basemap/{}/{}/{}.webp".format(*LAND_TILE)


@pytest.fixture(scope="module")
def built(bundle_path, imagery_path, tmp_path_factory) -> Path:
    """data/{imagery/europe.tif, store/} as `soundscape demo` lays it out (level 3 only: quick)."""
    data = tmp_path_factory.mktemp("built") / "data"
    (data / "imagery").mkdir(parents=True)
    shutil.copy(imagery_path, data / "imagery" / "europe.tif")
    run(
        Imagery(str(data / "imagery" / "europe.tif")),
        Bundle(bundle_path),
        [3],
        FIXTURE_BBOX,
        data / "store",
        progress=False,
    )
    return data


def _copy(data: Path, to: Path) -> Path:
    shutil.copytree(data, to)
    return to


def _rewrite_imagery(store: Path, record: dict) -> None:
    """Give the store the imagery record an older precompute wrote (and a matching id)."""
    manifest = json.loads((store / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["imagery"] = {k: v for k, v in {**manifest["imagery"], **record}.items() if v is not None}
    manifest["id"] = content_id(manifest)
    (store / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def test_manifest_records_imagery_relative_to_the_store(built) -> None:
    imagery = Store(built / "store").manifest["imagery"]
    assert imagery["path"] == "../imagery/europe.tif"
    assert imagery["absolute"] == str((built / "imagery" / "europe.tif").resolve())


def test_moved_data_folder_serves_its_basemap(built, bundle_path, tmp_path, monkeypatch) -> None:
    """The container's case: the folder appears under another root, the build-time path is gone."""
    mounted = _copy(built, tmp_path / "mnt" / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _rewrite_imagery(mounted / "store", {"absolute": str(tmp_path / "gone" / "europe.tif")})  # the hint can't help
    assert store_imagery(Store(mounted / "store")) == str((mounted / "imagery" / "europe.tif").resolve())
    with make_client(bundle_path, mounted / "store") as client:
        response = client.get(BASEMAP)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"


@pytest.mark.parametrize("old", ["absolute", "cwd", "parent"])
def test_older_stores_still_resolve(built, tmp_path, monkeypatch, old) -> None:
    data = _copy(built, tmp_path / "host" / "data")
    tif = data / "imagery" / "europe.tif"
    recorded = {"absolute": str(tif), "cwd": "data/imagery/europe.tif", "parent": "data/imagery/europe.tif"}[old]
    _rewrite_imagery(data / "store", {"path": recorded, "absolute": None})
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "host" if old == "cwd" else tmp_path / "other")
    assert store_imagery(Store(data / "store")) == str(tif.resolve())


def test_one_build_in_two_folders_has_one_id(built, bundle_path, tmp_path) -> None:
    """The id names what a store holds, not where its imagery lay: the same build in another
    data folder (another checkout, a container's volume) gets the same id, so the same ETags."""
    data = tmp_path / "another" / "checkout" / "data"
    (data / "imagery").mkdir(parents=True)
    shutil.copy(built / "imagery" / "europe.tif", data / "imagery" / "europe.tif")
    tif = data / "imagery" / "europe.tif"
    run(Imagery(str(tif)), Bundle(bundle_path), [3], FIXTURE_BBOX, data / "store", progress=False)
    here, there = Store(built / "store"), Store(data / "store")
    assert here.manifest["format_version"] == there.manifest["format_version"] == STORE_FORMAT_VERSION
    assert here.manifest["imagery"]["absolute"] != there.manifest["imagery"]["absolute"]
    assert here.id == there.id
    verify_store(there)
    # What the store holds is still in its id: other imagery bounds are another store.
    manifest = {**there.manifest, "imagery": {**there.manifest["imagery"], "bounds": [0, 0, 1, 1]}}
    assert content_id(manifest) != there.id


def test_format_2_stores_keep_their_ids(built, tmp_path) -> None:
    """Format 2 hashed the imagery's paths into the id: its stores still open and verify under
    the ids they were given."""
    store = _copy(built / "store", tmp_path / "v2" / "store")
    manifest = json.loads((store / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["format_version"] = 2
    manifest["id"] = json_sha256({k: v for k, v in manifest.items() if k not in ("id", "created", "run")})
    (store / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    opened = Store(store)
    verify_store(opened)
    assert opened.id != Store(built / "store").id
    elsewhere = {**manifest, "imagery": {**manifest["imagery"], "absolute": str(tmp_path / "europe.tif")}}
    assert content_id(elsewhere) != manifest["id"]


def test_unknown_store_format_is_refused_with_the_formats_read(built, tmp_path) -> None:
    store = _copy(built / "store", tmp_path / "v1" / "store")
    manifest = json.loads((store / MANIFEST_FILE).read_text(encoding="utf-8"))
    (store / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}), encoding="utf-8")
    with pytest.raises(StoreError, match=r"store format 1; this version reads 2 and 3: rebuild it"):
        Store(store)


def test_store_moved_alone_finds_imagery_where_it_was_built(built, tmp_path) -> None:
    moved = _copy(built / "store", tmp_path / "deep" / "er" / "store")
    assert store_imagery(Store(moved)) == str((built / "imagery" / "europe.tif").resolve())


def test_missing_imagery_warns_and_basemap_is_404(built, bundle_path, tmp_path, caplog) -> None:
    store = _copy(built / "store", tmp_path / "alone" / "store")
    _rewrite_imagery(store, {"absolute": str(tmp_path / "gone" / "europe.tif")})
    with caplog.at_level(logging.WARNING, logger="server.service"), make_client(bundle_path, store) as client:
        assert client.get(BASEMAP).status_code == 404
    warnings = [r.getMessage() for r in caplog.records if r.name == "server.service"]
    assert len(warnings) == 1, warnings
    assert "../imagery/europe.tif" in warnings[0] and str(store) in warnings[0]
    assert "SOUNDSCAPE_IMAGERY" in warnings[0]
    # The setting it names fixes it.
    with make_client(bundle_path, store, imagery=str(built / "imagery" / "europe.tif")) as client:
        assert client.get(BASEMAP).status_code == 200


def test_unreadable_imagery_setting_warns(built, bundle_path, tmp_path, caplog) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="server.service"),
        make_client(bundle_path, built / "store", imagery=str(tmp_path / "nope.tif")) as client,
    ):
        assert client.get(BASEMAP).status_code == 404
    warnings = [r.getMessage() for r in caplog.records if r.name == "server.service"]
    assert len(warnings) == 1 and "nope.tif" in warnings[0] and "SOUNDSCAPE_IMAGERY" in warnings[0], warnings


def test_merge_records_imagery_relative_to_the_merged_store(built, bundle_path, tmp_path) -> None:
    """Shards written at different depths agree on their imagery and the merged store finds it."""
    tif = built / "imagery" / "europe.tif"
    shards = [tmp_path / "a" / "s0", tmp_path / "b" / "c" / "s1"]
    for i, out in enumerate(shards):
        run(Imagery(str(tif)), Bundle(bundle_path), [3], FIXTURE_BBOX, out, progress=False, shard=(i, 2))
    recorded = [json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))["imagery"]["path"] for out in shards]
    assert recorded[0] != recorded[1]
    manifest = merge(shards, tmp_path / "out" / "merged")
    merged = tmp_path / "out" / "merged"
    assert (merged / manifest["imagery"]["path"]).resolve() == tif.resolve()
    assert store_imagery(Store(merged)) == str(tif.resolve())
