"""A `cachenode` process on free loopback ports: start, wait ready, call, kill -9, restart."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cachenode.auth.cluster import HEADER as CLUSTER_AUTH
from cachenode.auth.cluster import ClusterKey
from client.stack.procs import ChildProcess, child_setup, free_port

CACHENODE = str(Path(sys.executable).parent / "cachenode")


class NodeProcess(ChildProcess):
    """A cache node in its own process, on free loopback ports."""

    name = "cachenode"

    def __init__(self, data_dir: Path, origin_env: Mapping[str, str], *args: str,
                 wrapper: Sequence[str] = ()) -> None:
        """Describe a node; `wrapper` runs it, e.g. ["prlimit", "--nofile=256:256", "--"]."""
        self.data_dir, self.origin_env, self.args = Path(data_dir), dict(origin_env), list(args)
        self.wrapper = list(wrapper)
        self.http_port, self.grpc_port, self.s3_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.cluster_key = _cluster_key(self.args)  # signs /ring and /metrics when auth is on

    @property
    def url(self) -> str:
        """Return the node's HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def s3_url(self) -> str:
        """Return the endpoint URL of the node's S3 API (AWS_ENDPOINT_URL of a client)."""
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        """Start the process and wait until /readyz answers 200 (else stop it and raise)."""
        self.spawn()
        try:
            return self.wait_ready(timeout_s)
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self.stop()
            raise

    def spawn(self) -> None:
        """Start the process without waiting for it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, CACHENODE, "--data-dir", str(self.data_dir), "--http",
                 f"127.0.0.1:{self.http_port}", "--grpc", f"127.0.0.1:{self.grpc_port}",
                 "--s3", f"127.0.0.1:{self.s3_port}", *self.args],
                env={**os.environ, **self.origin_env}, stdout=log, stderr=subprocess.STDOUT,
                # Own session, hence own scheduler autogroup (as etcd and SeaweedFS have): else
                # the node's one loop thread competes thread-for-thread with the test's reader
                # threads and gets a few % of a CPU (1-2 s event loop stalls, leases at risk).
                start_new_session=True, preexec_fn=child_setup())

    def wait_ready(self, timeout_s: float = 30.0) -> NodeProcess:
        """Wait until /readyz answers 200, or raise with the log's tail."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cachenode exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log_path.read_text()[-2000:]
        raise RuntimeError(f"cachenode not ready in {timeout_s}s: {tail}")

    def get(self, path: str, headers: Mapping[str, str] | None = None,
            method: str = "GET", timeout_s: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        """Send one request and return (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout_s)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """Return the sum of a metric's samples whose labels include `labels` (0 if none).

        `metric("x_total")` sums every label set; `metric("x_total", op="get")` only those
        with `op="get"` among their labels.
        """
        text = self.get("/metrics", self._signed("/metrics"))[2].decode()
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def ring(self) -> dict[str, Any]:
        """Return the node's view of its group (GET /ring)."""
        status, _, body = self.get("/ring", self._signed("/ring"), timeout_s=5.0)
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def _signed(self, path: str) -> dict[str, str]:
        """Return the headers of a GET of `path` signed with the cluster secret, if any."""
        if self.cluster_key is None:
            return {}
        return {CLUSTER_AUTH: self.cluster_key.sign("GET", path, "", {}, time.time())}

    def blocks_on_disk(self) -> int:
        """Return the bytes of block files under the data dir."""
        total = 0
        for f in (self.data_dir / "blocks").rglob("*"):
            try:
                if f.is_file():
                    total += f.stat().st_size
            except FileNotFoundError:
                pass  # evicted while we looked
        return total


def _cluster_key(args: Sequence[str]) -> ClusterKey | None:
    """Return the cluster key a node's --cluster-secret-file argument names, if any."""
    args = list(args)
    if "--cluster-secret-file" not in args:
        return None
    return ClusterKey.from_file(Path(args[args.index("--cluster-secret-file") + 1]))
