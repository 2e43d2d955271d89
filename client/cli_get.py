"""`cachectl get`: download a prefix into a directory, resumable, sizes verified.

The ETag each file was fetched at (what makes a re-run skip or resume it) is kept outside the
destination, under ~/.cache/blockcache/get/ (XDG_CACHE_HOME, or --state-dir): a model folder
holds the model's files and nothing else (a `.part` only while one is being written).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from client.client import CacheClient, ObjectInfo
from client.errors import ClientError
from client.progress import format_bytes
from client.s3url import split_s3_url

STATE_ENV = "CACHECTL_STATE_DIR"


def add_command(sub: Any) -> None:
    """Add `get` to cachectl's subcommands."""
    g = sub.add_parser("get", help="download every object under a prefix into a directory "
                       "(resumable; complete files of the same ETag are skipped)")
    g.add_argument("url", help="s3://bucket/prefix")
    g.add_argument("dir", help="destination directory")
    g.add_argument("--state-dir", default=os.environ.get(STATE_ENV, ""), metavar="DIR",
                   help="where the ETags of fetched files are kept (not in the destination) "
                   f"[env {STATE_ENV}; default $XDG_CACHE_HOME/blockcache/get]")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.set_defaults(fn=cmd_get)


def state_root(given: str) -> Path:
    """Return the folder that holds every destination's ETags."""
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "blockcache" / "get"


class Tags:
    """The ETag each file of one destination was fetched at, kept under a state folder."""

    def __init__(self, dest: Path, root: Path) -> None:
        self.dest = dest.resolve()
        digest = hashlib.sha256(str(self.dest).encode()).hexdigest()[:16]
        self.folder = root / digest  # one per destination folder, named by its absolute path

    def _file(self, path: Path) -> Path:
        rel = path.resolve().relative_to(self.dest)
        return self.folder / rel.parent / f"{rel.name}.etag"

    def get(self, path: Path) -> str:
        """Return the ETag `path` was written at ("" if unknown)."""
        try:
            return self._file(path).read_text().strip()
        except OSError:
            return ""

    def set(self, path: Path, etag: str) -> None:
        """Record the ETag `path` is being (or was) written at."""
        f = self._file(path)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(etag + "\n")
        except OSError as e:
            raise ClientError(f"cannot keep get's state in {self.folder}: {e} "
                              f"(--state-dir or {STATE_ENV} moves it)") from None

    def drop(self, path: Path) -> None:
        """Forget what was recorded for `path`."""
        self._file(path).unlink(missing_ok=True)


async def cmd_get(c: CacheClient, args: argparse.Namespace, out: IO[str]) -> None:
    """Download every object under a prefix into a directory (resumable, sizes verified)."""
    bucket, prefix = split_s3_url(args.url, want_key=False)
    dest = Path(args.dir)
    tags = Tags(dest, state_root(args.state_dir))
    objs = [o async for o in c.list_objects(bucket, prefix)
            # s3://b/llm/v1 means the object llm/v1 or the folder llm/v1/, not llm/v10/...
            if prefix.endswith("/") or not prefix or o.key == prefix
            or o.key.startswith(prefix + "/")]
    if not objs:
        raise ClientError(f"nothing under s3://{bucket}/{prefix}")
    progress = Progress(sum(o.size for o in objs), len(objs), sys.stderr)
    for o in objs:
        rel = o.key[len(prefix):].lstrip("/") if o.key != prefix else o.key.rsplit("/", 1)[-1]
        if not rel or rel.endswith("/"):
            progress.file_done(o.size)  # a directory marker, nothing to write
            continue
        try:
            await fetch_file(c, o, dest / rel, progress, tags)
        except OSError as e:
            raise ClientError(f"cannot write {dest / rel}: {e}") from None
    progress.finish()
    summary = {"files": len(objs), "bytes": progress.total, "fetched_bytes": progress.fetched,
               "seconds": round(time.monotonic() - progress.t0, 3)}
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(f"{len(objs)} files, {format_bytes(progress.total)} in {dest} "
                  f"({format_bytes(progress.fetched)} fetched, the rest already there) in "
                  f"{summary['seconds']:.1f}s\n")


async def fetch_file(c: CacheClient, info: ObjectInfo, path: Path, progress: Progress,
                     tags: Tags) -> None:
    """Write one object to `path` via `path.part`, resuming a part of the same ETag."""
    info = await c.stat(info.bucket, info.key)  # the listing's ETag may be stale
    if path.exists() and path.stat().st_size == info.size and tags.get(path) == info.etag:
        progress.file_done(info.size)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    assert c.view is not None
    bs = c.view.block_size
    have = part.stat().st_size if part.exists() and tags.get(part) == info.etag else 0
    have = min(have - have % bs, info.size)  # whole blocks only
    with open(part, "r+b" if have else "wb") as f:
        tags.set(part, info.etag)
        f.truncate(have)
        f.seek(have)
        progress.advance(have, fetched=False)
        async for data in c.iter_range(info, have):
            f.write(data)
            progress.advance(len(data))
    if part.stat().st_size != info.size:
        raise ClientError(f"{path}: wrote {part.stat().st_size} of {info.size} bytes")
    os.replace(part, path)
    tags.set(path, info.etag)
    tags.drop(part)
    progress.file_done(0)


class Progress:
    """A one-line progress report on stderr: files, bytes, rate, ETA."""

    def __init__(self, total: int, files: int, out: IO[str]) -> None:
        self.total, self.files, self.out = total, files, out
        self.done = self.fetched = self.files_done = 0
        self.t0 = self._shown = time.monotonic()
        self._tty = out.isatty()

    def advance(self, n: int, fetched: bool = True) -> None:
        """Count `n` more bytes done (fetched now, or already on disk)."""
        self.done += n
        self.fetched += n if fetched else 0
        self._show()

    def file_done(self, skipped_bytes: int) -> None:
        """Count a finished file (with its bytes, if it was already complete)."""
        self.files_done += 1
        self.advance(skipped_bytes, fetched=False)

    def _show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._shown < (0.5 if self._tty else 5.0):
            return
        self._shown = now
        rate = self.fetched / max(now - self.t0, 1e-6)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"{self.files_done}/{self.files} files  {_gib(self.done)}/{_gib(self.total)} "
                f"GiB  {rate / 2**20:7.1f} MiB/s  ETA {eta:5.0f}s")
        self.out.write(("\r" + line) if self._tty else line + "\n")
        self.out.flush()

    def finish(self) -> None:
        """Show the final line."""
        self._show(final=True)
        if self._tty:
            self.out.write("\n")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"
