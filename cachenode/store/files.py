"""Block files: an open block handed to a reader, and the write of a block's temp file."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cachenode.checksum import crc32c


@dataclass(slots=True)
class OpenBlock:
    """An open block file; the reader owns `fd` and must close it."""

    block_id: str
    fd: int
    size: int
    crc32c: int
    source: str = "disk"  # "origin" when this read filled the block just now

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)


def write_block_file(tmp: Path, final: Path, data: bytes | bytearray, fsync: bool) -> int:
    """Write `data` to `tmp` (fsync'd if asked), rename it to `final`; return its CRC-32C."""
    crc = crc32c(data)
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    return crc


def unlink_quietly(path: Path) -> None:
    """Remove a file that may be gone already."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
