"""A `cachecoordinator` process on a free loopback port: start, call its API, kill -9."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.stack.procs import ChildProcess, child_setup, free_port

CACHECOORDINATOR = str(Path(sys.executable).parent / "cachecoordinator")
FAST = ("--lease-ttl", "3s", "--retry-base", "0.5s", "--reconcile-interval", "0.5s",
        "--node-timeout", "20s")


class CoordinatorProcess(ChildProcess):
    """A coordinator replica in its own process on a free loopback port."""

    name = "cachecoordinator"

    def __init__(self, log_dir: Path, origin_env: Mapping[str, str], etcd: str, cluster: str,
                 replica_id: str, *args: str) -> None:
        self.origin_env, self.port = dict(origin_env), free_port()
        self.args = ["--etcd", etcd, "--cluster", cluster, "--id", replica_id, "--http",
                     f"127.0.0.1:{self.port}", *FAST, *args]
        self.id = replica_id
        self.auth: dict[str, str] = {}  # headers of every call (an admin token, say)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(log_dir) / f"coordinator-{replica_id}.log"

    @property
    def url(self) -> str:
        """Return the API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> CoordinatorProcess:
        """Start the process and wait until /healthz answers."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([CACHECOORDINATOR, *self.args],
                                         env={**os.environ, **self.origin_env}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=child_setup())
        try:
            return self._wait_healthy(self.proc, timeout_s)
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self.stop()
            raise

    def _wait_healthy(self, proc: subprocess.Popen[bytes], timeout_s: float
                      ) -> CoordinatorProcess:
        """Wait until /healthz answers 200, or raise with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"cachecoordinator exited with {proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"cachecoordinator not ready: {self.log_path.read_text()[-2000:]}")

    def call(self, method: str, path: str, body: Any = None,
             timeout_s: float = 30.0) -> tuple[int, Any]:
        """Send one API request; return (status, parsed JSON body)."""
        status, _, answer = self.request(method, path, body, timeout_s)
        return status, answer

    def request(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """Send one API request (with `self.token` if set); return (status, headers, JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        sent = {"Content-Type": "application/json", **self.auth, **(headers or {})}
        try:
            data = body if body is None or isinstance(body, bytes) else json.dumps(body)
            conn.request(method, path, body=data, headers=sent)
            r = conn.getresponse()
            raw = r.read()
            answer = json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw
            return r.status, dict(r.getheaders()), answer
        finally:
            conn.close()

    def leading(self) -> bool:
        """Return whether this replica is the leader now."""
        return bool(self.call("GET", "/healthz")[1]["leader"])

    def wait_leader(self, timeout_s: float = 20.0) -> None:
        """Wait until this replica leads."""
        deadline = time.monotonic() + timeout_s
        while not self.leading():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.id} did not become leader in {timeout_s}s")
            time.sleep(0.1)

    def job(self, job_id: str) -> dict[str, Any]:
        """Return a job's JSON."""
        status, body = self.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, body
        return body["job"]  # type: ignore[no-any-return]

    def wait_job(self, job_id: str, timeout_s: float = 120.0,
                 states: tuple[str, ...] = ("complete", "failed", "cancelled")) -> dict[str, Any]:
        """Wait until a job reaches one of `states`; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']}: {job}")
            time.sleep(0.2)
