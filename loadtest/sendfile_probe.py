"""Loopback micro-benchmark: nginx vs aiohttp+SocketSender vs aiohttp FileResponse (uvloop).

    apt-get install -y nginx wrk      # once
    .venv/bin/python loadtest/sendfile_probe.py [--seconds 5] [--repeat 3] [--caps 262144,1048576]

Serves 16 x 4 MiB block files (and one 64 MiB file for nginx/FileResponse) from a temp dir,
loads each server with `wrk -t1 -c8` rotating over the files, and prints per cell the median
of --repeat runs: GB/s (min-max), server CPU seconds (utime+stime from /proc/<pid>/stat),
GB per server CPU-second, wrk's CPU (cores), and GB per machine CPU-second (all CPUs busy
time from /proc/stat, so softirq work counts wherever it ran). Server and wrk are pinned to
CPUs 0 and 1. Caveat: on loopback the receive-side TCP work is charged to whichever process
happens to trigger it and wrk's single thread is often the bottleneck, so GB/s moves between
modes run to run; GB per machine CPU-second is the steadier comparison. Throwaway quality.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024 * 1024
NBLOCKS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1; master_process off; daemon off;
pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/px; fastcgi_temp_path {tmp}/fc;
  uwsgi_temp_path {tmp}/uw; scgi_temp_path {tmp}/sc;
  server {{ listen 127.0.0.1:{port}; location /f/ {{ alias {data}/; }} }}
}}
"""

WRK_LUA = """
local paths = {{{paths}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT bytes=%d requests=%d duration_us=%d errors=%d p99_ms=%.1f\\n",
    s.bytes, s.requests, s.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(99) / 1000))
end
"""


# ---------------------------------------------------------------- aiohttp servers (subprocess)

