"""Measure how much of the mount's files the kernel's page cache holds (cachestat(2)).

A FUSE file system never sees page-cache hits, only misses; what it can see is how much of
its files is resident, which is what every process on the host shares. cachestat (Linux 6.5)
counts the cached pages of an open file without touching them; the files are opened by this
process, which the mount lets through without a version check.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

SYS_CACHESTAT = 451  # the same number on every architecture
PAGE = os.sysconf("SC_PAGE_SIZE")


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("nr_cache", "nr_dirty", "nr_writeback",
                                                "nr_evicted", "nr_recently_evicted")]


_libc = ctypes.CDLL(None, use_errno=True)


def cached_bytes(path: str) -> int:
    """Return the bytes of `path` in the page cache; -1 if the kernel cannot say."""
    fd = os.open(path, os.O_RDONLY)
    try:
        rng, st = _Range(0, 0), _Stat()  # len 0: to the end of the file
        if _libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                return -1
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), path)
        return int(st.nr_cache) * PAGE
    finally:
        os.close(fd)


def resident_bytes(root: str, paths: Iterable[str]) -> int:
    """Return the bytes of the files under `root` in the page cache; -1 if unknown."""
    total = 0
    for rel in paths:
        try:
            n = cached_bytes(os.path.join(root, rel))
        except OSError:
            continue  # gone or failing: count what can be counted
        if n < 0:
            return -1
        total += n
    return total
