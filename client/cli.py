"""`cachectl`: inspect and read through a blockcache node from the shell (thin)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import IO

from client.errors import ClientError, NotFound, Unavailable

DEFAULT_NODE = "http://127.0.0.1:8080"
TIMEOUT_S = 60.0


def split_s3_url(url: str) -> tuple[str, str]:
    """Return (bucket, key) from 's3://bucket/key'."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    return parsed.netloc, parsed.path.lstrip("/")


def open_object(node: str, bucket: str, key: str, method: str = "GET",
                byte_range: str | None = None) -> urllib.response.addinfourl:
    """Send one request to a node and return the open response, or raise ClientError."""
    url = f"{node.rstrip('/')}/{urllib.parse.quote(bucket)}/{urllib.parse.quote(key)}"
    req = urllib.request.Request(url, method=method)
    if byte_range:
        req.add_header("Range", f"bytes={byte_range}")
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        reason = e.read().decode(errors="replace").strip() or e.reason
        try:
            reason = json.loads(reason)["reason"]
        except (ValueError, KeyError, TypeError):
            pass
        kind = NotFound if e.code == 404 else Unavailable if e.code >= 500 else ClientError
        raise kind(f"{e.code}: {reason}") from None
    except OSError as e:
        raise Unavailable(f"cannot reach {node}: {e}") from None


def cmd_stat(args: argparse.Namespace, out: IO[str]) -> None:
    """Print an object's size, ETag and modification time as JSON."""
    bucket, key = split_s3_url(args.url)
    with open_object(args.node, bucket, key, "HEAD") as r:
        info = {"bucket": bucket, "key": key, "size": int(r.headers["Content-Length"]),
                "etag": r.headers["ETag"], "last_modified": r.headers["Last-Modified"]}
    out.write(json.dumps(info) + "\n")


def cmd_cat(args: argparse.Namespace, out: IO[str]) -> None:
    """Stream an object (or a byte range of it) to stdout."""
    bucket, key = split_s3_url(args.url)
    sink = getattr(out, "buffer", out)
    try:
        with open_object(args.node, bucket, key, byte_range=args.range) as r:
            shutil.copyfileobj(r, sink, 1024 * 1024)
        sink.flush()
    except http.client.IncompleteRead as e:
        raise Unavailable(f"the node cut the response after {len(e.partial)} more bytes "
                          "(object changed or origin failed mid-read); retry") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the parser documenting every cachectl command."""
    p = argparse.ArgumentParser(prog="cachectl", description="Read through a blockcache node.")
    p.add_argument("--node", default=os.environ.get("CACHECTL_NODE", DEFAULT_NODE),
                   help=f"node HTTP URL [env CACHECTL_NODE; default {DEFAULT_NODE}]")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stat", help="show size, ETag and modification time of an object")
    s.add_argument("url", help="s3://bucket/key")
    s.set_defaults(fn=cmd_stat)
    c = sub.add_parser("cat", help="write an object (or --range) to stdout")
    c.add_argument("url", help="s3://bucket/key")
    c.add_argument("--range", help="byte range 'first-last', 'first-' or '-suffix'")
    c.set_defaults(fn=cmd_cat)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run cachectl; exit 1 with a reason on failure."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args, sys.stdout)
    except ClientError as e:
        print(f"cachectl: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cachectl cat ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
