"""A user's own recordings as spreadsheets and recorders write them (docs/own-data.md): every
file here is one a real user could hand `data: {kind: csv}`, and each test checks that it is
read as meant, or refused in one sentence (a skipped row with its reason, or a DataError), never
read as something else without a word."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from PIL import Image

from cli.main import main as soundscape
from model.data import DataError, reader
from runtime.imagery import Imagery


def wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def folder(root: Path, table: str | bytes, n: int = 4) -> Path:
    """audio/0..n-1.wav and images/0..n-1.png (20 px), and `table` as samples.csv."""
    (root / "audio").mkdir(parents=True)
    (root / "images").mkdir()
    for i in range(n):
        (root / "audio" / f"{i}.wav").write_bytes(wav())
        Image.fromarray(np.full((20, 20, 3), 40 * i % 256, np.uint8)).save(root / "images" / f"{i}.png")
    (root / "samples.csv").write_bytes(table.encode() if isinstance(table, str) else table)
    return root


def rows(root: Path, **data) -> list:
    """Every row the csv reader keeps, in file order (of all splits: three cells or more put one in
    validation and one in test whatever the fractions)."""
    splits = reader("csv")({"root": str(root), "split": {"val_fraction": 0.0, "test_fraction": 0.0}, **data}, 16)
    return sorted([*splits.train.rows, *splits.val.rows, *splits.test.rows], key=lambda r: r.line)


def row(i: int, **values) -> dict:
    return {
        "lat": "45.5",
        "lon": f"{5.5 + i}",
        "audio": f"audio/{i}.wav",
        "image": f"images/{i}.png",
        "gsd": "10",
        "datetime": "2022-05-01T06:30",
        "caption": f"birds {i}",
        **values,
    }


def table(rows_: list[dict], sep: str = ",", names: list[str] | None = None, end: str = "\n") -> str:
    header = names or list(rows_[0])
    return end.join([sep.join(header), *(sep.join(r[k] for k in rows_[0]) for r in rows_)]) + end


# The file: encodings, delimiters and header names as spreadsheets write them -----------------------


def test_a_spreadsheets_header_and_encoding_lose_no_column(tmp_path):
    """A byte-order mark glued to the first column's name ("\\ufeffdatetime") left that column
    unread, as did "Caption" or " lat": the model trained without times or captions, silently."""
    names = ["Datetime", " Lat", "LON ", "Audio", "image", "GSD", "Caption Source"]
    data = [row(i, caption="notes") for i in range(2)]
    ordered = [{k: r[k] for k in ("datetime", "lat", "lon", "audio", "image", "gsd", "caption")} for r in data]
    text = table(ordered, names=names)
    expected = [(5, 6.5, "notes")] * 2
    for name, encoded in {
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "sep-line": ("sep=;\n" + table(ordered, sep=";", names=names)).encode(),  # Excel's delimiter line
        "bars": table(ordered, sep="|", names=names).encode(),
        "crlf": text.replace("\n", "\r\n").encode(),
        "utf16-tab": table(ordered, sep="\t", names=names, end="\r\n").encode("utf-16"),
        "semicolon": table(ordered, sep=";", names=names).encode(),
    }.items():
        kept = rows(folder(tmp_path / name, encoded))
        assert [(r.month, r.hour, r.caption_source) for r in kept] == expected, name


def test_a_column_named_twice_or_like_a_missing_one_is_refused(tmp_path, caplog):
    """A column named "caption" twice trained on the second; "Captions", "latitude" or "date" were
    left out."""
    cases = {
        "twice": ("lat,lon,audio,caption,caption", "'caption' (columns 4, 5)"),
        "plural": ("lat,lon,audio,Captions", "column(s) 'captions' but no 'caption'"),
        "alias": ("latitude,lon,audio", "column(s) 'latitude' but no 'lat'"),
        "date-and-time": (
            "lat,lon,audio,date,time",
            "column(s) 'date', 'time' but no 'datetime': the reader would leave their values out; "
            "rename each to the column it stands for (merge them into one datetime",
        ),
    }
    for name, (header, message) in cases.items():
        root = folder(
            tmp_path / name, f"{header}\n" + ",".join(["45", "5", "audio/0.wav", "a", "b"][: header.count(",") + 1])
        )
        with pytest.raises(DataError, match=re.escape(message)) as err:
            rows(root)
        assert "\n" not in str(err.value)
    # Columns that look like none of the reader's are named once, and the rest is read.
    root = folder(tmp_path / "extra", "lat,lon,audio,image,gsd,notes,Species\n45,5,audio/0.wav,images/0.png,10,x,y\n")
    with caplog.at_level(logging.WARNING):
        assert len(rows(root)) == 1
    assert "column(s) notes, species are not read" in caplog.text
    # A column whose header cell was left empty (its caption, say) is named by its place.
    caplog.clear()
    root = folder(tmp_path / "unnamed", "lat,lon,audio,image,gsd,,\n45,5,audio/0.wav,images/0.png,10,birds,\n")
    with caplog.at_level(logging.WARNING):
        assert [r.caption for r in rows(root)] == [None]
    assert "column(s) 6 (1 value(s)) have values but no name in the header" in caplog.text


def test_a_row_whose_values_moved_is_skipped_and_lines_are_the_files(tmp_path, caplog):
    """An unquoted comma in a caption shifted the row's values: the caption was cut at the comma
    and the rest dropped (or read as the next column), silently. Skip lines named the record's
    index, not its line, after a blank line or a caption over two lines."""
    text = (
        "lat,lon,audio,image,gsd,caption\n"
        "\n"
        '45,5,audio/0.wav,images/0.png,10,"birds,\nand wind"\n'
        "45,6,audio/1.wav,images/1.png,10,birds, wind\n"
        ",,,,,\n"
        "45,7,audio/2.wav,images/2.png,10,rain\n"
        "north,7,audio/3.wav,images/3.png,10,rain\n"
    )
    root = folder(tmp_path / "d", text)
    with caplog.at_level(logging.WARNING):
        kept = rows(root)
    assert [(r.line, r.caption) for r in kept] == [(3, "birds,\nand wind"), (7, "rain")]
    csv_path = root / "samples.csv"
    assert "2 row(s) skipped, 2 kept" in caplog.text
    assert f"an unquoted comma inside a value?: 1 ({csv_path}:5)" in caplog.text
    assert f"({csv_path}:8)" in caplog.text and f"{csv_path}:6" not in caplog.text


def test_an_unreadable_file_is_one_sentence(tmp_path, capsys):
    """A Latin-1 file (Excel's plain "CSV") ended `soundscape train` in a UnicodeDecodeError
    traceback; a header alone got "the validation split has no samples"; a quote never closed
    swallowed every row after it into one caption."""
    from tests.test_own_data import run_config

    cases = {
        "latin1": (
            "lat,lon,audio,caption\n45,5,audio/0.wav,café\n".encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 on line 2)",
        ),
        "header": (b"lat,lon,audio\n", "has no rows below its header"),
        "xlsx": (b"PK\x03\x04\x14\x00\x06\x00", "is a spreadsheet workbook, not CSV text"),
        "quote": (
            b'lat,lon,audio,caption\n45,5,audio/0.wav,"birds\n46,5,audio/1.wav,wind\n',
            ":2: the CSV cannot be read",
        ),
    }
    for name, (data, message) in cases.items():
        root = folder(tmp_path / name, data)
        with pytest.raises(DataError, match=re.escape(message)):
            rows(root)
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(run_config({"root": str(root)}).to_dict()), encoding="utf-8")
        assert (
            soundscape(["train", "--config", str(config), "--out", str(tmp_path / f"run-{name}"), "--no-progress"]) == 2
        )
        err = capsys.readouterr().err
        assert message.split(" (")[0] in err and "Traceback" not in err and err.strip().count("\n") == 0


# Numbers: decimal commas, longitudes 0..360, swapped columns, a row's own level -------------------


def test_numbers_as_a_european_spreadsheet_writes_them(tmp_path, caplog):
    """A spreadsheet set to French or German saves "45,5" separated by semicolons; and in a file
    separated by commas a quoted "45,5" is refused with the fix, not read as something else."""
    text = (
        "lat;lon;audio;image;gsd\n"
        "45,5;5,25;audio/0.wav;images/0.png;2,5\n"
        "46;6,5;audio/1.wav;images/1.png;1.000\n"
        "47;7;audio/2.wav;images/2.png;0,5\n"
    )
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "semicolon", text))
    assert [(r.lat, r.lon, r.gsd) for r in kept] == [(45.5, 5.25, 2.5), (47.0, 7.0, 0.5)]
    assert "gsd ... has a point where the column has decimal commas: a thousands separator?" in caplog.text
    caplog.clear()
    text = 'lat,lon,audio,image,gsd\n"45,5",5,audio/0.wav,images/0.png,10\n45,5,audio/1.wav,images/1.png,10\n'
    with caplog.at_level(logging.WARNING):
        assert [(r.lat, r.lon) for r in rows(folder(tmp_path / "comma", text))] == [(45.0, 5.0)]
    assert "lat ... has a comma: write decimals with a point, or separate values with semicolons" in caplog.text


def test_longitudes_0_to_360_and_swapped_columns(tmp_path, imagery_path, caplog):
    """lon 0..360 (as some GIS exports write it) lost every row east of 180; lat and lon swapped
    said only "outside the globe" or "outside the imagery's bounds"."""
    text = "lat,lon,audio,image,gsd\n45,200,audio/0.wav,images/0.png,10\n45,5,audio/1.wav,images/1.png,10\n"
    with caplog.at_level(logging.WARNING):
        assert [r.lon for r in rows(folder(tmp_path / "east", text))] == [-160.0, 5.0]
    assert "longitudes run 0..360" in caplog.text
    caplog.clear()
    text = (
        "lat,lon,audio,image,gsd\n"
        "45,200,audio/0.wav,images/0.png,10\n"  # with a negative longitude elsewhere, 200 is a mistake
        "120,40,audio/1.wav,images/1.png,10\n"
        "45,-5,audio/2.wav,images/2.png,10\n"
    )
    with caplog.at_level(logging.WARNING):
        assert [r.lon for r in rows(folder(tmp_path / "mixed", text))] == [-5.0]
    assert "outside the globe: 1" in caplog.text and "outside the globe: lat and lon swapped?: 1" in caplog.text
    caplog.clear()
    text = "lat,lon,audio\n5,45,audio/0.wav\n45,5,audio/1.wav\n"
    with caplog.at_level(logging.WARNING):
        assert len(rows(folder(tmp_path / "cut", text), imagery=str(imagery_path), level=5)) == 1
    assert "outside the imagery's bounds: inside them with lat and lon swapped: 1" in caplog.text


def test_a_rows_own_level_is_checked_as_data_level_is(tmp_path, imagery_path, caplog):
    """A row's `level` was never checked: -1 stopped training with mercantile's InvalidZoomError
    (a traceback), 20 trained on cells enlarging the imagery's pixels 2000 times, 1 on cells it
    cannot fill (each skipped while training, one by one)."""
    text = "lat,lon,audio,level\n" + "".join(
        f"45,5,audio/0.wav,{level}\n" for level in ("-1", "4.5", "20", "1", "5", "")
    )
    coarsest, finest = Imagery(imagery_path).level_range(16, 8.0)
    assert coarsest <= 5 <= finest and not coarsest <= 1 <= finest and not coarsest <= 20 <= finest
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "d", text), imagery=str(imagery_path), level=6)
    assert [(r.line, r.level) for r in kept] == [(6, 5), (7, 6)]
    assert "level ... is not a whole number 0..30: 2" in caplog.text
    assert "level 20 is not one the imagery can fill ...: 1" in caplog.text and "level 1 is not one" in caplog.text


# Dates and times: the day and month of 01/05/2022, words dateutil skipped, UTC offsets -----------------


def dates(root: Path, values: list[str], lon: float = 5.0) -> Path:
    """A recording of its own at (45, lon) for each datetime of `values` (one file at several times is skipped)."""
    text = "lat,lon,audio,image,gsd,datetime\n" + "".join(
        f"45,{lon},audio/{i}.wav,images/{i}.png,10,{v}\n" for i, v in enumerate(values)
    )
    return folder(root, text, n=max(4, len(values)))


def test_dates_written_day_first_keep_their_month(tmp_path, caplog):
    """dateutil reads 01/05/2022 month first and swaps only a date it cannot (13/05/2022): a file of
    day-first dates trained with January for 1 May and May for 13 May, silently. '1 mai 2022'
    was read as January ('mai' skipped by fuzzy parsing), '26 May' had its month stripped as a
    time-zone word and a time alone was skipped for lacking a month."""
    kept = rows(dates(tmp_path / "told", ["01/05/2022 06:00", "13/05/2022", "02/05/2022"]))
    assert [(r.month, r.hour) for r in kept] == [(5, 6.0), (5, None), (5, None)]
    assert [r.month for r in rows(dates(tmp_path / "us", ["05/01/2022", "05/13/2022"]))] == [5, 5]
    assert [r.month for r in rows(dates(tmp_path / "dots", ["01.05.2022 06:00"]))] == [5]
    ambiguous = dates(tmp_path / "either", ["01/05/2022 06:00", "2022-06-01"])
    with pytest.raises(DataError, match=r"'01/05/2022' \(line 2\) could be 1 May or 5 January.*data\.dayfirst"):
        rows(ambiguous)
    assert [r.month for r in rows(ambiguous, dayfirst=True)] == [5, 6]
    assert [r.month for r in rows(ambiguous, dayfirst=False)] == [1, 6]
    with pytest.raises(DataError, match=r"day first \('13/05/2022', line 2\) and month first \('05/13/2022', line 3\)"):
        rows(dates(tmp_path / "both", ["13/05/2022", "05/13/2022"]))
    # A time written with dots after an ISO date is no date (dateutil cannot read it: the row is skipped).
    assert [r.month for r in rows(dates(tmp_path / "dotted-time", ["13/05/2022", "2022-05-03 06.30.00"]))] == [5]
    with caplog.at_level(logging.WARNING):
        kept = rows(
            dates(tmp_path / "words", ["1 mai 2022", "26 May", "06:30", "13/05/2022", "1651384800"]), dayfirst=False
        )
    assert [(r.line, r.month, r.hour) for r in kept] == [(3, 5, None), (4, None, 6.5)]
    assert "unreadable datetime ...: 1" in caplog.text
    assert "datetime ... is a number, a Unix time? write dates as ISO 8601 ...: 1" in caplog.text
    assert "datetime ... is no date read month first, as data.dayfirst says: 1" in caplog.text


def test_a_time_at_an_offset_other_than_the_places_clock_is_converted(tmp_path, caplog):
    """The hour is local time (model.data.Sample, docs/own-data.md); a time with a UTC offset was
    read as its clock's whatever the offset: a recorder in Japan stamping UTC trained 23:00 for
    8:00 the next morning, a month early at the end of April. The place's clock is its time zone's
    (tests/test_local_time.py has more places)."""
    japan = ["2022-04-30T23:00:00Z", "2022-05-01T06:00:00+09:00", "2022-05-01T06:00:00 UTC", "2022-05-01T06:00"]
    with caplog.at_level(logging.WARNING):
        kept = rows(dates(tmp_path / "japan", japan, lon=139.7))
    assert [(r.month, r.hour) for r in kept] == [(5, 8.0), (5, 6.0), (5, 15.0), (5, 6.0)]
    assert "2 row(s) give a time at a UTC offset other than their place's clock had then" in caplog.text
    # The offset of the place's summer clock is its clock as written; a UTC stamp is two hours behind it.
    france = ["2022-05-01T06:00:00+02:00", "2022-05-01T06:00:00Z", "2022-05-01 06:00 CEST"]
    assert [(r.month, r.hour) for r in rows(dates(tmp_path / "france", france))] == [(5, 6.0), (5, 8.0), (5, 6.0)]


# Audio and images: what a recorder or an image editor writes ---------------------------------------


def test_audio_with_nan_samples_is_skipped_not_trained_on(tmp_path):
    """A float WAV can hold NaN or infinite samples (a crashed editor, a bad conversion): decoded as
    they were, one clip made its features and so the batch's loss NaN. Now the file is a bad
    sample, skipped and listed like any undecodable one (as the server refuses an upload of one)."""
    from model.batches import Examples
    from model.data import BadSample
    from tests.test_model_readers import prep

    root = folder(tmp_path / "d", table([row(0), row(1)]), n=2)
    wave = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    wave[4000] = np.nan
    soundfile.write(root / "audio" / "1.wav", wave, 16000, subtype="FLOAT")
    train = reader("csv")({"root": str(root), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}, 16).train
    nan_row = next(i for i, r in enumerate(train.rows) if r.audio == "audio/1.wav")
    with pytest.raises(BadSample, match="1 of its samples are NaN or infinite"):
        train[nan_row]
    item = Examples(train, prep(size=16))[nan_row]
    assert item.skipped and item.skipped[0][1].endswith("audio/1.wav") and np.isfinite(item.audio).all()


def encoded(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_images_are_read_as_a_viewer_shows_them(tmp_path):
    """A 16-bit grey PNG (a GIS export) was clipped to 255, white, by Pillow's RGB conversion; a
    float TIFF to 0, black; a phone photo trained on its sensor's orientation, not its EXIF one;
    transparent pixels gave whatever colour they hid. Each trained as if it were the picture."""
    from model.data import BadSample
    from model.readers.common import decode_image

    grey16 = Image.fromarray(np.full((20, 20), 30000, np.uint16))
    assert grey16.mode == "I;16"
    root = folder(tmp_path / "d", table([row(0)]), n=1)
    (root / "images" / "0.png").write_bytes(encoded(grey16))
    sample = reader("csv")({"root": str(root), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}, 16).train[0]
    assert (sample.image == 117).all()  # 30000 / 257, as Pillow reads a 16-bit RGB PNG

    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :10] = 255  # white on the left of the sensor's frame
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    upright = decode_image(encoded(Image.fromarray(wide), "JPEG", exif=exif, quality=95), "x")
    assert upright.shape == (20, 10, 3) and upright[:8].mean() > 200 and upright[12:].mean() < 50

    red = np.zeros((10, 10, 4), np.uint8)
    red[..., 0] = 200
    red[:, :6, 3] = 255  # the right four columns transparent
    rgb = decode_image(encoded(Image.fromarray(red, "RGBA")), "x")
    assert (rgb[:, :6, 0] == 200).all() and (rgb[:, 6:] == 0).all()
    red[:, :4, 3] = 0  # now mostly transparent
    with pytest.raises(BadSample, match="less than 50% of the image is opaque"):
        decode_image(encoded(Image.fromarray(red, "RGBA")), "x")
    with pytest.raises(BadSample, match="32-bit pixels have no fixed range"):
        decode_image(encoded(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"), "x")


def test_an_image_too_large_to_decode_is_a_bad_sample(monkeypatch):
    """Pillow refuses an image of more than twice MAX_IMAGE_PIXELS (a whole orthophoto as a row's
    image) with DecompressionBombError, no OSError: it stopped training with a traceback."""
    from model.data import BadSample
    from model.readers.common import decode_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadSample, match="cannot decode image"):
        decode_image(encoded(Image.fromarray(np.zeros((20, 20, 3), np.uint8))), "x")


def test_a_large_image_is_no_python_warning_and_past_the_limit_a_sentence(monkeypatch):
    """Above MAX_IMAGE_PIXELS Pillow printed a raw DecompressionBombWarning with a site-packages
    path, and past twice it the sample was skipped as a "decompression bomb DOS attack"."""
    import warnings

    from model.data import BadSample
    from model.readers.common import decode_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(encoded(Image.fromarray(np.zeros((12, 12, 3), np.uint8))), "x").shape == (12, 12, 3)
    with pytest.raises(BadSample) as err:
        decode_image(encoded(Image.fromarray(np.zeros((20, 20, 3), np.uint8))), "x")
    assert "more than the 200 pixels Pillow decodes; save a smaller copy" in str(err.value)
    assert "DOS" not in str(err.value)


def test_file_names_as_windows_or_a_mac_wrote_them_and_empty_clips(tmp_path, caplog):
    """A CSV written on Windows names audio\\0.wav, and a folder copied from a Mac keeps its
    accents decomposed (NFD) where the CSV has them composed: every such row was skipped as a
    file that does not exist, as was a folder, said not to exist. A clip of no samples (a failed
    recording) trained as silence."""
    import unicodedata

    from model.data import BadSample

    root = folder(tmp_path / "d", "")
    (root / "audio" / unicodedata.normalize("NFD", "forêt.wav")).write_bytes(wav())
    (root / "audio" / "folder.wav").mkdir()
    soundfile.write(root / "audio" / "empty.wav", np.zeros(0, np.float32), 16000)
    names = ["audio\\0.wav", "audio/forêt.wav", "audio/folder.wav", "audio/empty.wav"]
    lines = "".join(f"45,5.{i},{name},images/{i}.png,10\n" for i, name in enumerate(names))  # one cell: train
    (root / "samples.csv").write_text("lat,lon,audio,image,gsd\n" + lines, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        splits = reader("csv")({"root": str(root), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}, 16)
    kept = sorted(splits.train.rows, key=lambda r: r.line)
    assert [r.audio for r in kept] == [
        "audio/0.wav",
        unicodedata.normalize("NFD", "audio/forêt.wav"),
        "audio/empty.wav",
    ]
    assert "... is not a file: 1" in caplog.text
    assert splits.train[splits.train.rows.index(kept[1])].audio.shape == (4000,)
    with pytest.raises(BadSample, match="the audio holds no samples"):
        splits.train[splits.train.rows.index(kept[2])]
