"""`cachectl mount` for real: SeaweedFS (through a counting proxy) + etcd + a 3-node group +
a FUSE mount process. Every mount is unmounted in a finally (MountProcess.cleanup)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.mount.group import DOWN_FOR_S
from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern
from tests.modelfiles import drop_page_cache, tensor_spans, write_safetensors
from tests.mountproc import CACHECTL, MountProcess
from tests.s3proxy import CountingProxy
from tests.servers import free_port

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
KERNEL_RA = MiB  # the mount's default --kernel-readahead


@pytest.fixture(scope="module")
def mgroup(tmp_path_factory: pytest.TempPathFactory, s3, etcd  # type: ignore[no-untyped-def]
           ) -> Iterator[tuple[LocalGroup, CountingProxy]]:
    """One group for the tests that kill nothing (metadata trusted for 1 s only)."""
    with CountingProxy(s3.endpoint_url) as proxy:
        env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        with LocalGroup(tmp_path_factory.mktemp("mgroup"), env, etcd.endpoint, 3,
                        "--capacity", "2GiB", "--metadata-ttl", "1s") as g:
            yield g, proxy


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def scrape(port: int) -> dict[str, float]:
    """Return the mount's metrics without labels, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def origin_blocks(proxy: CountingProxy, bucket: str, key: str) -> list[int]:
    """Return the block indices the origin was asked for (ranged GETs of the key)."""
    out = []
    for (path, rng), n in proxy.range_gets.items():
        if path == f"/{bucket}/{key}":
            out += [int(rng.split("=")[1].split("-")[0]) // BS] * n
    return sorted(out)


MMAP_SHA = """
import hashlib, mmap, sys
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    print(hashlib.sha256(m[:]).hexdigest())
"""


def test_a_model_through_the_mount_reads_exact_and_is_read_only(  # type: ignore[no-untyped-def]
        mgroup, s3, tmp_path: Path) -> None:
    group, _ = mgroup
    bucket = s3.make_bucket("mount-model")
    files = {"config.json": pattern(321, 1), "model-00001-of-00002.safetensors":
             pattern(2 * BS + 17, 2), "model-00002-of-00002.safetensors": pattern(BS - 1, 3),
             "tokenizer/tok en ü.json": pattern(1000, 4), "a/b/c/deep.bin": pattern(5, 5),
             "empty.bin": b""}
    for rel, data in files.items():
        s3.put_object(bucket, f"qwen/v1/{rel}", data)
    s3.put_object(bucket, "qwen/v10/other.bin", b"not in the folder")
    s3.put_object(bucket, "qwen/v1/marker/", b"")
    mp = tmp_path / "mnt"
    port = free_port()
    with MountProcess(group.seeds, f"s3://{bucket}/qwen/v1", mp, "--metrics",
                      f"127.0.0.1:{port}") as m:
        seen = {str(p.relative_to(mp)) for p in mp.rglob("*") if p.is_file()}
        assert seen == set(files)
        assert (mp / "marker").is_dir() and not (mp / "other.bin").exists()
        shard = "model-00001-of-00002.safetensors"  # mmap first: page faults, not read(2)
        mmapped = subprocess.run([sys.executable, "-c", MMAP_SHA, str(mp / shard)],
                                 capture_output=True, text=True, timeout=60)
        assert mmapped.stdout.strip() == sha(files[shard]), mmapped.stderr
        for rel, data in files.items():
            assert os.stat(mp / rel).st_size == len(data)
            assert file_sha(mp / rel) == sha(data), rel
        st = os.stat(mp / "config.json")
        assert st.st_mode & 0o777 == 0o444 and st.st_blocks == 1
        du = subprocess.run(["du", "-sb", str(mp)], capture_output=True, text=True, check=True)
        assert int(du.stdout.split()[0]) >= sum(map(len, files.values()))
        assert os.statvfs(mp).f_files == len(files)
        metrics = scrape(port)
        total = sum(map(len, files.values()))
        assert metrics["blockcache_mount_fuse_read_bytes_total"] == total  # each byte once
        assert metrics["blockcache_mount_group_bytes_total"] == total
        assert metrics["blockcache_mount_page_cache_bytes"] >= total  # pages, rounded up
        assert metrics["blockcache_mount_files"] == len(files)
        for attempt in (lambda: open(mp / "config.json", "r+b"),
                        lambda: open(mp / "new.txt", "wb"), lambda: os.mkdir(mp / "d"),
                        lambda: os.unlink(mp / "config.json"),
                        lambda: os.rename(mp / "config.json", mp / "c2")):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        assert m.proc is not None
        m.proc.terminate()
        assert m.proc.wait(20) == 0
    assert not m.mounted
    assert "unmounted" in m.log() and "0 errors" in m.log()


LOADER = """
import hashlib, json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="np") as f:
    names = sys.argv[2:] or list(f.keys())
    print(json.dumps({n: hashlib.sha256(f.get_tensor(n).tobytes()).hexdigest() for n in names}))
"""


def load(path: Path, *names: str) -> dict[str, str]:
    """Return sha256 of each tensor as `safe_open` (mmap) reads it, in another process: a
    page fault there must not hold this process's GIL, which the origin proxy needs."""
    r = subprocess.run([sys.executable, "-c", LOADER, str(path), *names], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_safetensors_loads_every_tensor_and_a_lazy_read_fetches_only_its_blocks(  # type: ignore[no-untyped-def]
        mgroup, s3, tmp_path: Path) -> None:
    group, proxy = mgroup
    bucket = s3.make_bucket("mount-st")
    shard = tmp_path / "model.safetensors"
    tensors = write_safetensors(shard, 64, MiB, seed=7)  # 64 MiB: 17 blocks
    want = {n: sha(t.tobytes()) for n, t in tensors.items()}
    s3.put_file(bucket, "m/v1/model.safetensors", shard)
    spans = tensor_spans(shard)
    blocks = (shard.stat().st_size + BS - 1) // BS
    chosen = ["layers.5.weight", "layers.30.weight", "layers.58.weight"]
    mp = tmp_path / "mnt"
    with MountProcess(group.seeds, f"s3://{bucket}/m/v1/", mp):
        fills0 = group.metric("blockcache_fills_total")
        assert load(mp / "model.safetensors", *chosen) == {n: want[n] for n in chosen}
        fetched = origin_blocks(proxy, bucket, "m/v1/model.safetensors")
        touched, near = set(), set()
        for name in ["__header__", *chosen]:
            a, b = spans[name]
            touched |= set(range(a // BS, (b - 1) // BS + 1))
            near |= set(range(max(0, a - KERNEL_RA) // BS, (b - 1 + KERNEL_RA) // BS + 1))
        print(f"lazy read: blocks touched {sorted(touched)}, fetched {fetched} of {blocks}")
        assert len(fetched) == len(set(fetched))  # each block once
        assert touched <= set(fetched) <= near  # its blocks, give or take kernel read-around
        assert group.metric("blockcache_fills_total") - fills0 == len(fetched) < blocks / 2
        assert load(mp / "model.safetensors") == want  # every tensor, mmap'd by safe_open
        assert origin_blocks(proxy, bucket, "m/v1/model.safetensors") == list(range(blocks))


READER = """
import hashlib, sys, time
h, t0 = hashlib.sha256(), time.monotonic()
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
print(h.hexdigest(), round(time.monotonic() - t0, 2))
"""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_four_processes_read_one_shard_at_once_and_the_group_serves_one_copy(  # type: ignore[no-untyped-def]
        mgroup, s3, tmp_path: Path) -> None:
    group, proxy = mgroup
    bucket = s3.make_bucket("mount-herd")
    size = 300 * MiB
    src = tmp_path / "shard.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(size // (12 * MiB)):
            chunk = pattern(12 * MiB, 50 + i)
            h.update(chunk)
            f.write(chunk)
    s3.put_file(bucket, "m/shard.bin", src)
    src.unlink()
    mp = tmp_path / "mnt"
    with MountProcess(group.seeds, f"s3://{bucket}/m/", mp, "--memory", "64MiB") as m:
        how = drop_page_cache([mp / "shard.bin"])
        served0 = group.metric("blockcache_served_bytes_total")
        procs = [subprocess.Popen([sys.executable, "-c", READER, str(mp / "shard.bin")],
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        rss = 0
        while any(p.poll() is None for p in procs):
            assert m.proc is not None
            rss = max(rss, rss_bytes(m.proc.pid))
            time.sleep(0.1)
        outs = [p.communicate(timeout=120)[0].split() for p in procs]
        served = group.metric("blockcache_served_bytes_total") - served0
        print(f"page cache dropped with {how}; 4 readers took {[o[1] for o in outs]} s; the "
              f"group served {served / size:.2f} copies; mount RSS peak {rss / MiB:.0f} MiB")
        assert all(p.returncode == 0 for p in procs) and {o[0] for o in outs} == {h.hexdigest()}
        assert size <= served <= 1.25 * size  # about one copy for four readers
        assert origin_blocks(proxy, bucket, "m/shard.bin") == list(range(size // BS))
        assert rss < 64 * MiB + 160 * MiB  # --memory plus the interpreter


def test_an_open_file_keeps_its_version_and_a_new_open_sees_the_overwrite(  # type: ignore[no-untyped-def]
        mgroup, s3, tmp_path: Path) -> None:
    group, _ = mgroup
    bucket = s3.make_bucket("mount-pin")
    v1, v2 = pattern(16 * BS, 60), pattern(16 * BS + 3, 61)
    s3.put_object(bucket, "m/w.bin", v1)
    mp = tmp_path / "mnt"
    with MountProcess(group.seeds, f"s3://{bucket}/m/", mp, "--list-ttl", "60s",
                      "--readahead", "2") as m:
        f = open(mp / "w.bin", "rb", buffering=0)
        try:
            assert f.read(2 * MiB) == v1[:2 * MiB]
            s3.put_object(bucket, "m/w.bin", v2)
            time.sleep(1.5)  # past the nodes' --metadata-ttl 1s
            got = bytearray(f.read(2 * MiB))
            with pytest.raises(OSError) as e:  # v1's blocks not fetched yet are gone
                while chunk := f.read(MiB):
                    got += chunk
            assert e.value.errno == errno.EIO
            assert bytes(got) == v1[2 * MiB:2 * MiB + len(got)]  # never a byte of v2
            assert os.fstat(f.fileno()).st_size == len(v1)
        finally:
            f.close()
        assert file_sha(mp / "w.bin") == sha(v2)  # ESTALE at open: the kernel looked again
        assert os.stat(mp / "w.bin").st_size == len(v2)
        assert "m/w.bin" in m.log() and "gone at the origin" in m.log()


def test_a_crashed_mount_is_recovered_and_sigterm_with_open_files_says_so(  # type: ignore[no-untyped-def]
        mgroup, s3, tmp_path: Path) -> None:
    group, _ = mgroup
    bucket = s3.make_bucket("mount-life")
    data = pattern(3 * BS, 70)
    s3.put_object(bucket, "m/f.bin", data)
    mp = tmp_path / "mnt"
    crashed = MountProcess(group.seeds, f"s3://{bucket}/m/", mp)
    try:
        crashed.start()
        crashed.kill9()
        with pytest.raises(OSError) as e:
            os.statvfs(mp)
        assert e.value.errno == errno.ENOTCONN
        with MountProcess(group.seeds, f"s3://{bucket}/m/", mp) as m:
            assert "stale mount" in m.log()
            f = open(mp / "f.bin", "rb", buffering=0)
            assert f.read(10) == data[:10]
            assert m.proc is not None
            m.proc.terminate()
            assert m.proc.wait(20) == 0
            assert f.read(10) == data[10:20]  # in the page cache still
            f.seek(2 * BS)
            with pytest.raises(OSError) as e:
                f.read(10)  # not: the mount is gone
            assert e.value.errno == errno.ENOTCONN
            f.close()
            assert "with 1 file(s) open (m/f.bin)" in m.log()
        assert not os.path.ismount(mp)
        # without --foreground: returns once mounted; an umount ends it
        r = subprocess.run([CACHECTL, "--nodes", group.seeds[0], "mount", f"s3://{bucket}/m/",
                            str(mp), "--log-file", str(tmp_path / "bg.log")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "mounted" in r.stdout and (mp / "f.bin").read_bytes() == data
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
        deadline = time.monotonic() + 20
        while "unmounted" not in (tmp_path / "bg.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "bg.log").read_text()
            time.sleep(0.1)
    finally:
        crashed.cleanup()


def test_kill9_of_an_owner_mid_read_and_the_read_completes_exact(  # type: ignore[no-untyped-def]
        group: LocalGroup, s3, bucket, tmp_path: Path) -> None:
    data = pattern(200 * MiB, 80)
    s3.put_object(bucket, "m/big.bin", data)
    mp = tmp_path / "mnt"
    progress = [0]
    result: list[object] = []

    def read() -> None:
        h = hashlib.sha256()
        try:
            with open(mp / "big.bin", "rb", buffering=0) as f:
                while chunk := f.read(MiB):
                    h.update(chunk)
                    progress[0] += len(chunk)
            result.append(h.hexdigest())
        except OSError as e:
            result.append(e)

    with MountProcess(group.seeds, f"s3://{bucket}/m/", mp) as m:
        t = threading.Thread(target=read)
        t.start()
        deadline = time.monotonic() + 120
        while progress[0] < len(data) // 4:
            assert time.monotonic() < deadline and t.is_alive(), result
            time.sleep(0.02)
        group.nodes[1].kill9()
        killed_at = progress[0]
        t.join(180)
        assert not t.is_alive() and result == [sha(data)], (result, m.log())
        print(f"killed n1 at {killed_at // MiB} MiB of {len(data) // MiB}; the mount logged "
              f"{m.log(100000).count('failed')} node failures")


def test_origin_down_serves_cached_blocks_and_all_down_is_eio_within_the_bound(  # type: ignore[no-untyped-def]
        group: LocalGroup, s3, bucket, proxy, tmp_path: Path) -> None:
    a, b = pattern(40 * MiB, 90), pattern(20 * MiB, 91)
    s3.put_object(bucket, "m/a.bin", a)
    s3.put_object(bucket, "m/b.bin", b)
    mp = tmp_path / "mnt"
    bound = 5.0
    with MountProcess(group.seeds, f"s3://{bucket}/m/", mp, "--read-timeout", "5s",
                      "--memory", "16MiB") as m:
        assert file_sha(mp / "a.bin") == sha(a)  # its blocks are on their owners now
        proxy.stop()  # the origin is gone
        drop_page_cache([mp / "a.bin"])
        served0 = group.metric("blockcache_served_bytes_total")
        assert file_sha(mp / "a.bin") == sha(a)
        assert group.metric("blockcache_served_bytes_total") - served0 >= 20 * MiB
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            (mp / "b.bin").read_bytes()  # never cached, origin down
        took_b = time.monotonic() - t0
        assert e.value.errno == errno.EIO and took_b < bound + 3, took_b
        failed_at = time.monotonic()
        for n in group.nodes:
            n.kill9()
        drop_page_cache([mp / "a.bin"])
        assert sorted(os.listdir(mp)) == ["a.bin", "b.bin"]  # no network for the namespace
        assert os.stat(mp / "a.bin").st_size == len(a)
        time.sleep(max(0.0, failed_at + DOWN_FOR_S - time.monotonic()))  # a full try again
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            (mp / "a.bin").read_bytes()
        took_a = time.monotonic() - t0
        assert e.value.errno == errno.EIO and 1.0 < took_a < bound + 3, took_a
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            (mp / "a.bin").read_bytes()
        took_again = time.monotonic() - t0
        assert e.value.errno == errno.EIO and took_again < 1.5, took_again  # known down
        print(f"EIO after {took_b:.1f}s (origin down, block not cached), {took_a:.1f}s (every "
              f"node down) and {took_again:.1f}s (again); --read-timeout {bound:g}s")
        assert m.proc is not None
        m.proc.terminate()
        assert m.proc.wait(20) == 0
    assert "unavailable" in m.log() and "unmounted" in m.log()
