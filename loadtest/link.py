"""A thin origin link: a token-bucket reverse proxy on loopback, in its own process.

    .venv/bin/python loadtest/link.py --upstream http://127.0.0.1:8333 --gbit 1 --latency-ms 5-20

Every response body crosses one shared link of `--gbit` Gbit/s (FIFO, 256 KiB chunks), and
each request waits a delay drawn from `--latency-ms` before it is forwarded (a distant
region's object store). `tc` qdiscs are not available here, hence a proxy; it is
tests/s3proxy.CountingProxy, run in a process of its own so that its CPU can be measured
apart (`Link.cpu_seconds()`). Prints its URL on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import harness as h


class Link:
    """A link process in front of `upstream`: start(), url, cpu_seconds(), stop()."""

    def __init__(self, upstream: str, gbit: float, latency_ms: tuple[float, float]) -> None:
        self.upstream, self.gbit, self.latency_ms = upstream, gbit, latency_ms
        self.port = h.free_port()
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        """Return the link's URL, to use as the origin's endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def rate_bytes_s(self) -> float:
        """Return the link rate in bytes per second."""
        return self.gbit * 1e9 / 8

    def describe(self) -> dict[str, Any]:
        """Return the link's settings, for a result file."""
        return {"gbit": self.gbit, "latency_ms": list(self.latency_ms), "url": self.url}

    def start(self) -> Link:
        """Spawn the proxy and wait until it listens."""
        lo, hi = self.latency_ms
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--upstream", self.upstream,
             "--gbit", str(self.gbit), "--latency-ms", f"{lo}-{hi}", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, start_new_session=True)
        h.wait_port(self.port, self.proc)
        return self

    def cpu_seconds(self) -> float:
        """Return the CPU seconds the proxy process has used (0 if not running)."""
        return h.cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        """Stop the proxy process."""
        h.stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_latency(text: str) -> tuple[float, float]:
    """Return (low, high) milliseconds from "10" or "5-20"."""
    lo, _, hi = text.partition("-")
    return float(lo), float(hi or lo)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True)
    p.add_argument("--gbit", type=float, default=1.0, help="link rate, Gbit/s (0: unshaped)")
    p.add_argument("--latency-ms", type=parse_latency, default=(5.0, 20.0))
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    import uvloop

    from tests.s3proxy import CountingProxy

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the proxy's loop: as the nodes'
    lo, hi = a.latency_ms
    proxy = CountingProxy(a.upstream, port=a.port or None,
                          rate_bytes_s=a.gbit * 1e9 / 8 if a.gbit else None,
                          latency_s=lo / 1e3, latency_max_s=hi / 1e3)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with proxy:
        print(proxy.endpoint_url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
