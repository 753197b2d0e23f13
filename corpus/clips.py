"""Real labelled clips for each sound class, and the clip bank the mixtures are rendered from.

`CATALOGUE` maps each sound class to files of the audio assets (by glob pattern). `build_bank`
decodes them once, downmixes to mono, resamples to one rate and stores them peak-normalised as
int16 in one array (clips.npy) with a table (clips.json) of where each clip starts, its class,
its loudness gain and its credit. Rendering a sample then needs no decoding at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from corpus.rules import CLASSES
from runtime.audio import decode_audio, resample
from runtime.files import atomic_write

SAMPLE_RATE = 44100  # aisfx's rate; the bank and every rendered sample use it
TARGET_RMS = 0.1  # each clip's gain brings it to this RMS, so layer gains are comparable

# class -> asset -> glob patterns (relative to the asset folder).
CATALOGUE: dict[str, dict[str, tuple[str, ...]]] = {
    "birds": {
        "0ad-data": ("audio/ambient/dayscape/day_temperate_*.ogg",),
        "wesnoth-1.16-data": ("ambient/birds*.ogg", "ambient/morning.ogg"),
    },
    "tropical_forest": {
        "0ad-data": ("audio/ambient/dayscape/day_tropical_*.ogg", "audio/actor/fauna/animal/peacock_call_*.ogg"),
        "openttd-opensfx": ("opensfx/66.wav", "opensfx/68.wav", "opensfx/72.wav"),
    },
    "night_insects": {"wesnoth-1.16-data": ("ambient/night.ogg",)},
    "owl": {"gcompris-qt-data": ("explore_farm_animals/owl.ogg",)},
    "traffic": {
        "openttd-opensfx": ("opensfx/25.wav", "opensfx/26.wav", "opensfx/27.wav", "opensfx/28.wav", "opensfx/35.wav"),
        "gcompris-qt-data": ("memory-sound/LRStartAndStopCarEngine1LACut.ogg",),
    },
    "trains": {
        "openttd-opensfx": ("opensfx/04.wav", "opensfx/10.wav", "opensfx/14.wav", "opensfx/65.wav", "opensfx/71.wav"),
        "gcompris-qt-data": ("memory-sound/LRTrain_slowing_down_01_LA_cut.ogg",),
    },
    "aircraft": {
        "openttd-opensfx": ("opensfx/08.wav", "opensfx/09.wav", "opensfx/24.wav", "opensfx/59.wav", "opensfx/61.wav")
    },
    "market": {"0ad-data": ("audio/ambient/building/amb_trade_*.ogg",)},
    "industry": {
        "openttd-opensfx": ("opensfx/03.wav", "opensfx/11.wav", "opensfx/33.wav", "opensfx/40.wav"),
        "gcompris-qt-data": ("memory-sound/LRFactory_noise_*.ogg",),
    },
    "harbour": {
        "0ad-data": ("audio/ambient/building/amb_port_*.ogg",),
        "openttd-opensfx": ("opensfx/06.wav", "opensfx/07.wav"),
        "gcompris-qt-data": ("watercycle/harbor*.wav",),
        "wesnoth-1.16-data": ("ambient/ship.ogg",),
    },
    "waves": {"0ad-data": ("audio/ambient/water/wavecrash_*.ogg", "audio/ambient/water/waverocky_*.ogg")},
    "sea_swell": {"0ad-data": ("audio/ambient/water/wave_*.ogg",)},
    "water": {"0ad-data": ("audio/ambient/water/river_*.ogg", "audio/ambient/water/waterfall_*.ogg")},
    "rain": {
        "0ad-data": ("audio/ambient/weather/rain_*.ogg",),
        "gcompris-qt-data": ("memory-sound/LRRain_in_garden_01_LA_cut.ogg",),
    },
    "thunder": {"0ad-data": ("audio/ambient/weather/thunder_*.ogg",)},
    "wind": {
        "0ad-data": ("audio/ambient/weather/wind_*.ogg", "audio/ambient/weather/windgust_*.ogg"),
        "openttd-opensfx": ("opensfx/52.wav", "opensfx/57.wav"),
    },
    "wind_in_leaves": {"0ad-data": ("audio/ambient/weather/windleaves_*.ogg",)},
    "snowstorm": {"0ad-data": ("audio/ambient/weather/snowstorm_*.ogg", "audio/ambient/weather/windstorm_*.ogg")},
    "farm_animals": {
        "0ad-data": (
            "audio/ambient/building/amb_farm_*.ogg",
            "audio/actor/fauna/animal/cattle_0*.ogg",
            "audio/actor/fauna/animal/chicken_*.ogg",
            "audio/actor/fauna/animal/horse_idle*.ogg",
            "audio/actor/fauna/animal/pig_1*.ogg",
            "audio/actor/fauna/animal/sheep_1*.ogg",
        ),
        "openttd-opensfx": ("opensfx/36.wav", "opensfx/37.wav", "opensfx/38.wav"),
        "gcompris-qt-data": (
            "explore_farm_animals/c[ho]*.ogg",
            "explore_farm_animals/horse.ogg",
            "explore_farm_animals/pig.ogg",
            "explore_farm_animals/sheep.ogg",
        ),
    },
    "dogs": {"gcompris-qt-data": ("explore_farm_animals/dog.ogg", "memory-sound/LRBark_*.ogg")},
    "savanna_animals": {
        "0ad-data": ("audio/actor/fauna/animal/lion_*.ogg", "audio/actor/fauna/animal/elephant_[ost]*.ogg"),
        "openttd-opensfx": ("opensfx/67.wav",),
    },
    "camels": {"0ad-data": ("audio/actor/fauna/animal/camel_*.ogg", "audio/actor/fauna/movement/camel_*.ogg")},
    "frogs": {"gcompris-qt-data": ("memory-sound/LRFrogsInPondDuringStormLACut.ogg",)},
    "water_birds": {
        "0ad-data": ("audio/actor/fauna/animal/flamingo_*.ogg",),
        "gcompris-qt-data": ("explore_farm_animals/duck.ogg",),
    },
}
assert set(CATALOGUE) == set(CLASSES), "every sound class needs a catalogue entry"
AUDIO_ASSETS: tuple[str, ...] = tuple(sorted({a for by_asset in CATALOGUE.values() for a in by_asset}))


@dataclass
class Clip:
    id: str  # "asset/relative/path"
    sound: str  # sound class
    offset: int  # first frame in the bank
    frames: int
    gain: float  # multiply the int16/32767 samples by this to reach TARGET_RMS
    credit: str


def catalogue_files(folders: dict[str, Path]) -> list[tuple[str, str, Path]]:
    """(sound class, clip id, path) of every catalogued file in the given asset folders."""
    found = []
    for sound, by_asset in CATALOGUE.items():
        for asset, patterns in by_asset.items():
            if asset not in folders:
                continue
            paths = sorted({p for pattern in patterns for p in folders[asset].glob(pattern)})
            found += [(sound, f"{asset}/{p.relative_to(folders[asset])}", p) for p in paths]
    return found


def _credits(folders: dict[str, Path]) -> dict[str, str]:
    """Per-clip credit lines where an asset has them (OpenSFX), else the asset's licence line."""
    credits = {}
    sfx = folders.get("openttd-opensfx")
    if sfx is not None:
        for line in (sfx / "catalogue.tsv").read_text(encoding="utf-8").splitlines():
            index, credit = line.split("\t", 1)
            credits[f"openttd-opensfx/opensfx/{index}.wav"] = credit
    return credits


def build_bank(folders: dict[str, Path], out: Path, progress: bool = True) -> list[Clip]:
    """Decode every catalogued clip into out/clips.npy + out/clips.json (atomic writes)."""
    from corpus.assets import ASSETS

    files = catalogue_files(folders)
    credits = _credits(folders)
    waves, clips, offset = [], [], 0
    for sound, clip_id, path in tqdm(files, desc="clip bank", unit="clip", disable=not progress):
        wave, rate = decode_audio(path)
        wave = resample(wave, rate, SAMPLE_RATE)
        peak, rms = float(np.abs(wave).max()), float(np.sqrt(np.mean(wave**2)))
        if peak <= 0 or rms <= 1e-5:
            continue  # a silent file teaches nothing
        waves.append(np.round(wave / peak * 32767).astype(np.int16))
        asset = clip_id.split("/", 1)[0]
        clips.append(
            Clip(
                clip_id,
                sound,
                offset,
                len(wave),
                peak * TARGET_RMS / rms,
                credits.get(clip_id, f"{ASSETS[asset].credit} Licence: {ASSETS[asset].licence}."),
            )
        )
        offset += len(wave)
    out.mkdir(parents=True, exist_ok=True)
    bank = np.concatenate(waves) if waves else np.zeros(0, np.int16)
    atomic_write(out / "clips.npy", lambda tmp: np.save(tmp, bank))
    (out / "clips.json").write_text(
        json.dumps({"sample_rate": SAMPLE_RATE, "clips": [asdict(c) for c in clips]}, indent=0), encoding="utf-8"
    )
    return clips


HELD_OUT_SHARE = 0.3  # of each class's recordings, never heard in training (the recording-held-out split)
POOLS = ("train", "held_out")


@dataclass(frozen=True)
class Recording:
    """A stretch of one clip that a sample's layer may draw from."""

    clip: int  # index into the clip table
    start: int  # first frame of the stretch inside the clip
    frames: int


def split_recordings(clips: list[Clip], seed: int) -> dict[str, dict[str, list[Recording]]]:
    """{pool: {sound class: recordings}} for POOLS: per class, HELD_OUT_SHARE of the clips (at
    least one, at random from the seed) go to "held_out" and the rest to "train", so held-out
    samples can mix recordings that training never heard. A class with a single clip cannot be
    split by recording: its clip is cut in two halves in time, the first for training, the second
    held out (a new stretch of the same recording, which docs/corpus.md names)."""
    rng = np.random.default_rng([seed, 1])
    pools: dict[str, dict[str, list[Recording]]] = {pool: {c: [] for c in CLASSES} for pool in POOLS}
    for sound in CLASSES:
        ids = [i for i, c in enumerate(clips) if c.sound == sound]
        if len(ids) == 1:
            half = clips[ids[0]].frames // 2
            pools["train"][sound] = [Recording(ids[0], 0, half)]
            pools["held_out"][sound] = [Recording(ids[0], half, clips[ids[0]].frames - half)]
        elif ids:
            held = set(rng.permutation(ids)[: max(1, round(HELD_OUT_SHARE * len(ids)))].tolist())
            for i in ids:
                pools["held_out" if i in held else "train"][sound].append(Recording(i, 0, clips[i].frames))
    return pools


def load_bank(folder: Path) -> tuple[np.ndarray, list[Clip], int]:
    """(int16 bank, memory-mapped; clips; sample rate)."""
    table = json.loads((folder / "clips.json").read_text(encoding="utf-8"))
    return np.load(folder / "clips.npy", mmap_mode="r"), [Clip(**c) for c in table["clips"]], table["sample_rate"]
