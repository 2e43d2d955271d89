"""Child processes of the local stack: free loopback ports, spawning in a session, stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

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


def stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals, grace_s: float) -> None:
    """Send `sig` to a child's process group, SIGKILL it after `grace_s`, and reap it."""
    for s, wait_s in ((sig, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, s)
            os.killpg(proc.pid, signal.SIGCONT)  # a paused child must see the signal too
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
