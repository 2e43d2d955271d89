"""Block checksums: CRC-32C (Castagnoli), hardware-accelerated, over buffers and open files.

CRC-32C rather than zlib's CRC-32: measured on this 2-core box, the `crc32c` package runs at
~19-25 GiB/s over a 4 MiB block (SSE4.2), zlib.crc32 at ~2.6-3.4 GiB/s. A stored block is
checked by reading it in 1 MiB pieces into a reused per-thread buffer (~11 GiB/s, 0.33 ms per
4 MiB, measured; reading through an mmap was faster, ~19 GiB/s, but a disk read error or a
truncated file then kills the process with SIGBUS instead of raising OSError).
"""

from __future__ import annotations

import os
import threading

import crc32c as _crc32c

Buffer = bytes | bytearray | memoryview

HARDWARE = bool(_crc32c.hardware_based)
HEADER = "X-Blockcache-Crc32c"  # HTTP: the CRC-32C of a response that is one whole block
PIECE_BYTES = 1 << 20  # fits in L2: each piece is checksummed while still in cache
_RELEASE_GIL = 1  # always: files are checked in worker threads beside the event loop
_local = threading.local()  # .buf: this thread's read buffer


def crc32c(data: Buffer, value: int = 0) -> int:
    """Return the CRC-32C of `data`, continuing from `value` (0 starts a new checksum)."""
    return int(_crc32c.crc32c(data, value, _RELEASE_GIL))


def file_crc32c(fd: int, size: int) -> int | None:
    """Return the CRC-32C of the first `size` bytes of an open file, None if it is shorter.

    Raises OSError when the disk fails the read. Blocking: run it in a worker thread.
    """
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(PIECE_BYTES))
    value = done = 0
    while done < size:
        n = os.preadv(fd, [buf[:min(PIECE_BYTES, size - done)]], done)
        if n == 0:
            return None
        value = crc32c(buf[:n], value)
        done += n
    return value
