"""What the readers still read wrong or not at all (docs/own-data.md): the corpus's text files
were read and written in the machine's own encoding, and the csv reader and the released
datasets' readers each checked places with their own sentences."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import pytest

from corpus.clips import _credits
from model.data import BadSample, DataError
from model.readers.csv_folder import CsvFolderConfig, parse_row
from model.readers.psm_datasets import _place
from tests.test_own_data_audit import folder, rows

REPO = Path(__file__).resolve().parent.parent


# 3. text files in UTF-8 ------------------------------------------------------------------------


def _text_calls_without_encoding(path: Path) -> list[str]:
    """'file:line' of each read_text, write_text or text-mode open() call that names no encoding."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        mode = node.args[1] if name == "open" and len(node.args) > 1 else None
        mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
        binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
        plain_open = name == "open" and isinstance(node.func, ast.Name)
        if name in ("read_text", "write_text") or (plain_open and not binary):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_readers_and_the_corpus_name_the_encoding_of_every_text_file():
    """Path.read_text() and open() read and write in the machine's encoding (cp1252 on Windows,
    ASCII under a bare C locale): a non-ASCII credit or name was read as other characters, or
    stopped a build."""
    files = sorted([*(REPO / "model" / "readers").glob("*.py"), *(REPO / "corpus").glob("*.py")])
    assert [hit for path in files for hit in _text_calls_without_encoding(path)] == []


def test_a_corpus_text_file_reads_the_same_on_a_latin_1_machine(tmp_path, monkeypatch):
    """pathlib asks io.text_encoding for the encoding it was not given: a Latin-1 machine's."""
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    credit = "Bruit de pluie \u2014 Zo\u00eb \u0141\u00f3d\u017a, CC BY 4.0"
    sfx = tmp_path / "openttd-opensfx"
    sfx.mkdir()
    (sfx / "catalogue.tsv").write_bytes(f"07\t{credit}\n".encode())
    assert _credits({"openttd-opensfx": sfx}) == {"openttd-opensfx/opensfx/07.wav": credit}


# 4. one place check ----------------------------------------------------------------------------


def _csv_reason(lat: str, lon: str) -> str:
    values = {"lat": lat, "lon": lon, "audio": "a.wav", "image": "i.png", "gsd": "10"}
    with pytest.raises(ValueError) as raised:
        parse_row(values, 2, CsvFolderConfig(root="."))
    return str(raised.value)


def _released_reason(lat: float, lon: float) -> str:
    with pytest.raises(BadSample) as raised:
        _place({"latitude": lat, "longitude": lon}, "shard.tar:x")
    return raised.value.reason


@pytest.mark.parametrize("lat, lon", [(120.0, 45.0), (45.0, 200.0), (0.0, 0.0), (-91.0, -181.0)])
def test_both_readers_refuse_a_place_in_one_sentence(lat, lon):
    """The csv reader and the released datasets' readers said it in two ways ('lat/lon',
    'latitude/longitude'), and only the csv one noticed columns swapped."""
    assert _csv_reason(str(lat), str(lon)) == _released_reason(lat, lon)
    if (lat, lon) == (120.0, 45.0):
        assert _released_reason(lat, lon).endswith("outside the globe: lat and lon swapped?")


def test_a_missing_released_place_stays_unknown():
    assert _place({"latitude": None, "longitude": math.nan}, "x") == (None, None)
    assert _place({"latitude": 45.0, "longitude": ""}, "x") == (45.0, None)


def test_a_csv_of_places_all_off_the_globe_says_so(tmp_path):
    text = "lat,lon,audio,image,gsd\n120,45,audio/0.wav,images/0.png,10\n"
    with pytest.raises(DataError, match=r"latitude/longitude \.\.\. outside the globe: lat and lon swapped\?"):
        rows(folder(tmp_path / "off", text))
