"""Child processes of the local stack: free loopback ports, spawning in a session, stopping."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

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


_die_with_parent = False  # set once by blockcache-stack (die_with_parent), never by tests

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have every child started from now on killed when this process dies, even by SIGKILL.

    Linux ties it to the thread that started the child: only a program that starts its
    children from its main thread (blockcache-stack) may turn it on; the tests start servers
    from executor threads, whose end would kill them.
    """
    global _die_with_parent
    _die_with_parent = True


def child_setup() -> Callable[[], None] | None:
    """Return the preexec_fn that makes a child die with this process, if that is on."""
    if not _die_with_parent:
        return None
    parent = os.getpid()

    def setup() -> None:  # in the child, between fork and exec
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: follow it now
            os._exit(1)

    return setup


def spawn(command: list[str], cwd: Path, env: dict[str, str],
          log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session (own process group), logging to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=child_setup())


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
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # unkillable (D state): say so, do not hang
                pass
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


class Server:
    """A server process with a log: `start()` and `stop()`, as a (sync or async) context."""

    log_path: Path

    def start(self) -> Self:
        """Start the server and return it once it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server."""
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the server log."""
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
