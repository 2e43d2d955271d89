"""Start-up repair of a data dir: one node per dir, and the index and the files agree."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from cachenode.errors import CacheError
from cachenode.store.index import BlockIndex, IndexEntry


class DataDirInUse(CacheError):
    """Another cachenode process already uses this data directory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reason = f"data dir {root} is in use by another cachenode process"


def lock_data_dir(root: Path) -> int:
    """Return the fd holding `root/LOCK` (flock), or raise DataDirInUse."""
    fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(root) from None
    return fd


def checked_entries(index: BlockIndex, path_of: Callable[[str], Path]
                    ) -> tuple[list[IndexEntry], int]:
    """Return the entries whose file is there with their size; drop and count the others."""
    entries, dropped = [], 0
    for e in index.entries():
        try:
            ok = os.stat(path_of(e.block_id)).st_size == e.size
        except FileNotFoundError:
            ok = False
        if ok:
            entries.append(e)
        else:
            index.delete(e)
            dropped += 1
    return entries, dropped


def remove_strays(blocks: Path, known: set[str]) -> int:
    """Remove block files the index does not know (a crash before index.put); return how many."""
    removed = 0
    for dirpath, _dirs, files in os.walk(blocks):
        for name in files:
            if name not in known:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed
