"""A local cache group: n node processes of one site registered in one etcd."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.stack.node import NodeProcess

_ids = itertools.count()


class LocalGroup:
    """`n` cachenode processes of one site, registered in etcd, with a shared origin."""

    def __init__(self, base: Path, origin_env: Mapping[str, str], etcd: str, n: int = 3,
                 *args: str, cluster: str | None = None, site: str = "s1") -> None:
        self.base, self.origin_env, self.etcd, self.args = Path(base), origin_env, etcd, args
        self.cluster = cluster or f"c{next(_ids)}-{int(time.time() * 1000) % 10**8}"
        self.site = site
        self.nodes: list[NodeProcess] = []
        for _ in range(n):
            self.add(start=False)

    def add(self, start: bool = True) -> NodeProcess:
        """Create (and by default start) one more node of the group."""
        i = len(self.nodes)
        node = NodeProcess(self.base / f"n{i}", self.origin_env, "--etcd", self.etcd,
                           "--cluster", self.cluster, "--site", self.site, "--node-id",
                           f"n{i}", "--lease-ttl", "4s", *self.args)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def start(self) -> LocalGroup:
        """Start every node at once and wait until all see the whole group."""
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.wait_ready()
        self.wait_view(len(self.nodes))
        return self

    def up(self) -> list[NodeProcess]:
        """Return the nodes whose process is running."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_view(self, members: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every running node sees `members` nodes up; return their views."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = [n.ring() for n in self.up()]
            ok = [sum(m["state"] == "up" for m in v["members"]) == members for v in views]
            if all(ok):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"group did not converge on {members} nodes: {views}")
            time.sleep(0.1)

    @property
    def seeds(self) -> list[str]:
        """Return host:port of every node's HTTP API."""
        return [f"127.0.0.1:{n.http_port}" for n in self.nodes]

    def metric(self, name: str, **labels: str) -> float:
        """Return a metric summed over the running nodes."""
        return sum(n.metric(name, **labels) for n in self.up())

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for n in self.nodes:
            try:
                n.stop()
            except RuntimeError:
                pass

    def __enter__(self) -> LocalGroup:
        try:
            return self.start()
        except BaseException:  # __exit__ does not run: stop the nodes already started
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
