"""Run `cachectl mount --foreground` as a process for tests and benchmarks: wait until the
mount is in the mount table, stop it with SIGTERM or kill -9, and always leave no mount."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from client.mount.mountpoint import FSTYPE, detach, find_mount, is_live
from tests.servers import ChildProcess

PR_SET_PDEATHSIG = 1
CACHECTL = str(Path(sys.executable).parent / "cachectl")


def _term_with_parent() -> None:
    """Have the kernel send SIGTERM to the mount when the test process dies (even of a
    signal, when no finally runs), so no mount outlives its test."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class MountProcess(ChildProcess):
    """A `cachectl mount` of one prefix on one directory."""

    name = "cachectl mount"

    def __init__(self, seeds: Sequence[str], url: str, mountpoint: Path, *args: str,
                 log_path: Path | None = None) -> None:
        self.seeds, self.url, self.mountpoint, self.args = list(seeds), url, mountpoint, args
        self.log_path = log_path or mountpoint.with_name(mountpoint.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """Return the command line."""
        return [CACHECTL, "--nodes", ",".join(self.seeds), "mount", self.url,
                str(self.mountpoint), "--foreground", *self.args]

    def start(self, timeout_s: float = 30.0) -> MountProcess:
        """Start the mount and wait until it is in the mount table."""
        try:
            self.mountpoint.mkdir(parents=True)
        except OSError:
            pass  # there already (perhaps a stale mount, which the mount recovers)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_term_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if is_live(str(self.mountpoint)):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        self.cleanup()
        raise RuntimeError(f"not mounted within {timeout_s}s: {self.log()}")

    @property
    def mounted(self) -> bool:
        """Return whether a blockcache mount is on the mount point."""
        e = find_mount(str(self.mountpoint))
        return e is not None and e.fstype == FSTYPE

    def log(self, chars: int = 3000) -> str:
        """Return the tail of the mount's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def cleanup(self) -> None:
        """Stop the process if it runs (SIGTERM, then SIGKILL) and detach any mount left."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for _ in range(3):
            if not self.mounted:
                return
            try:
                detach(str(self.mountpoint))
            except Exception:  # noqa: BLE001 - best effort, tried again
                time.sleep(0.2)

    def __enter__(self) -> MountProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
