"""docs/own-data.md's worked example, run line by line as the page gives it (so the page cannot
drift from the code): the example dataset written by tests/own_data_example.py, then train,
evaluate, export, precompute and store verify through the `soundscape` command, and the served map
checked through the app `soundscape serve` would run."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import main as soundscape

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "own-data.md"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def walkthrough_lines() -> list[str]:
    """The shell lines of the fenced block after the page's walkthrough marker."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert block, f"{DOC} has no walkthrough block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_page_lists_every_step():
    commands = [line.split()[1] for line in walkthrough_lines() if line.startswith("soundscape ")]
    assert commands == ["train", "evaluate", "export", "precompute", "store", "serve"]


def test_the_walkthrough_runs_end_to_end(tmp_path, monkeypatch, capsys, caplog):
    from runtime.bundle import Bundle
    from server.commands import banner
    from store.reader import Store
    from tests.server_support import make_client

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    serve = None
    for line in walkthrough_lines():
        argv = shlex.split(line)
        if argv[0] == "python":
            subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], check=True, timeout=300)
        elif argv[1] == "serve":
            serve = argv  # blocks: checked through the app below
        else:
            assert soundscape(argv[1:]) == 0, line
        out = capsys.readouterr()
        if argv[1:2] == ["train"]:
            assert "data.level not set: using level 7" in caplog.text and "the validation split has" in caplog.text
        if argv[1:2] == ["export"]:
            assert "export 4/4: the audio graph matches torch" in out.err
            assert "onnxscript" not in out.err and "onnx_ir" not in out.err
    assert serve is not None
    # The run recorded the derived level: evaluate read it from the checkpoint instead of deriving it again.
    assert caplog.text.count("data.level not set") == 1
    assert (
        yaml.safe_load((tmp_path / "example" / "run" / "config.yaml").read_text(encoding="utf-8"))["data"]["level"] == 7
    )
    bundle, store = (tmp_path / serve[serve.index(flag) + 1] for flag in ("--bundle", "--store"))
    examples = Bundle(bundle).manifest["examples"]
    assert examples == ["waves on the shore", "birds singing"]
    assert "waves%20on%20the%20shore" in banner("http://127.0.0.1:8000", examples)
    assert sorted(Store(store).levels) == [4, 5, 6, 7]  # level 3 of the crop has no half-covered cell
    with make_client(bundle, store) as client:
        meta = client.get("/tilejson.json", params={"q": examples[0]}).json()
        assert meta["attribution"] == (
            "Imagery: NASA Earth Observatory, Blue Marble Next Generation (public domain); model: soundscape-tiles"
        )
        assert meta["minzoom"] == 0 and meta["maxzoom"] == 7
        tile = client.get("/tiles/3/4/2.png", params={"q": examples[0]})
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
