"""The mount point: find mounts in /proc/self/mountinfo, recover a stale one, tune read-ahead.

A mount whose process died (kill -9, OOM) stays in the mount table and every access to it
fails with ENOTCONN ("Transport endpoint is not connected"). `prepare` detects that and
detaches it (`fusermount3 -u -z`), so a new `cachectl mount` on the same path recovers.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from client.errors import ClientError

log = logging.getLogger(__name__)
FSTYPE = "fuse.blockcache"


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mount_id: int  # unique while mounted (a device number is reused at once)
    device: str  # "major:minor"
    path: str
    fstype: str


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space, ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Return the entries of a mountinfo text."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        entries.append(MountEntry(int(fields[0]), fields[2], _unescape(fields[4]),
                                  right.split()[0]))
    return entries


def find_mount(path: str) -> MountEntry | None:
    """Return the newest mount on `path`, if any."""
    path = os.path.abspath(path)
    found = None
    for e in parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        if e.path == path:
            found = e
    return found


def is_live(path: str) -> bool:
    """Return whether a blockcache mount on `path` answers (a stale one fails with ENOTCONN)."""
    e = find_mount(path)
    if e is None or e.fstype != FSTYPE:
        return False
    try:
        os.statvfs(path)  # never answered from the kernel's attribute cache
    except OSError:
        return False
    return True


def detach(path: str) -> None:
    """Detach the mount on `path` lazily (fusermount3 -u -z; umount -l as a fallback)."""
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return
        log.info("%s: %s", " ".join(cmd), r.stderr.strip())
    raise ClientError(f"cannot unmount the stale mount on {path}: run `fusermount3 -u -z {path}`")


def prepare(path: str) -> None:
    """Make `path` ready to mount on: a directory (made if missing), no live blockcache mount
    on it, no stale one."""
    try:
        os.statvfs(path)  # a stat may be answered from cached attributes, a statfs never
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise ClientError(f"mount point {path}: {e.strerror}") from None
        log.warning("mount point %s is a stale mount (Transport endpoint is not connected): "
                    "its process died; unmounting it", path)
        detach(path)
    else:
        mounted = find_mount(path)
        if mounted is not None and mounted.fstype == FSTYPE:
            raise ClientError(f"{path} is already mounted by a running cachectl mount; "
                              f"unmount it first (fusermount3 -u {path})")
    if not os.path.isdir(path):
        raise ClientError(f"mount point {path} is not a directory")


def set_kernel_readahead(path: str, nbytes: int) -> int:
    """Set the kernel's read-ahead of the mount on `path` (its bdi's read_ahead_kb); return
    the KiB in force afterwards (0 if unknown)."""
    entry = find_mount(path)
    if entry is None:
        return 0
    knob = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
    try:
        if nbytes > 0:
            knob.write_text(f"{nbytes // 1024}\n")
        return int(knob.read_text().strip())
    except OSError as e:
        log.info("kernel read-ahead of %s unchanged (%s: %s)", path, knob, e.strerror)
        try:
            return int(knob.read_text().strip())
        except (OSError, ValueError):
            return 0
