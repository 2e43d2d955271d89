"""Regenerate the Python gRPC stubs in cachenode/pb/ from proto/ (needs grpcio-tools)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "cachenode" / "pb"
PROTO = "cachecluster/v1/blockcache.proto"


def main() -> int:
    """Run protoc and make the generated imports package-relative."""
    OUT.mkdir(exist_ok=True)
    (OUT / "__init__.py").write_text('"""Generated gRPC stubs; regenerate with proto/gen.py."""\n')
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={OUT}",
                      f"--pyi_out={OUT}", f"--grpc_python_out={OUT}", str(ROOT / "proto" / PROTO)])
    if rc:
        return int(rc)
    gen = OUT / "cachecluster" / "v1"
    for f in gen.iterdir():
        text = re.sub(r"^from cachecluster\.v1 import", "from . import", f.read_text(), flags=re.M)
        (OUT / f.name).write_text(text)
    for f in gen.iterdir():
        f.unlink()
    gen.rmdir()
    (OUT / "cachecluster").rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
