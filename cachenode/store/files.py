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


# Bytes per write(2). Measured on ext4 (kernel 6.18, a 2-core VM): 1 GiB of new 4 MiB files
# cost 1.7-2.7 s of kernel CPU written whole, 0.4 s written 1 MiB at a time (tmpfs: 0.5 s).
WRITE_STEP_BYTES = 1 << 20


def write_block_file(tmp: Path, final: Path, data: bytes | bytearray, fsync: bool) -> int:
    """Write `data` to `tmp` (fsync'd if asked), rename it to `final`; return its CRC-32C."""
    crc = crc32c(data)
    view = memoryview(data)
    with open(tmp, "wb", buffering=0) as f:
        done = 0
        while done < len(view):  # slices of the caller's buffer: no copy
            n = f.write(view[done:done + WRITE_STEP_BYTES])
            if not n:
                raise OSError(f"write of {tmp} made no progress at byte {done}")
            done += n
        if fsync:
            os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    return crc


def unlink_quietly(path: Path) -> None:
    """Remove a file that may be gone already."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
