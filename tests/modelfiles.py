"""Model-like files for the mount's tests and benchmark: safetensors shards with known
tensors, and the page cache dropped between reads."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_safetensors(path: Path, tensors: int, tensor_bytes: int, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """Write a shard of `tensors` float32 tensors of `tensor_bytes` each; return them."""
    rng = np.random.default_rng(seed)
    arrays = {f"layers.{i}.weight": rng.standard_normal(tensor_bytes // 4, dtype=np.float32)
              .reshape(-1, 256) for i in range(tensors)}
    save_file(arrays, str(path))
    return arrays


def tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Return each tensor's byte range [start, end) in a safetensors file, and the header's."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    spans = {"__header__": (0, 8 + n)}
    for name, meta in header.items():
        if name != "__metadata__":
            a, b = meta["data_offsets"]
            spans[name] = (8 + n + a, 8 + n + b)
    return spans


def drop_page_cache(paths: Iterable[Path]) -> str:
    """Drop the page cache (all of it as root, else the files' pages); return how."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "drop_caches"
    except OSError:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "posix_fadvise(DONTNEED)"
