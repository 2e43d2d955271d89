"""Shared load-test helpers: an nginx in a temp dir, wrk with request rotation, process CPU time.

Everything here is loopback-only and self-contained: `Nginx` writes its own config, pid, logs
and temp paths under a directory it is given and listens on a free 127.0.0.1 port; `wrk_run`
rotates over a list of (path, headers) requests with a generated Lua script; `cpu_seconds`
reads utime+stime of a process (all its threads) from /proc. Ideas (and the nginx settings)
follow loadtest/sendfile_probe.py.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

MiB = 1024 * 1024
GiB = 1024 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# ---------------------------------------------------------------- processes and CPU time

def exit_code(failed: BaseException | None, error: str) -> int:
    """Return a benchmark's exit status: 0, 130 after Ctrl-C, else 1 (saying the error)."""
    if failed is None:
        return 0
    if isinstance(failed, KeyboardInterrupt):
        return 130
    print(error, file=sys.stderr)
    return 1


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout_s: float = 15.0) -> None:
    """Wait until 127.0.0.1:`port` accepts connections (or `proc` exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout_s:g}s")


def cpu_seconds(pid: int) -> float:
    """Return utime+stime of a process, all threads included (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float]:
    """Return (user, system) CPU seconds of a process, all threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """Return utime+stime summed over every live process of a process group."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) of /proc/pid/stat
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def _proc_table() -> dict[int, tuple[int, float]]:
    """Return {pid: (ppid, utime+stime seconds)} of every live process."""
    out: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        out[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / CLK_TCK)
    return out


class ForeignLoad:
    """CPU used by processes that are neither ours (this process and its descendants) nor
    kernel threads, between `start()` and `stop()`: another workload on the machine.

    A process that both starts and exits inside the window is missed (a lower bound).
    """

    def __init__(self) -> None:
        self._t0: dict[int, tuple[int, float]] = {}
        self.top: list[str] = []

    @staticmethod
    def _foreign(table: dict[int, tuple[int, float]]) -> set[int]:
        me, out = os.getpid(), set()
        for pid in table:
            p, seen = pid, 0
            while p not in (0, 1, 2, me) and p in table and seen < 64:
                p, seen = table[p][0], seen + 1
            if p in (0, 1) and pid not in (1,):  # reached init without passing through us
                out.add(pid)
        return out

    def start(self) -> ForeignLoad:
        self._t0 = _proc_table()
        return self

    def stop(self) -> float:
        """Return the foreign CPU seconds; `self.top` names the biggest consumers."""
        t1 = _proc_table()
        used = {pid: t1[pid][1] - (self._t0[pid][1] if pid in self._t0 else 0.0)
                for pid in self._foreign(t1)}
        self.top = []
        for pid, cpu in sorted(used.items(), key=lambda kv: -kv[1])[:3]:
            if cpu > 0.05:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    cmd = b"?"
                self.top.append(f"{pid} {cpu:.2f}s {cmd.decode(errors='replace')[:80]}")
        return sum(used.values())


def machine_busy_seconds() -> float:
    """Return busy CPU seconds of the whole machine: user+nice+system+irq+softirq, all CPUs.

    Idle, iowait and steal (a hypervisor running someone else) are left out.
    """
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(vals[:7]) - vals[3] - vals[4]) / CLK_TCK


def self_cpu_seconds() -> float:
    """Return utime+stime of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def set_affinity(pid: int, cpus: Iterable[int] | None) -> None:
    """Pin every thread of `pid` to `cpus` (None: all CPUs). Threads made later inherit it."""
    cpuset = set(range(NCPU)) if cpus is None else set(cpus)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpuset)
        except (ProcessLookupError, OSError):
            pass


def pin_prefix(cpu: int | None) -> list[str]:
    """Return a `taskset` prefix pinning a command to `cpu` (empty when None or no taskset)."""
    if cpu is None or cpu < 0 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM a process we started, SIGKILL it if it lingers, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------- nginx

NGINX_CONF = """
worker_processes 1; master_process off; daemon off;
pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  client_body_temp_path {tmp}/client_body; proxy_temp_path {tmp}/proxy_temp;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  {http_extra}
  server {{
    listen 127.0.0.1:{port};
    {server_body}
  }}
}}
"""


class Nginx:
    """One single-process nginx (1 worker, sendfile on) with everything under `tmp_dir`.

    `server_body` is the inside of the `server {}` block (locations); `http_extra` goes in the
    `http {}` block (e.g. a proxy_cache_path). `{tmp}` in either is replaced by `tmp_dir`.
    """

    def __init__(self, tmp_dir: Path, server_body: str, http_extra: str = "",
                 cpu: int | None = None) -> None:
        self.tmp = Path(tmp_dir)
        self.server_body, self.http_extra, self.cpu = server_body, http_extra, cpu
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Self:
        if not shutil.which("nginx"):
            raise FileNotFoundError("nginx not installed: apt-get install -y nginx wrk")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = NGINX_CONF.format(
            tmp=self.tmp, port=self.port,
            server_body=self.server_body.replace("{tmp}", str(self.tmp)),
            http_extra=self.http_extra.replace("{tmp}", str(self.tmp)))
        (self.tmp / "nginx.conf").write_text(conf)
        cmd = [*pin_prefix(self.cpu), "nginx", "-p", str(self.tmp), "-e",
               str(self.tmp / "error.log"), "-c", str(self.tmp / "nginx.conf")]
        # taskset execs nginx, so proc.pid is nginx itself (master_process off: the worker).
        with open(self.tmp / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    def error_log(self) -> str:
        try:
            return (self.tmp / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- wrk

WRK_LUA = """
local spec = {spec}
local reqs = {{}}
local i = 0
init = function(args)
  for k, r in ipairs(spec) do reqs[k] = wrk.format("GET", r[1], r[2]) end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    "RESULT bytes=%d requests=%d duration_us=%d errors=%d status_errors=%d p50_ms=%.2f p99_ms=%.2f\\n",
    s.bytes, s.requests, s.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

