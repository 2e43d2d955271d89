"""The installed blockcache version, for --version and the build_info metric (stdlib only)."""

from __future__ import annotations

import platform
from importlib import metadata


def version() -> str:
    """Return the version of the installed blockcache distribution ('unknown' if none)."""
    try:
        return metadata.version("blockcache")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line(prog: str) -> str:
    """Return what `prog --version` prints."""
    return f"{prog} (blockcache) {version()}, Python {platform.python_version()}"
