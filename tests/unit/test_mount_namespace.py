"""The mount's namespace: listing -> tree, one inode per version, lookups and forgets."""

from __future__ import annotations

from client.mount.mountpoint import parse_mountinfo
from client.mount.namespace import ROOT_INODE, Directory, FileVersion, Listed, Namespace
from client.mount.readahead import Stream

MiB = 2**20


def tree(ns: Namespace, ino: int = ROOT_INODE, path: str = "") -> dict[str, int]:
    """Return {path: size} of every file under `ino` (directories end with /)."""
    out: dict[str, int] = {}
    d = ns.node(ino)
    assert isinstance(d, Directory)
    for name, child in d.entries.items():
        node = ns.node(child)
        p = path + name.decode()
        if isinstance(node, Directory):
            out[p + "/"] = 0
            out.update(tree(ns, child, p + "/"))
        else:
            assert isinstance(node, FileVersion)
            out[p] = node.size
    return out


def test_a_listing_becomes_a_tree_with_nested_dirs_markers_and_odd_names() -> None:
    ns = Namespace("m/v1/")
    ns.apply([Listed("m/v1/config.json", 10, "a"), Listed("m/v1/sub dir/tök en.json", 5, "b"),
              Listed("m/v1/a/b/c.bin", 7, "c"), Listed("m/v1/empty/", 0, "d"),
              Listed("m/v1/x//y", 1, "e"), Listed("m/v1/../z", 1, "f"),
              Listed("m/v1/" + "n" * 256, 1, "g"), Listed("m/v10/other", 1, "h"),
              Listed("m/v1/", 0, "i")])
    assert tree(ns) == {"config.json": 10, "sub dir/": 0, "sub dir/tök en.json": 5, "a/": 0,
                        "a/b/": 0, "a/b/c.bin": 7, "empty/": 0}
    assert set(ns.skipped) == {"m/v1/x//y", "m/v1/../z", "m/v1/" + "n" * 256, "m/v10/other",
                               "m/v1/"}
    assert (ns.files, ns.bytes) == (3, 22)
    assert sorted(ns.paths()) == ["a/b/c.bin", "config.json", "sub dir/tök en.json"]
    sub = ns.lookup(ROOT_INODE, b"sub dir")
    assert isinstance(sub, Directory)
    assert ns.lookup(sub.ino, b"..") is ns.node(ROOT_INODE)
    assert ns.lookup(ROOT_INODE, b"nope") is None


def test_a_name_that_is_a_file_and_a_directory_stays_a_directory() -> None:
    ns = Namespace("")
    ns.apply([Listed("f", 1, "a"), Listed("f/g", 2, "b")])
    assert tree(ns) == {"f/": 0, "f/g": 2}
    assert ns.skipped == ["f"]


def test_an_inode_is_one_version_kept_across_listings_and_dropped_once_forgotten() -> None:
    ns = Namespace("p/")
    ns.apply([Listed("p/w.bin", 10, "v1", 100.0)])
    v1 = ns.lookup(ROOT_INODE, b"w.bin")
    assert isinstance(v1, FileVersion) and v1.mtime_ns == 100 * 10**9
    ns.looked_up(v1.ino)
    ns.apply([Listed("p/w.bin", 10, "v1", 100.0)])
    assert ns.lookup(ROOT_INODE, b"w.bin") is v1  # same version, same inode: its page cache
    ns.apply([Listed("p/w.bin", 12, "v2", 200.0)])
    v2 = ns.lookup(ROOT_INODE, b"w.bin")
    assert isinstance(v2, FileVersion) and v2.ino != v1.ino and v2.etag == "v2"
    assert ns.node(v1.ino) is v1  # the kernel still knows v1 (an open file reads it)
    ns.forget(v1.ino, 1)
    assert ns.node(v1.ino) is None
    v3 = ns.replace(v2, Listed("p/w.bin", 13, "v3"))  # an open saw a newer version
    assert ns.lookup(ROOT_INODE, b"w.bin") is v3 and ns.node(v2.ino) is None
    ns.remove(v3)
    assert ns.lookup(ROOT_INODE, b"w.bin") is None
    root = ns.node(ROOT_INODE)
    assert isinstance(root, Directory) and root.mtime_ns == 200 * 10**9


def test_a_sequential_reader_gets_growing_read_ahead_a_random_one_none() -> None:
    s = Stream(4 * MiB, most=8)
    got = [s.advance(i * MiB, MiB) for i in range(24)]
    assert got[:8] == [0] * 8  # no longer than the kernel's read-ahead (4 MiB) plus a block
    assert got[8] == 2 and max(got) == 8 and got[-1] == 8  # 2, 4, 8 as blocks are entered
    fault = Stream(4 * MiB, most=8)  # one mmap fault: the kernel reads 4 MiB around it
    assert [fault.advance(40 * MiB + i * MiB, MiB) for i in range(4)] == [0] * 4
    r = Stream(4 * MiB, most=8)
    assert [r.advance(off, 256 * 1024) for off in (0, 40 * MiB, 9 * MiB, 77 * MiB)] == [0] * 4
    assert s.advance(0, MiB) == 0  # a jump back starts a new run
    off = Stream(4 * MiB, most=0)
    assert max(off.advance(i * MiB, MiB) for i in range(16)) == 0


def test_mountinfo_lines_give_device_path_and_type() -> None:
    text = ("36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - fuse.blockcache blockcache "
            "ro,user_id=0\n"
            "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n")
    entries = parse_mountinfo(text)
    assert [(e.mount_id, e.device, e.path, e.fstype) for e in entries] == [
        (36, "98:0", "/mnt/a b", "fuse.blockcache"),
        (40, "0:37", "/sys/fs/cgroup/systemd", "cgroup")]
