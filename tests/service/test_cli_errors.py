"""cachectl's connection errors are one line in a person's words: no library wording
(`ssl:default`, `Connect call failed`, gRPC's status dumps) and no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from client.errors import connection_reason

CACHECTL = str(Path(sys.executable).parent / "cachectl")
NOISE = ("ssl:default", "Connect call failed", "Traceback", "ConnectionFailedError", "UNKNOWN:")


def closed_port() -> int:
    """Return a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("flags, said", [
    (["--nodes", "127.0.0.1:{port}", "ring"], "no seed node answered: 127.0.0.1:{port}: "
     "connection refused"),
    (["--nodes", "127.0.0.1:{port}", "stat", "s3://b/k"], "no seed node answered: "
     "127.0.0.1:{port}: connection refused"),
    (["--etcd", "http://127.0.0.1:{port}", "ring"], "etcd unreachable: http://127.0.0.1:{port}: "
     "connection refused"),
    (["--coordinator", "127.0.0.1:{port}", "jobs", "--retry-for", "0"], "cannot reach the "
     "coordinator at http://127.0.0.1:{port}: connection refused"),
])
def test_an_unreachable_server_is_one_plain_line(flags: list[str], said: str) -> None:
    port = closed_port()
    r = subprocess.run([CACHECTL, *(f.format(port=port) for f in flags)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == f"cachectl: {said.format(port=port)}\n"
    assert not [n for n in NOISE if n in r.stderr]


def test_connection_reasons_name_the_cause() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    assert connection_reason(refused) == "connection refused"
    assert connection_reason(socket.gaierror(-2, "Name or service not known")) == "unknown host"
    assert connection_reason(TimeoutError()) == "timed out"

    class ConnectionFailedError(Exception):  # aetcd's, carrying gRPC's text
        pass

    grpc_text = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                 "Failed to connect to remote host: Connection refused")
    assert connection_reason(ConnectionFailedError(grpc_text)) == "connection refused"
    assert connection_reason(ConnectionFailedError("other")) == "cannot connect"
