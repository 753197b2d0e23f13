"""A store being written: level arrays that grow batch by batch in a work directory beside the
output (`.STORE.partial`), and a progress file (`.STORE.progress.json`) rewritten atomically
after every batch, saying how far each level got. A killed run that is started again with the
same plan continues from there; the arrays are cut back to the recorded rows first, so the
result equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from store.format import FUSIONS_DIR, LevelArrays, StoreError, array_specs, level_dir
from store.npy import GrowingNpy


def work_paths(out: Path) -> tuple[Path, Path]:
    """(work directory, progress file) of an output store path."""
    return out.parent / f".{out.name}.partial", out.parent / f".{out.name}.progress.json"


class LevelWriter:
    """Appends one level's cells (and their precomputed fusions) to growing .npy files."""

    def __init__(self, folder: Path, state: dict, sat_dim: int, embed_dim: int, fusion_names: list[str]):
        self.state = state  # {"position", "rows", "skipped"}: shared with the progress file
        rows = state["rows"]
        self.files = {
            name: GrowingNpy(folder / f"{name}.npy", dtype, shape, rows)
            for name, (dtype, shape) in array_specs(sat_dim, embed_dim).items()
        }
        for name in fusion_names:
            self.files[f"{name}.mu"] = GrowingNpy(
                folder / FUSIONS_DIR / f"{name}.mu.npy", "float16", (embed_dim,), rows
            )
            self.files[f"{name}.s"] = GrowingNpy(folder / FUSIONS_DIR / f"{name}.s.npy", "float32", (), rows)

    def append(
        self, arrays: LevelArrays | None, fused: dict[str, tuple[np.ndarray, np.ndarray]], position: int, skipped: int
    ) -> None:
        """Add a batch's cells (None: none had imagery); `position` is the plan position after it."""
        self.state.update(position=position, skipped=self.state["skipped"] + skipped)
        if arrays is None:
            return
        for name in array_specs(0, 0):
            self.files[name].append(getattr(arrays, name))
        for name, (mu, s) in fused.items():
            self.files[f"{name}.mu"].append(mu)
            self.files[f"{name}.s"].append(s)
        for f in self.files.values():
            f.commit()
        self.state["rows"] += len(arrays.codes)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class PartialStore:
    """The work directory and progress of one run, identified by `key` (plan, bundle, shard...)."""

    def __init__(self, out: Path, key: dict, batch: int, *, discard_other: bool):
        self.out = Path(out)
        self.dir, self.progress = work_paths(self.out)
        state = self._load()
        if state is not None and state["key"] != key:
            if not discard_other:
                raise StoreError(
                    f"{self.dir} holds an unfinished run of another plan, bundle or shard; "
                    "rerun that command to finish it, or pass --overwrite to discard it"
                )
            state = None
        if state is None:
            self.discard()
            self.dir.mkdir(parents=True)
            state = {"key": key, "batch": batch, "levels": {}}
        self.state = state
        self.resumed = bool(state["levels"])
        self.save()

    def _load(self) -> dict | None:
        if not (self.dir.is_dir() and self.progress.is_file()):
            return None
        try:
            return json.loads(self.progress.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    @property
    def batch(self) -> int:
        return int(self.state["batch"])

    def level_state(self, level: int, start: int) -> dict:
        return self.state["levels"].setdefault(str(level), {"position": start, "rows": 0, "skipped": 0})

    def writer(self, level: int, start: int, sat_dim: int, embed_dim: int, fusion_names: list[str]) -> LevelWriter:
        try:
            return LevelWriter(
                level_dir(self.dir, level), self.level_state(level, start), sat_dim, embed_dim, fusion_names
            )
        except OSError as exc:
            raise StoreError(
                f"the unfinished run in {self.dir} is damaged ({exc}); pass --overwrite to start it again"
            ) from exc

    def save(self) -> None:
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, sort_keys=True))
        os.replace(tmp, self.progress)

    def discard(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.progress.unlink(missing_ok=True)
