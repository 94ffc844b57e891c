"""Reading members of a zip archive that was split into byte-range parts (`mp3.zip.001`, ...).

MagnaTagATune ships its audio as `mp3.zip.001..003`, plain pieces of one zip file. Instead of
concatenating 3 GB on disk, `MultiPartFile` presents the parts as one seekable file to `zipfile`.
`check_zip` refuses an incomplete set (a part missing, a gap in the numbers, a part truncated)
before any member is read.
"""
from __future__ import annotations

import bisect
import functools
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Sequence

from tagger_jax import errors


class MultiPartFile(io.RawIOBase):
    """Read-only, seekable view of files concatenated in the given order."""

    def __init__(self, parts: Sequence[str | os.PathLike]):
        super().__init__()
        self._paths = [str(p) for p in parts]
        if not self._paths:
            raise ValueError("MultiPartFile needs at least one part")
        self._sizes = [os.path.getsize(p) for p in self._paths]
        self._starts = [0]
        for size in self._sizes[:-1]:
            self._starts.append(self._starts[-1] + size)
        self._size = sum(self._sizes)
        self._files = [open(p, "rb") for p in self._paths]  # noqa: SIM115 (closed in close())
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._starts[i] + self._sizes[i] - self._pos)
            got = f.readinto(view[done:done + want])
            if not got:
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for f in getattr(self, "_files", []):
            f.close()
        super().close()


def find_parts(directory: Path, stem: str) -> list[Path]:
    """`stem.001`, `stem.002`, ... in numeric order (empty if there are none)."""
    pattern = re.compile(re.escape(stem) + r"\.(\d+)$")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


@functools.lru_cache(maxsize=4)
def open_zip(parts: tuple[str, ...]) -> zipfile.ZipFile:
    """A ZipFile over the concatenated parts, cached per process (workers reuse it)."""
    return zipfile.ZipFile(MultiPartFile(parts))


def check_zip(parts: Sequence[str | os.PathLike]) -> zipfile.ZipFile:
    """The zip archive over `parts` (`find_parts`, or one plain zip), checked to be whole: parts
    numbered 1, 2, ... without a gap, the central directory found at the end, and the local
    headers of its first and last members where the directory puts them (a missing or truncated
    part shifts or cuts them). Raises `errors.DataError`, one line naming the first part and the
    parts found, otherwise."""
    paths = [Path(p) for p in parts]
    numbers = [p.suffix[1:] for p in paths]
    label = f"{paths[0]}..." if len(paths) > 1 else str(paths[0])
    question = ("is a part missing or truncated?" if len(paths) > 1 else "is it truncated?")
    found = f"parts found: {', '.join(numbers)}; " if len(paths) > 1 else ""
    problem = f"{label}: not a complete zip archive ({found}{question}"
    if len(paths) > 1 and [int(n) for n in numbers] != list(range(1, len(paths) + 1)):
        raise errors.DataError(f"{problem})")
    try:
        archive = open_zip(tuple(str(p) for p in paths))
        members = sorted(archive.infolist(), key=lambda info: info.header_offset)
        for info in members[:1] + members[-1:]:
            archive.fp.seek(max(0, info.header_offset))
            if info.header_offset < 0 or archive.fp.read(4) != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header for {info.filename}")
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        open_zip.cache_clear()
        raise errors.DataError(f"{problem} zipfile says: {e})") from None
    return archive
