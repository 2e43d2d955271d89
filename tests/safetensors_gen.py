"""Generate a llama-like safetensors model (several shards) from pure Python, with a manifest.

The safetensors format: an 8-byte little-endian header length N, N bytes of JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, offsets
relative to the first byte after the header, padded with spaces to a multiple of 8), then the
tensor bytes back to back: no gaps, no overlaps (the Run:ai streamer refuses both). Tensor
bytes are a deterministic function of (seed, tensor name), so a checker can regenerate them;
the manifest also records each tensor's CRC-32C for checkers that cannot afford to.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1}
_PIECE = 4 * 1024 * 1024  # bytes generated (and written) at a time


@dataclass(frozen=True)
class Tensor:
    """One tensor of a shard: its name, dtype, shape and size in bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Return the tensor's size in bytes."""
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class Shard:
    """One safetensors file: its name and tensors, in file order."""

    name: str
    tensors: list[Tensor] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        """Return the bytes of tensor data (the file less its header)."""
        return sum(t.nbytes for t in self.tensors)


def layer_tensors(i: int, hidden: int, inter: int) -> list[Tensor]:
    """Return the tensors of decoder layer `i` of a llama-like model."""
    p = f"model.layers.{i}."
    kv = max(8, hidden // 4)
    return [
        Tensor(p + "input_layernorm.weight", "F32", (hidden,)),
        Tensor(p + "self_attn.q_proj.weight", "BF16", (hidden, hidden)),
        Tensor(p + "self_attn.k_proj.weight", "BF16", (kv, hidden)),
        Tensor(p + "self_attn.v_proj.weight", "BF16", (kv, hidden)),
        Tensor(p + "self_attn.o_proj.weight", "BF16", (hidden, hidden)),
        Tensor(p + "post_attention_layernorm.weight", "F32", (hidden,)),
        Tensor(p + "mlp.gate_proj.weight", "BF16", (inter, hidden)),
        Tensor(p + "mlp.up_proj.weight", "F16", (inter, hidden)),
        Tensor(p + "mlp.down_proj.weight", "BF16", (hidden, inter)),
    ]


def plan(total_bytes: int, shards: int, hidden: int = 1024, vocab: int = 32000) -> list[Shard]:
    """Return shards of a llama-like model of at least `total_bytes` (one layer more at most).

    Every tensor's size is a multiple of 8 bytes (`hidden` a multiple of 8), so each one starts
    aligned in the streamer's buffer, which holds the files back to back.
    """
    if hidden % 8:
        raise ValueError(f"hidden must be a multiple of 8, not {hidden}")
    inter = hidden * 11 // 4
    embed = Tensor("model.embed_tokens.weight", "BF16", (vocab, hidden))
    head = Tensor("lm_head.weight", "BF16", (vocab, hidden))
    per_layer = sum(t.nbytes for t in layer_tensors(0, hidden, inter))
    layers = max(1, -(-(total_bytes - embed.nbytes - head.nbytes) // per_layer))
    tensors = [embed]
    for i in range(layers):
        tensors += layer_tensors(i, hidden, inter)
    tensors += [Tensor("model.norm.weight", "F32", (hidden,)),
                Tensor("model.rotary.positions", "I64", (257,)),
                Tensor("model.quant.zero_points", "U8", (hidden,)), head]
    goal = sum(t.nbytes for t in tensors) / shards
    out = [Shard(f"model-{i + 1:05d}-of-{shards:05d}.safetensors") for i in range(shards)]
    k, acc = 0, 0
    for t in tensors:
        if acc >= goal * (k + 1) and k < shards - 1 and out[k].tensors:
            k += 1
        out[k].tensors.append(t)
        acc += t.nbytes
    return [s for s in out if s.tensors]


def tensor_bytes(seed: int, name: str, nbytes: int) -> Iterator[bytes]:
    """Yield the bytes of tensor `name` in pieces: a deterministic function of (seed, name)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    left = nbytes
    while left:
        n = min(_PIECE, left)
        yield rng.randbytes(n)
        left -= n


def header(shard: Shard) -> bytes:
    """Return the shard's 8-byte length prefix and JSON header, padded to a multiple of 8."""
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in shard.tensors:
        meta[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(meta, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def write_shard(path: Path, shard: Shard, seed: int) -> dict[str, Any]:
    """Write one shard file; return its manifest entry: size, CRC-32C, tensors with theirs."""
    head = header(shard)
    entries = []
    file_crc = crc32c.crc32c(head)
    with open(path, "wb") as f:
        f.write(head)
        for t in shard.tensors:
            crc = 0
            for piece in tensor_bytes(seed, t.name, t.nbytes):
                crc = crc32c.crc32c(piece, crc)
                file_crc = crc32c.crc32c(piece, file_crc)
                f.write(piece)
            entries.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                            "nbytes": t.nbytes, "crc32c": crc})
    return {"file": shard.name, "size": len(head) + shard.data_bytes, "crc32c": file_crc,
            "header_bytes": len(head), "tensors": entries}


def index_json(shards: list[Shard]) -> bytes:
    """Return a `model.safetensors.index.json` (weight map) for the shards."""
    weight_map = {t.name: s.name for s in shards for t in s.tensors}
    total = sum(s.data_bytes for s in shards)
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                      indent=2).encode()


def write_model(directory: Path, total_bytes: int, shards: int, seed: int = 0,
                hidden: int = 1024, vocab: int = 32000) -> dict[str, Any]:
    """Write the model's shards and JSON files into `directory`; return the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = plan(total_bytes, shards, hidden, vocab)
    files = [write_shard(directory / s.name, s, seed) for s in layout]
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "vocab_size": vocab, "torch_dtype": "bfloat16"}
    extra = {"config.json": json.dumps(config, indent=2).encode(),
             "model.safetensors.index.json": index_json(layout)}
    for name, data in extra.items():
        (directory / name).write_bytes(data)
    return {"seed": seed, "shards": files,
            "other_files": [{"file": n, "size": len(d), "crc32c": crc32c.crc32c(d)}
                            for n, d in extra.items()],
            "bytes": sum(f["size"] for f in files),
            "tensors": sum(len(f["tensors"]) for f in files)}
