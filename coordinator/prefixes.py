"""Pure checks of what a warmup prefix holds: is it a model version, or a model's root?

`cachectl warmup s3://models/tiny-llm/` (one folder too high) would record model `models`,
version `tiny-llm`, and the keep-N policy would never see the real versions under it. A
prefix with no object of its own whose sub-folders look like versions (a digit in the
name: v1, 2.0, 2024-05-01, a commit hash) is such a root; the API refuses it with the
versions it found, unless the request names its own pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_SUGGESTED = 5
_DIGIT = re.compile(r"[0-9]")


def version_folders(prefix: str, keys: Iterable[str]) -> list[str]:
    """Return the version-like sub-folders of `prefix` if it has no object of its own, else []."""
    folders: set[str] = set()
    for key in keys:
        rest = key[len(prefix):]
        if "/" not in rest:
            return []  # an object of its own: the prefix is a version
        folders.add(rest.split("/", 1)[0])
    return sorted((f for f in folders if _DIGIT.search(f)), key=_natural)


def _natural(name: str) -> list[tuple[int, int | str]]:
    """Return a sort key that orders v2 before v10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"([0-9]+)", name) if p]


def too_high(bucket: str, prefix: str, folders: list[str]) -> str:
    """Return the refusal of a model root, suggesting its newest-looking version."""
    shown = ", ".join(f"{f}/" for f in folders[-MAX_SUGGESTED:])
    more = f" (the last {MAX_SUGGESTED} of {len(folders)})" if len(folders) > MAX_SUGGESTED else ""
    return (f"s3://{bucket}/{prefix} holds no object of its own, only folders that look like "
            f"versions{more}: {shown}; it is a model, not one of its versions. Warm one, e.g. "
            f"s3://{bucket}/{prefix}{folders[-1]}/ (or give --pattern to warm it as it is)")