def serve(kind: str, port: int, data: Path, cap: int, lag_probe: bool) -> None:
    import uvloop
    from aiohttp import web

    from cachenode.sendfile import SocketSender

    lags: list[float] = []
    calls: list[tuple[float, int]] = []  # (seconds, bytes) per os.sendfile, with --lag-probe
    if lag_probe:
        real_sendfile = os.sendfile

        def timed_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
            t = time.perf_counter()
            try:
                n = real_sendfile(out_fd, in_fd, offset, count)
            except BlockingIOError:
                n = 0
            calls.append((time.perf_counter() - t, n))
            if not n:
                raise BlockingIOError
            return n

        os.sendfile = timed_sendfile

    async def one(request: web.Request) -> web.StreamResponse:
        path = data / request.match_info["name"]
        if kind == "fileresponse":
            return web.FileResponse(path)
        return await spans(request, [path])

    async def composite(request: web.Request) -> web.StreamResponse:
        return await spans(request, [data / f"blk{i:02d}" for i in range(NBLOCKS)])

    async def spans(request: web.Request, paths: list[Path]) -> web.StreamResponse:
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            sizes = [os.fstat(fd).st_size for fd in fds]
            resp = web.StreamResponse()
            resp.content_length = sum(sizes)
            await resp.prepare(request)
            async with SocketSender(request, resp, max_chunk_bytes=cap,
                                    cork=kind != "sender-nocork") as sender:
                for fd, size in zip(fds, sizes):
                    await sender.send_file(fd, 0, size)
            await resp.write_eof()
            return resp
        finally:
            for fd in fds:
                os.close(fd)

    async def lag(request: web.Request) -> web.Response:
        s = sorted(lags) or [0.0]
        c = sorted(calls) or [(0.0, 0)]
        sizes = sorted(n for _, n in calls if n) or [0]
        out = {"max_ms": s[-1] * 1e3, "p99_ms": s[int(len(s) * 0.99)] * 1e3,
               "call_max_ms": c[-1][0] * 1e3, "call_p99_ms": c[int(len(c) * 0.99)][0] * 1e3,
               "call_kib_p50": sizes[len(sizes) // 2] / 1024, "eagain": sum(not n for _, n in c)}
        lags.clear()
        calls.clear()
        return web.json_response(out)

    async def lag_loop() -> None:
        while True:  # uvloop's clock is ms-granular; measure with perf_counter
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/f/{name}", one)
        app.router.add_get("/composite", composite)
        app.router.add_get("/lag", lag)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        if lag_probe:
            asyncio.get_running_loop().create_task(lag_loop())
        await asyncio.Event().wait()

    uvloop.run(main())


# ---------------------------------------------------------------- driver

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_busy_seconds() -> float:
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK  # all CPUs, minus idle and iowait


def pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and cpu >= 0 else []


def wrk(port: int, paths: list[str], args: argparse.Namespace, tmp: Path, secs: int) -> dict[str, float]:
    lua = tmp / "rotate.lua"
    lua.write_text(WRK_LUA.format(paths=", ".join(f'"{p}"' for p in paths)))
    cmd = [*pin(args.wrk_cpu), "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{secs}s",
           "--timeout", "10s", "-s", str(lua), f"http://127.0.0.1:{port}"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"RESULT (.*)", out)
    assert m, out
    r = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["wrk_cpu"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return r


Result = tuple[str, dict[str, float]]


def measure(name: str, srv: Server, paths: list[str], args: argparse.Namespace,
            tmp: Path) -> Result:
    """Run wrk `args.repeat` times after a warm-up; return the run with the median GB/s."""
    pid, port = srv.proc.pid, srv.port
    wrk(port, paths, args, tmp, 1)  # warm-up: TCP autotuning, page cache, lazy imports
    runs = []
    for _ in range(args.repeat):
        c0, m0 = cpu_seconds(pid), machine_busy_seconds()
        r = wrk(port, paths, args, tmp, args.seconds)
        cpu, machine = cpu_seconds(pid) - c0, machine_busy_seconds() - m0
        gb, secs = r["bytes"] / 1e9, r["duration_us"] / 1e6
        runs.append({"gbps": gb / secs, "cpu": cpu, "gb_per_cpu": gb / cpu if cpu else 0.0,
                     "req_s": r["requests"] / secs, "p99_ms": r["p99_ms"], "errors": r["errors"],
                     "wrk_cpu": r["wrk_cpu"] / secs, "gb_per_machine_cpu": gb / machine})
    runs.sort(key=lambda r: r["gbps"])
    med = dict(runs[len(runs) // 2])
    med["gbps_min"], med["gbps_max"] = runs[0]["gbps"], runs[-1]["gbps"]
    return name, med


def check_body(port: int, path: str, expect: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        got = hashlib.sha256(r.read()).hexdigest()
    assert got == expect, f"{path} on port {port}: body mismatch"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path  # stderr goes to a file: an unread pipe fills with aiohttp tracebacks and blocks


def start(cmd: list[str], port: int, log: Path) -> Server:
    with log.open("ab") as f:
        srv = Server(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f), port, log)
    try:
        wait_port(port, srv.proc)
    except BaseException:
        stop(srv)
        raise
    return srv


def stop(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.terminate()
        try:
            srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    text = srv.log.read_text(errors="replace")
    # aiohttp logs a traceback for each connection wrk drops mid-body at the end of a run.
    drops = text.count("Error handling request")
    resets = len(re.findall(r"^ConnectionResetError", text, re.MULTILINE))
    other = [ln for ln in text.splitlines() if re.match(r"\w*(Error|Exception)\b", ln)
             and not ln.startswith(("ConnectionResetError", "Error handling request"))]
    print(f"[{srv.log.name}] {drops} x 'Error handling request' ({resets} ConnectionResetError)"
          + (f"; other: {other[:5]}" if other else ""), file=sys.stderr)


def aiohttp_server(kind: str, data: Path, args: argparse.Namespace, cap: int,
                   lag_probe: bool = False) -> Server:
    port = free_port()
    cmd = [*pin(args.server_cpu), sys.executable, __file__, "--serve", kind, "--port", str(port),
           "--data", str(data), "--cap", str(cap)] + (["--lag-probe"] if lag_probe else [])
    return start(cmd, port, data.parent / f"{kind}-{cap}.log")


def row(res: Result, ref: Result | None) -> str:
    name, r = res
    vs = f"{r['gbps'] / ref[1]['gbps']:5.2f}x" if ref else "   - "
    spread = f"{r['gbps_min']:.2f}-{r['gbps_max']:.2f}"
    return (f"{name:<36} {r['gbps']:5.2f} {spread:>9} {vs} {r['cpu']:5.2f} {r['gb_per_cpu']:6.2f}"
            f" {r['req_s']:8.1f} {r['p99_ms']:7.1f} {int(r['errors']):4d} {r['wrk_cpu']:7.2f}"
            f" {r['gb_per_machine_cpu']:8.2f}")


HEADER = (f"{'server / workload':<36} {'GB/s':>5} {'min-max':>9} {'vs ngx':>6} {'cpu_s':>5}"
          f" {'GB/cpu':>6}"
          f" {'req/s':>8} {'p99_ms':>7} {'err':>4} {'wrk_cpu':>7} {'GB/mcpu':>8}")


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sendfile-probe-") as t:
        tmp = Path(t)
        data = tmp / "data"
        data.mkdir()
        blocks = [os.urandom(4 * MiB) for _ in range(NBLOCKS)]
        for i, b in enumerate(blocks):
            (data / f"blk{i:02d}").write_bytes(b)
        (data / "big").write_bytes(b"".join(blocks))
        big_sha = hashlib.sha256(b"".join(blocks)).hexdigest()
        blk_paths = [f"/f/blk{i:02d}" for i in range(NBLOCKS)]
        results: list[tuple[str, Result]] = []

        ngx_port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=ngx_port, data=data))
        ngx = start([*pin(args.server_cpu), "nginx", "-p", str(tmp), "-e",
                     str(tmp / "nginx-error.log"), "-c", str(tmp / "nginx.conf")], ngx_port,
                    tmp / "nginx-stderr.log")
        try:
            check_body(ngx.port, "/f/big", big_sha)
            results.append(("4m", measure("(a) nginx   4 MiB files", ngx, blk_paths, args, tmp)))
            results.append(("64m", measure("(a) nginx   64 MiB file", ngx, ["/f/big"], args, tmp)))
        finally:
            stop(ngx)

        for kind, label in (("sender", "(b) SocketSender"), ("sender-nocork", "(b') no cork"),
                            ("fileresponse", "(c) FileResponse")):
            srv = aiohttp_server(kind, data, args, args.cap)
            try:
                big = "/f/big" if kind == "fileresponse" else "/composite"
                check_body(srv.port, big, big_sha)
                results.append(("4m", measure(f"{label} 4 MiB files", srv, blk_paths, args, tmp)))
                what = "64 MiB file" if kind == "fileresponse" else "64 MiB = 16 spans"
                results.append(("64m", measure(f"{label} {what}", srv, [big], args, tmp)))
            finally:
                stop(srv)

        print(f"\n{HEADER}")
        for group in ("4m", "64m"):
            ref = next(r for g, r in results if g == group)
            for g, r in results:
                if g == group:
                    print(row(r, ref))

        if args.caps:
            print(f"\ncap sweep, (b) SocketSender with a 1 ms event-loop lag probe and timed "
                  f"os.sendfile calls\n{HEADER}  lag_p99 lag_max call_p99 call_max call_KiB_p50")
            for cap in args.caps:
                srv = aiohttp_server("sender", data, args, cap, lag_probe=True)
                try:
                    for paths, what in ((blk_paths, "4 MiB"), (["/composite"], "64 MiB")):
                        r = measure(f"cap {cap // 1024:>5} KiB, {what}", srv, paths, args, tmp)
                        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/lag") as resp:
                            lag = json.load(resp)
                        print(f"{row(r, None)}  {lag['p99_ms']:7.2f} {lag['max_ms']:7.2f}"
                              f" {lag['call_p99_ms']:8.2f} {lag['call_max_ms']:8.2f}"
                              f" {lag['call_kib_p50']:12.0f}", flush=True)
                finally:
                    stop(srv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--cap", type=int, default=0, help="max_chunk_bytes for (b); 0 = module default")
    p.add_argument("--caps", type=lambda s: [int(x) for x in s.split(",")], default=[],
                   help="comma-separated max_chunk_bytes values to sweep, e.g. 262144,1048576")
    ncpu = os.cpu_count() or 1
    p.add_argument("--server-cpu", type=int, default=0 if ncpu > 1 else -1, help="-1: no pinning")
    p.add_argument("--wrk-cpu", type=int, default=1 if ncpu > 1 else -1, help="-1: no pinning")
    p.add_argument("--serve", choices=["sender", "sender-nocork", "fileresponse"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--lag-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        from cachenode.sendfile import MAX_CHUNK_BYTES
        serve(args.serve, args.port, args.data, args.cap or MAX_CHUNK_BYTES, args.lag_probe)
    else:
        run(args)


if __name__ == "__main__":
    main()
