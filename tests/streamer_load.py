"""Load a safetensors model from S3 with the Run:ai Model Streamer, as vLLM does, and check it.

    python -m tests.streamer_load s3://bucket/prefix/ MANIFEST.json [--verify crc|exact]
                                  [--pull-dir DIR]

Run as its own process with the S3 settings in its environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
`RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0`, `AWS_EC2_METADATA_DISABLED=true`). The steps
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
import resource
import sys
import time
from pathlib import Path
from typing import Any

import crc32c

from tests.safetensors_gen import tensor_bytes

TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8"}


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
    nbytes = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files)
        for name, tensor in streamer.get_tensors():
            why = check_tensor(name, tensor, want.get(name), manifest["seed"], exact)
            if why:
                bad.append(why)
            seen.add(name)
            nbytes += tensor.nbytes
    t_end = time.monotonic()
    cpu = cpu_now() - c0
    shards = sorted(s["file"] for s in manifest["shards"])
    if [f.rsplit("/", 1)[-1] for f in files] != shards:
        bad.append(f"listed {files}, want {shards}")
    missing = sorted(set(want) - seen)
    return {"files": files, "seconds": t_end - t0, "list_s": t_list - t0,
            "pull_s": t_pull - t_list, "stream_s": t_end - t_pull, "tensor_bytes": nbytes,
            "tensors": len(seen), "missing": missing[:10], "n_missing": len(missing),
            "bad": bad[:10], "n_bad": len(bad), "cpu_s": cpu, "verify": "exact" if exact
            else "crc32c"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="s3://bucket/prefix/ of the model")
    p.add_argument("manifest", type=Path, help="JSON manifest from tests.safetensors_gen")
    p.add_argument("--verify", choices=("crc", "exact"), default="crc")
    p.add_argument("--pull-dir", type=Path, help="also download the other files here")
    a = p.parse_args()
    out = load(a.prefix, json.loads(a.manifest.read_text()), a.verify == "exact", a.pull_dir)
    print(json.dumps(out))
    return 0 if not out["n_bad"] and not out["n_missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