Request = tuple[str, Mapping[str, str]]


def _lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII


def wrk_script(requests: Sequence[Request]) -> str:
    """Return a wrk Lua script that rotates over `requests` (path, headers)."""
    items = []
    for path, headers in requests:
        hs = ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items())
        items.append(f"{{{_lua_str(path)}, {{{hs}}}}}")
    return WRK_LUA.format(spec="{\n  " + ",\n  ".join(items) + "\n}")


def wrk_run(base_url: str, requests: Sequence[Request], *, seconds: float, threads: int = 1,
            connections: int = 8, cpu: int | None = None, script_dir: Path,
            timeout_s: int = 30) -> dict[str, float]:
    """Run wrk once; return bytes, requests, duration_us, errors, p50/p99 and wrk's CPU s."""
    script_dir.mkdir(parents=True, exist_ok=True)
    lua = script_dir / f"wrk-{os.getpid()}-{abs(hash(tuple(p for p, _ in requests)))}.lua"
    lua.write_text(wrk_script(requests))
    cmd = [*pin_prefix(cpu), "wrk", f"-t{threads}", f"-c{connections}",
           f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout_s}s", "-s", str(lua), base_url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=seconds + timeout_s + 30)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"RESULT (.*)", done.stdout)
    if done.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    r = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["wrk_cpu_s"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return r


def measure(server_pid: int, base_url: str, requests: Sequence[Request], *, seconds: float,
            repeat: int, threads: int, connections: int, wrk_cpu: int | None,
            script_dir: Path, warmup_s: float = 1.0, max_foreign_cpu: float = 0.1,
            retries: int = 3) -> dict[str, Any]:
    """Warm up, run wrk `repeat` times; return the median run (by GB/s) plus every run.

    Per run: GB/s (1e9 bytes, response headers included, as wrk counts them), requests/s,
    server CPU seconds (utime+stime of `server_pid`), GB per server CPU-second, machine busy
    CPU seconds and GB per machine CPU-second (all CPUs, so loopback softirq work that the
    kernel charges to whichever process happens to run counts too), wrk latency p50/p99.
    A run during which other processes on the machine used more than `max_foreign_cpu`
    CPUs on average is kept aside in `disturbed_runs` and repeated (at most `retries` times).
    """
    if warmup_s > 0:
        wrk_run(base_url, requests, seconds=warmup_s, threads=threads, connections=connections,
                cpu=wrk_cpu, script_dir=script_dir)
    runs: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    while len(runs) < repeat:
        foreign = ForeignLoad().start()
        c0, m0 = cpu_seconds(server_pid), machine_busy_seconds()
        r = wrk_run(base_url, requests, seconds=seconds, threads=threads,
                    connections=connections, cpu=wrk_cpu, script_dir=script_dir)
        cpu, machine = cpu_seconds(server_pid) - c0, machine_busy_seconds() - m0
        other = foreign.stop()
        gb, secs = r["bytes"] / 1e9, r["duration_us"] / 1e6
        run = {
            "gbps": gb / secs, "bytes": r["bytes"], "seconds": secs,
            "req_s": r["requests"] / secs, "requests": r["requests"],
            "server_cpu_s": cpu, "gb_per_server_cpu_s": gb / cpu if cpu else None,
            "server_cpu_util": cpu / secs,
            "machine_cpu_s": machine, "gb_per_machine_cpu_s": gb / machine if machine else None,
            "wrk_cpu_s": r["wrk_cpu_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "errors": r["errors"], "status_errors": r["status_errors"],
            "foreign_cpu_s": other, "foreign_top": foreign.top}
        if other > max_foreign_cpu * secs and len(disturbed) < retries:
            disturbed.append(run)  # someone else loaded the machine: run it again
            continue
        runs.append(run)
    ordered = sorted(runs, key=lambda x: x["gbps"])
    med = dict(ordered[len(ordered) // 2])
    med["gbps_min"], med["gbps_max"] = ordered[0]["gbps"], ordered[-1]["gbps"]
    med["runs"] = runs
    med["disturbed_runs"] = disturbed
    med["wrk"] = {"threads": threads, "connections": connections, "seconds": seconds,
                  "repeat": repeat, "warmup_s": warmup_s}
    return med


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-quantile (0..1) of `values`, nearest-rank."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return {(name, labels): value} from a Prometheus text page."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def sample(metrics: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    """Return the sum of samples of `name` whose labels include `labels` (0 if absent)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)
