"""blockcache-stack: it starts SeaweedFS, etcd, nodes and a coordinator, the export lines it
prints reach them (a read through the cache, cachectl), and SIGINT stops every child."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0


class Output:
    """The stack's stdout, read line by line in a thread (the pipe is bounded by the queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue(maxsize=1000)
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until_started(self) -> list[str]:
        """Return the lines up to "started in", within START_TIMEOUT_S."""
        got: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (got and got[-1].startswith("started in")):
            try:
                got.append(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"the stack did not start: {got}") from None
        return got


def ignore_sigint() -> None:
    """Ignore SIGINT in the child, before it runs the stack."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def descendants(pid: int) -> dict[int, str]:
    """Return pid -> command line of every process below `pid`."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found[child] = cmdline(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """Return a process's command line ("" once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def client(endpoint: str, key: str, secret: str) -> Any:
    """Return a boto3 S3 client (path style, no retries)."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"max_attempts": 1}))


@pytest.mark.integration
@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
def test_the_stack_serves_a_read_and_stops_everything_on_sigint(tmp_path: Path,
                                                                 auth: bool) -> None:
    cmd = [str(BIN / "blockcache-stack"), "--nodes", "2", "--dir", str(tmp_path / "stack")]
    # Started with SIGINT ignored, as a shell's `blockcache-stack &` is: SIGINT must still stop it.
    with subprocess.Popen(cmd + (["--auth"] if auth else []), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                          preexec_fn=ignore_sigint) as proc:
        output = Output(proc)
        try:
            children = use_the_stack(proc, output.until_started(), auth)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            output.thread.join(10)
    left = {pid: cmd for pid, cmd in children.items() if cmdline(pid) == cmd}
    for pid in left:  # a failed test leaves nothing behind either
        os.killpg(pid, signal.SIGKILL)
    assert not left, f"still running after the stack stopped: {left}"


def use_the_stack(proc: subprocess.Popen[str], out: list[str], auth: bool) -> dict[int, str]:
    """Read through the stack as its export lines say; return its processes."""
    children = descendants(proc.pid)
    kinds = " ".join(children.values())
    for program in ("weed", "etcd", "cachenode", "cachecoordinator"):
        assert program in kinds, children
    exports = dict(shlex.split(line)[1].split("=", 1) for line in out
                   if line.startswith("export "))
    origin = next(line.split()[3] for line in out if "origin (SeaweedFS S3)" in line)
    client(origin, "blockcache", "blockcache-secret").put_object(
        Bucket="models", Key="tiny/v1/config.json", Body=b'{"hidden_size": 8}')
    s3 = client(exports["AWS_ENDPOINT_URL"], exports["AWS_ACCESS_KEY_ID"],
                exports["AWS_SECRET_ACCESS_KEY"])
    body = s3.get_object(Bucket="models", Key="tiny/v1/config.json")
    assert body["Body"].read() == b'{"hidden_size": 8}'
    env = {**os.environ, **exports}
    ring = subprocess.run([str(BIN / "cachectl"), "ring"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert ring.returncode == 0 and "2 nodes, 2 up" in ring.stdout, ring
    assert ("CACHECTL_TOKEN" in exports) == auth
    return children


@pytest.mark.integration
def test_a_killed_stack_takes_its_servers_with_it(tmp_path: Path) -> None:
    """kill -9 gives the stack no chance to stop anything: its children die with it."""
    cmd = [str(BIN / "blockcache-stack"), "--nodes", "1", "--dir", str(tmp_path / "stack")]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        output = Output(proc)
        try:
            output.until_started()
            children = descendants(proc.pid)
            assert len(children) >= 4, children  # weed, etcd, a node, the coordinator
            proc.kill()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            output.thread.join(10)
    deadline = time.monotonic() + 10
    while (left := {p: c for p, c in children.items() if cmdline(p) == c}) and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    for pid in left:  # a failed test leaves nothing behind either
        os.killpg(pid, signal.SIGKILL)
    assert not left, f"still running after the stack was killed: {left}"
