"""Temp files of blocks being written: counted while they exist, removed at once on failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cachenode.store.space import StoreSpace

# (temp, final, data) -> checksum; renames
WriteFile = Callable[[Path, Path, bytes | bytearray], int]


class TempFiles:
    """Write blocks through `tmp/`: a write's bytes stay reserved until its thread is done."""

    def __init__(self, tmp: Path, space: StoreSpace, write_file: WriteFile) -> None:
        self.dir, self._space, self._write_file = tmp, space, write_file

    def clear(self) -> None:
        """Remove every temp file (unfinished fills are never served) and recreate the dir."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    async def write(self, bid: str, final: Path, data: bytes | bytearray,
                    kept: Callable[[], bool]) -> int:
        """Write reserved bytes to `final` via a temp file, release them, return the checksum.

        A failed write raises with its temp file (a partial one too) removed. A cancelled
        one keeps its bytes reserved until the thread ends, then drops its file unless
        `kept()` says the block is indexed (by a concurrent put of the same block).
        """
        # unique per call: concurrent puts of one block (same bytes object) must not share it
        tmp = self.dir / f"{bid}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        size = len(data)
        write = asyncio.get_running_loop().run_in_executor(None, self._write, tmp, final, data)
        try:
            crc = await asyncio.shield(write)
        except asyncio.CancelledError:
            write.add_done_callback(lambda f: self._abandoned(f, final, size, kept))
            raise
        except BaseException:
            self._space.release(size)  # the temp file is gone
            raise
        self._space.release(size)  # renamed: the caller counts it as a block, no await between
        return crc

    def _write(self, tmp: Path, final: Path, data: bytes | bytearray) -> int:
        try:
            return self._write_file(tmp, final, data)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _abandoned(self, write: asyncio.Future[int], final: Path, size: int,
                   kept: Callable[[], bool]) -> None:
        self._space.release(size)
        if not write.cancelled() and write.exception() is None and not kept():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)  # renamed by a put nobody waits for: never indexed
