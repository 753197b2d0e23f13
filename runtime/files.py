"""Files that a reader, or a run killed half-way, never sees half written; and their checksums.

One home for the facts every layer uses: a file is written beside its final name and renamed over
it (`atomic_write`), a finished folder replaces an old one only once complete (`replace_dir`), one
writer at a time holds a path (`path_lock`, `lock_file`: no lock file is left once it is done),
and checksums are sha256 over the bytes of a file (`file_sha256`) or of canonical JSON
(`json_sha256`)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from runtime.errors import UserError


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never part of one.

    `data` is bytes, text (UTF-8), or a callable that writes the temporary path it is given
    (`np.save`, `torch.save`, `faiss.write_index`, ...). The temporary file sits in the same folder
    (a rename within one file system is atomic), is unique to this process and thread (writers that
    share a folder never share it), keeps `path`'s suffix (numpy and rasterio pick the format by it)
    and is removed if the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_native_id()}.tmp{path.suffix}")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_folder(path: str | Path, option: str) -> Path:
    """`path` made a folder (with its parents) for a command's `option` (--out, --data-dir): a
    UserError naming the file in the way, where mkdir's OSError said only "File exists" (or named
    the file, not the folder wanted)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise UserError(
            f"cannot create the folder {path} ({option}): {blocker} is a file; choose another {option}"
        ) from None
    return path


def replace_dir(src: str | Path, out: str | Path) -> None:
    """Move the finished folder `src` to `out`; an old folder at `out` is removed only after that,
    so a crash leaves the old one or the new one in place (or, at worst, the old one beside it)."""
    src, out = Path(src), Path(out)
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(src, out)
    if old.exists():
        shutil.rmtree(old)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def canonical_json(value: object) -> str:
    """The one text form of a JSON value that hashes stably: sorted keys, no whitespace, and
    `str()` for what JSON cannot hold (paths, dates)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def json_sha256(value: object, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `canonical_json(value)`: content ids of
    bundles and stores, cache keys; the same in every process and on every machine."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def lock_file(path: Path, *, wait: bool = True) -> IO[str]:
    """The open file `path`, exclusively flock'd: released when it is closed or the process ends,
    so a killed holder never blocks a rerun. Without `wait`, BlockingIOError at once when another
    holds it. A holder removes the file before it lets go (`unlock_file`), so a finished command
    leaves none; a locker that meanwhile got the lock of the removed file tries again on the file
    now at `path`, so two lockers never hold two different files of one path."""
    while True:
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115  (held until unlock_file)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.stat(path), os.fstat(handle.fileno())):
                return handle
        except FileNotFoundError:
            pass  # removed by the holder this one waited for
        except BaseException:
            handle.close()
            raise
        handle.close()


def unlock_file(path: Path, handle: IO[str]) -> None:
    """Let go of `lock_file`'s lock: the file is removed while still locked, then released."""
    if not handle.closed:
        path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def path_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a `.NAME.lock` file beside it, removed when done) while
    writing it; waits for another holder (`lock_file`)."""
    lock = path.parent / f".{path.name}.lock"
    handle = lock_file(lock)
    try:
        yield
    finally:
        unlock_file(lock, handle)
