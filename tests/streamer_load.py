"""Load a safetensors model from S3 with the Run:ai Model Streamer, as vLLM does, and check it.

    python -m tests.streamer_load s3://bucket/prefix/ MANIFEST.json [--verify crc|exact]
                                  [--pull-dir DIR] [--wait-go]

Run as its own process with the S3 settings in its environment (`client_env(endpoint)`:
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
`RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0`, `AWS_EC2_METADATA_DISABLED=true`); `run_load`
does that and returns the answer (the test suite and loadtest/ call it). The steps
are vLLM's `--load-format runai_streamer` ones: `list_safetensors(prefix)` (ListObjectsV2 with
a delimiter), with `--pull-dir` the other files through `ObjectStorageModel.pull_files`
(ListObjectsV2, then boto3 `download_file` per file), then one `SafetensorsStreamer` over all
shards. Every tensor is checked against the manifest of tests/safetensors_gen.py: name,
dtype, shape, size and CRC-32C of its bytes (`--verify exact`: its bytes regenerated and
compared). Prints one JSON object: times, bytes, tensors, mismatches, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c

from tests import servers
from tests.safetensors_gen import tensor_bytes

ROOT = Path(__file__).resolve().parents[1]

TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8"}


def client_env(endpoint: str) -> dict[str, str]:
    """Return the environment that points the streamer, boto3 and s5cmd at `endpoint`.

    s5cmd 2.3 (aws-sdk-go v1) ignores AWS_ENDPOINT_URL and reads S3_ENDPOINT_URL; with a
    custom endpoint it uses path-style addressing (unless the host is an AWS one).
    """
    return {"AWS_ENDPOINT_URL": endpoint, "S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
            "AWS_REGION": servers.REGION, "AWS_DEFAULT_REGION": servers.REGION,
            "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AWS_EC2_METADATA_DISABLED": "true"}


def run_load(env: dict[str, str], prefix: str, manifest: Path, pull_dir: Path | None = None,
             extra_env: dict[str, str] | None = None, on_go: Callable[[], None] | None = None,
             verify: str = "crc", timeout_s: float = 900.0) -> dict[str, Any]:
    """Run this script in its own process with `env`; return its JSON answer plus wall time.

    With `on_go`, the process imports torch and the streamer first, then `on_go()` runs and
    the load starts: a caller's CPU snapshots in `on_go` leave the start-up out.
    """
    cmd = [sys.executable, "-m", "tests.streamer_load", prefix, str(manifest), "--verify", verify]
    if pull_dir is not None:
        cmd += ["--pull-dir", str(pull_dir)]
    if on_go is not None:
        cmd.append("--wait-go")
    with subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, **(extra_env or {})},
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if on_go is not None:
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("streamer did not start: "
                                       f"{proc.communicate(timeout=30)[1][-3000:]}")
                on_go()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            t0 = time.monotonic()
            stdout, stderr = proc.communicate(timeout=timeout_s)
            wall = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = stdout.strip().splitlines()
    if proc.returncode not in (0, 1) or not lines:
        raise RuntimeError(f"streamer failed ({proc.returncode}):\n{stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    out.update(process_wall_s=wall, exit_code=proc.returncode, stderr_tail=stderr[-2000:])
    return out


def cpu_now() -> float:
    """Return this process's CPU seconds (user + system, every thread)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def check_tensor(name: str, tensor: Any, want: dict[str, Any] | None, seed: int,
                 exact: bool) -> str | None:
    """Return why `tensor` differs from its manifest entry, or None if it is equal."""
    import torch

    if want is None:
        return f"{name}: not in the manifest"
    if str(tensor.dtype) != f"torch.{TORCH_DTYPES[want['dtype']]}":
        return f"{name}: dtype {tensor.dtype}, want {want['dtype']}"
    if list(tensor.shape) != want["shape"]:
        return f"{name}: shape {list(tensor.shape)}, want {want['shape']}"
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy()
    if raw.nbytes != want["nbytes"]:
        return f"{name}: {raw.nbytes} bytes, want {want['nbytes']}"
    if exact:
        if raw.tobytes() != b"".join(tensor_bytes(seed, name, want["nbytes"])):
            return f"{name}: bytes differ"
    elif crc32c.crc32c(raw) != want["crc32c"]:
        return f"{name}: CRC-32C differs"
    return None


def pull_others(prefix: str, dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Download the non-safetensors files as vLLM does; return what differs from the manifest."""
    from runai_model_streamer import ObjectStorageModel

    with ObjectStorageModel(model_path=prefix, dst=str(dest)) as model:
        model.pull_files(ignore_pattern=["*.safetensors"])
    bad = []
    for f in manifest["other_files"]:
        path = dest / f["file"]
        if not path.exists():
            bad.append(f"{f['file']}: not downloaded")
        elif crc32c.crc32c(path.read_bytes()) != f["crc32c"]:
            bad.append(f"{f['file']}: bytes differ")
    return bad


def load(prefix: str, manifest: dict[str, Any], exact: bool, pull_dir: Path | None
         ) -> dict[str, Any]:
    """List, pull and stream the model under `prefix`; return times, counts and mismatches."""
    from runai_model_streamer import SafetensorsStreamer, list_safetensors

    want = {t["name"]: t for s in manifest["shards"] for t in s["tensors"]}
    c0, t0 = cpu_now(), time.monotonic()
    files = sorted(list_safetensors(prefix))
    t_list = time.monotonic()
    bad = pull_others(prefix, pull_dir, manifest) if pull_dir is not None else []
    t_pull = time.monotonic()
    seen: set[str] = set()
    nbytes = yields = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files)
        for name, tensor in streamer.get_tensors():
            why = check_tensor(name, tensor, want.get(name), manifest["seed"], exact)
            if why:
                bad.append(why)
            seen.add(name)
            nbytes += tensor.nbytes
            yields += 1
    t_end = time.monotonic()
    cpu = cpu_now() - c0
    shards = sorted(s["file"] for s in manifest["shards"])
    if [f.rsplit("/", 1)[-1] for f in files] != shards:
        bad.append(f"listed {files}, want {shards}")
    if yields != len(seen):
        bad.append(f"{yields} tensors yielded for {len(seen)} names")
    missing = sorted(set(want) - seen)
    return {"files": files, "seconds": t_end - t0, "list_s": t_list - t0,
            "pull_s": t_pull - t_list, "stream_s": t_end - t_pull, "tensor_bytes": nbytes,
            "tensors": len(seen), "missing": missing[:10], "n_missing": len(missing),
            "bad": bad[:10], "n_bad": len(bad), "cpu_s": cpu, "verify": "exact" if exact
            else "crc32c"}


def main() -> int:
    """Load the model named on the command line; return 0 if every tensor was equal."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="s3://bucket/prefix/ of the model")
    p.add_argument("manifest", type=Path, help="JSON manifest from tests.safetensors_gen")
    p.add_argument("--verify", choices=("crc", "exact"), default="crc")
    p.add_argument("--pull-dir", type=Path, help="also download the other files here")
    p.add_argument("--wait-go", action="store_true",
                   help="import everything, print 'ready', and start on a line from stdin")
    a = p.parse_args()
    if a.wait_go:  # the caller's measurements then leave Python's and torch's start-up out
        import runai_model_streamer  # noqa: F401
        import torch  # noqa: F401

        print("ready", flush=True)
        sys.stdin.readline()
    out = load(a.prefix, json.loads(a.manifest.read_text()), a.verify == "exact", a.pull_dir)
    print(json.dumps(out))
    return 0 if not out["n_bad"] and not out["n_missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
