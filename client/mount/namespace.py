"""Pure: an object listing as a read-only directory tree, with one inode per object version.

A file's inode stands for one version (key, ETag, size) and never changes meaning, so the
kernel's page cache of an inode holds bytes of that version only: an overwrite at the origin
gives the name a new inode on the next listing (or open), and a reader of the old one keeps its
bytes. Directories have one inode per path. Inode numbers are never reused within a mount.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

ROOT_INODE = 1
MAX_NAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing, as the namespace needs it."""

    key: str
    size: int
    etag: str
    mtime: float = 0.0


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What a file inode stands for: one version of one object."""

    ino: int
    key: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(slots=True)
class Directory:
    """A directory: its entries by name (bytes, as FUSE passes them)."""

    ino: int
    path: str
    parent: int
    entries: dict[bytes, int] = field(default_factory=dict)
    mtime_ns: int = 0


Node = Directory | FileVersion


def split_key(prefix: str, key: str) -> tuple[list[str], bool] | None:
    """Return (path segments below `prefix`, whether `key` is a directory marker), or None for
    a key that cannot be a path here (another prefix, empty or dot segments, long names)."""
    if not key.startswith(prefix) or key == prefix:
        return None
    rel = key[len(prefix):]
    marker = rel.endswith("/")
    parts = (rel[:-1] if marker else rel).split("/")
    for p in parts:
        if p in ("", ".", "..") or len(p.encode()) > MAX_NAME_BYTES:
            return None
    return parts, marker


class Namespace:
    """The mount's tree, rebuilt from each listing; inodes of known versions are kept."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._next = ROOT_INODE + 1
        self._dirs: dict[str, Directory] = {"": Directory(ROOT_INODE, "", ROOT_INODE)}
        self._nodes: dict[int, Node] = {ROOT_INODE: self._dirs[""]}
        self._versions: dict[tuple[str, str, int], int] = {}  # (key, etag, size) -> ino
        self._current: dict[str, int] = {}  # key -> ino of the version in the tree
        self._lookups: dict[int, int] = {}  # file ino -> the kernel's lookup count
        self.skipped: list[str] = []  # keys of the last listing that are not in the tree
        self.files = self.bytes = 0

    def node(self, ino: int) -> Node | None:
        """Return the directory or file version an inode stands for."""
        return self._nodes.get(ino)

    def lookup(self, parent: int, name: bytes) -> Node | None:
        """Return the entry `name` of directory `parent`, if any."""
        d = self._nodes.get(parent)
        if not isinstance(d, Directory):
            return None
        if name == b".":
            return d
        if name == b"..":
            return self._nodes[d.parent]
        ino = d.entries.get(name)
        return None if ino is None else self._nodes[ino]

    def apply(self, objects: Iterable[Listed]) -> None:
        """Rebuild the tree from a complete listing of the prefix."""
        for d in self._dirs.values():
            d.entries.clear()
            d.mtime_ns = 0
        self._current.clear()
        self.skipped, self.files, self.bytes = [], 0, 0
        files: list[tuple[list[str], Listed]] = []
        for o in objects:
            split = split_key(self.prefix, o.key)
            if split is None:
                self.skipped.append(o.key)
            elif split[1]:
                self._directory(split[0])
            else:
                files.append((split[0], o))
        for parts, _ in files:
            self._directory(parts[:-1])
        for parts, o in files:  # after every directory, so a name that is both stays a dir
            parent = self._directory(parts[:-1])
            name = parts[-1].encode()
            if name in parent.entries:
                self.skipped.append(o.key)
                continue
            v = self._version(o)
            parent.entries[name] = v.ino
            self._current[o.key] = v.ino
            self.files, self.bytes = self.files + 1, self.bytes + o.size
            self._touch(parent, v.mtime_ns)
        self._drop_unused()

    def replace(self, old: FileVersion, new: Listed) -> FileVersion:
        """Put another version of `old`'s key in its place (seen at open); return it."""
        v = self._version(new)
        parts = old.key[len(self.prefix):].split("/")
        parent = self._dirs.get("/".join(parts[:-1]))
        if parent is not None and parent.entries.get(parts[-1].encode()) == old.ino:
            parent.entries[parts[-1].encode()] = v.ino
            self._current[old.key] = v.ino
        self._drop_unused()
        return v

    def remove(self, old: FileVersion) -> None:
        """Take `old`'s key out of the tree (gone at the origin)."""
        parts = old.key[len(self.prefix):].split("/")
        parent = self._dirs.get("/".join(parts[:-1]))
        if parent is not None and parent.entries.get(parts[-1].encode()) == old.ino:
            del parent.entries[parts[-1].encode()]
            self._current.pop(old.key, None)
        self._drop_unused()

    def paths(self) -> list[str]:
        """Return the paths (below the prefix) of the files in the tree."""
        return [key[len(self.prefix):] for key in sorted(self._current)]

    def looked_up(self, ino: int) -> None:
        """Count one lookup of `ino` by the kernel."""
        if isinstance(self._nodes.get(ino), FileVersion):
            self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, n: int) -> None:
        """Count `n` lookups the kernel let go; a superseded version nobody knows is dropped."""
        if ino not in self._lookups:
            return
        self._lookups[ino] -= n
        if self._lookups[ino] > 0:
            return
        del self._lookups[ino]
        v = self._nodes.get(ino)
        if isinstance(v, FileVersion) and self._current.get(v.key) != ino:
            del self._versions[(v.key, v.etag, v.size)]
            del self._nodes[ino]

    def _directory(self, parts: list[str]) -> Directory:
        parent = self._dirs[""]
        for i in range(len(parts)):
            path = "/".join(parts[:i + 1])
            d = self._dirs.get(path)
            if d is None:
                d = self._dirs[path] = Directory(self._alloc(), path, parent.ino)
                self._nodes[d.ino] = d
            parent.entries.setdefault(parts[i].encode(), d.ino)
            parent = d
        return parent

    def _version(self, o: Listed) -> FileVersion:
        ident = (o.key, o.etag, o.size)
        ino = self._versions.get(ident)
        if ino is None:
            ino = self._versions[ident] = self._alloc()
            self._nodes[ino] = FileVersion(ino, o.key, o.size, o.etag, int(o.mtime * 1e9))
        v = self._nodes[ino]
        assert isinstance(v, FileVersion)
        return v

    def _touch(self, d: Directory, mtime_ns: int) -> None:
        while True:  # a directory's mtime is its newest file's, at any depth
            d.mtime_ns = max(d.mtime_ns, mtime_ns)
            if d.ino == ROOT_INODE:
                return
            parent = self._nodes[d.parent]
            assert isinstance(parent, Directory)
            d = parent

    def _drop_unused(self) -> None:
        """Forget file versions neither in the tree nor known to the kernel."""
        current = set(self._current.values())
        for ident, ino in list(self._versions.items()):
            if ino not in current and ino not in self._lookups:
                del self._versions[ident]
                del self._nodes[ino]

    def _alloc(self) -> int:
        ino, self._next = self._next, self._next + 1
        return ino
