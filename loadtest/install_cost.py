"""Measure what the Run:ai streamer adds to the set-up: pip time and disk, fresh venvs, no pip cache.

    .venv/bin/python loadtest/install_cost.py [--runs 1]

Per run, two fresh venvs in a temp dir, each set up as scripts/setup.sh does (upgrade pip, then
one `pip install --no-cache-dir -e .[test,dev]`): **base** with the project's extras as they
are, **streamer** with `runai-model-streamer runai-model-streamer-s3 torch==2.13.0` in the
same pip command (one resolve: installed later on their own, boto3 pulls a botocore that
aiobotocore refuses). Reported: seconds of that pip command, venv bytes, what the streamer
adds, a no-op re-run (what every later setup.sh costs), the import time of torch and the
streamer, and the machine's busy CPU seconds during each install (other sessions share it).
Writes loadtest/results/install-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.harness import ForeignLoad, machine_busy_seconds

STREAMER = ["runai-model-streamer", "runai-model-streamer-s3", "torch==2.13.0"]
RESULTS_DIR = ROOT / "loadtest" / "results"


def dir_bytes(path: Path) -> int:
    """Return the bytes of every file under `path` (symlinks not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def timed(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`; return its seconds, the machine's busy CPU-s and other workloads' CPU-s."""
    foreign, m0, t0 = ForeignLoad().start(), machine_busy_seconds(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out = {"seconds": time.monotonic() - t0, "machine_cpu_s": machine_busy_seconds() - m0,
           "other_cpu_s": foreign.stop()}
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return out


def one_venv(base: Path, extra: list[str]) -> dict[str, Any]:
    """Make a venv, install the project with `extra` as setup.sh would; return the figures."""
    py = base / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True,
                   capture_output=True)
    before = dir_bytes(base)
    install = [str(py), "-m", "pip", "install", "--quiet", "--no-cache-dir", "-e",
               f"{ROOT}[test,dev]", *extra]
    out = {"install": timed(install), "venv_bytes_before": before, "venv_bytes": dir_bytes(base)}
    out["noop_rerun"] = timed(install)
    if extra:
        out["import"] = timed([str(py), "-c", "import torch, runai_model_streamer"])
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True,
                           check=False)
    out["pip_check"] = check.stdout.strip()
    return out


def main() -> int:
    """Measure `--runs` pairs of fresh installs; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-install-"))
    runs = []
    try:
        for i in range(a.runs):
            r: dict[str, Any] = {"base": one_venv(tmp / f"base-{i}", []),
                 "streamer": one_venv(tmp / f"streamer-{i}", STREAMER)}
            shutil.rmtree(tmp / f"base-{i}")
            shutil.rmtree(tmp / f"streamer-{i}")
            b, s = r["base"], r["streamer"]
            r["adds_seconds"] = s["install"]["seconds"] - b["install"]["seconds"]
            r["adds_bytes"] = s["venv_bytes"] - b["venv_bytes"]
            runs.append(r)
            print(f"run {i + 1}: base {b['install']['seconds']:.1f} s, "
                  f"{b['venv_bytes'] / 1e6:.0f} MB; with the streamer "
                  f"{s['install']['seconds']:.1f} s, {s['venv_bytes'] / 1e6:.0f} MB: adds "
                  f"{r['adds_seconds']:.1f} s and {r['adds_bytes'] / 1e6:.0f} MB; no-op re-run "
                  f"{s['noop_rerun']['seconds']:.1f} s; import torch + streamer "
                  f"{s['import']['seconds']:.1f} s; other workloads "
                  f"{b['install']['other_cpu_s']:.1f} / {s['install']['other_cpu_s']:.1f} CPU-s "
                  f"during the installs; pip check: {s['pip_check']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    dest = RESULTS_DIR / f"install-{stamp}.json"
    dest.write_text(json.dumps({"argv": sys.argv, "runs": runs}, indent=1))
    print(f"JSON: {dest.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
