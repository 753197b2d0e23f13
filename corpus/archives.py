"""The archive formats the corpus assets arrive in, read as streams: Debian packages (an `ar`
archive holding `data.tar.*`), zip files inside them (0ad's 3 GB `public.zip` is read entry by
entry from the tar stream, never written to disk), Qt resource bundles (GCompris `.rcc`) and the
OpenSFX sound catalogue (`opensfx.cat`)."""

from __future__ import annotations

import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO


class ArchiveError(ValueError):
    """An archive is not in the format its reader expects (truncated, corrupt or changed)."""


def _ar_data_tar(f: BinaryIO) -> str:
    """Position `f` at the start of the `data.tar.*` member of a .deb; return its name."""
    if f.read(8) != b"!<arch>\n":
        raise ArchiveError("not a Debian package (no ar header)")
    while True:
        header = f.read(60)
        if len(header) < 60:
            raise ArchiveError("Debian package has no data.tar member")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58])
        if name.startswith("data.tar"):
            return name
        f.seek(size + (size & 1), 1)


def deb_members(
    path: str | Path, wanted: Callable[[str], bool], on_read: Callable[[int], object] | None = None
) -> Iterator[tuple[str, BinaryIO]]:
    """(path inside the package without './', readable stream) of each wanted regular file.

    `on_read(n)` is called with the bytes of the .deb consumed so far (for progress bars).
    """
    with open(path, "rb") as raw:
        _ar_data_tar(raw)
        stream = _CountingReader(raw, on_read) if on_read else raw
        try:
            # A stream ("r|*") is only read; typeshed asks every fileobj for write, seek and close.
            with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and wanted(name):
                        yield name, tar.extractfile(member)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ArchiveError(f"cannot read the package's data: {exc}") from None


class _CountingReader:
    """A read-only file wrapper that reports how far it has read."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], object]):
        self._f, self._on_read, self._start = f, on_read, f.tell()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._on_read(self._f.tell() - self._start)
        return data


_LOCAL = struct.Struct("<4sHHHHHIIIHH")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ArchiveError("zip stream ends inside an entry (truncated)")
    return data


def _skip(stream: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            raise ArchiveError("zip stream ends inside an entry (truncated)")
        n -= len(chunk)


def zip_stream_entries(stream: BinaryIO, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, contents) of the wanted entries of a zip read front to back, without seeking.

    Works for zips whose local headers carry the sizes (no data descriptors), as 0ad's does;
    each entry's CRC-32 is checked.
    """
    while True:
        header = stream.read(_LOCAL.size)
        if len(header) < 4 or header[:4] in (b"PK\x01\x02", b"PK\x05\x06"):
            return  # the central directory: no more entries
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise ArchiveError("zip stream has a malformed local header")
        _, _, flags, method, _, _, crc, csize, _, nlen, xlen = _LOCAL.unpack(header)
        name = _read_exact(stream, nlen).decode("utf-8", "replace")
        extra = _read_exact(stream, xlen)
        if flags & 0x08:
            raise ArchiveError(f"zip entry {name} has a data descriptor; stream reading needs sizes")
        if csize == 0xFFFFFFFF:
            csize = _zip64_size(extra)
        if not wanted(name) or name.endswith("/"):
            _skip(stream, csize)
            continue
        data = _read_exact(stream, csize)
        if method == 8:
            data = zlib.decompress(data, -15)
        elif method != 0:
            raise ArchiveError(f"zip entry {name} uses compression method {method}")
        if zlib.crc32(data) != crc:
            raise ArchiveError(f"zip entry {name} fails its CRC check (corrupt)")
        yield name, data


def _zip64_size(extra: bytes) -> int:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            return struct.unpack_from("<QQ", extra, pos + 4)[1]
        pos += 4 + size
    raise ArchiveError("zip64 entry without its size field")


def rcc_entries(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of every file in a Qt resource bundle (.rcc, format versions 1-3)."""
    if buf[:4] != b"qres":
        raise ArchiveError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack_from(">IIII", buf, 4)
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", buf, names + offset)
        return buf[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        pos = tree + index * entry_size
        name_offset, flags = struct.unpack_from(">IH", buf, pos)
        name = name_at(name_offset) if index else ""
        if flags & 0x02:  # directory
            count, first = struct.unpack_from(">II", buf, pos + 6)
            for child in range(first, first + count):
                yield from walk(child, f"{prefix}{name}/" if index else "")
            return
        (offset,) = struct.unpack_from(">I", buf, pos + 10)
        (size,) = struct.unpack_from(">I", buf, data + offset)
        payload = buf[data + offset + 4 : data + offset + 4 + size]
        if flags & 0x01:  # qCompress: 4-byte big-endian length, then zlib
            payload = zlib.decompress(payload[4:])
        elif flags & 0x04:
            raise ArchiveError(f"rcc entry {prefix}{name} is zstd-compressed (unsupported)")
        yield prefix + name, payload

    try:
        yield from walk(0, "")
    except (struct.error, zlib.error) as exc:
        raise ArchiveError(f"Qt resource bundle is corrupt: {exc}") from None


def opensfx_entries(buf: bytes) -> Iterator[tuple[int, str, bytes]]:
    """(index, credit line, RIFF/WAV bytes) of each sound in an OpenTTD sound catalogue.

    The catalogue starts with a table of (offset | 0x80000000, size) little-endian pairs; each
    entry is a length-prefixed name (which carries the title, author and licence) and a WAV of
    `size` bytes.
    """
    try:
        (first,) = struct.unpack_from("<I", buf, 0)
        count = (first & 0x7FFFFFFF) // 8
        for index in range(count):
            offset, size = struct.unpack_from("<II", buf, index * 8)
            offset &= 0x7FFFFFFF
            length = buf[offset]
            name = buf[offset + 1 : offset + 1 + length].rstrip(b"\0").decode("latin-1")
            wav = buf[offset + 1 + length : offset + 1 + length + size]
            if wav[:4] != b"RIFF":
                raise ArchiveError(f"sound {index} of the catalogue is not a WAV")
            yield index, name, wav
    except (struct.error, IndexError) as exc:
        raise ArchiveError(f"sound catalogue is corrupt: {exc}") from None


def copy_stream(src: IO[bytes], dst: Path) -> None:
    """Write a stream to `dst` (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
