"""A small tmpfs for tests of a full disk (needs root, as on the dev machines and in CI)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, size: str = "20m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` for the block; fail the test if mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, timeout=30)
    if got.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (full-disk tests need root: "
                    f"mount -t tmpfs): {got.stderr.strip() or got.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)  # still busy


def fill_disk(path: Path) -> int:
    """Append to the file `path` until its filesystem is full; return the bytes added."""
    added, chunk = 0, 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while chunk:
            try:
                added += os.write(fd, b"\xa5" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2  # fill the last pages too
    finally:
        os.close(fd)
    return added


def free_bytes(path: Path) -> int:
    """Return the bytes an unprivileged writer may still use on `path`'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
