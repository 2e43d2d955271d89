"""What an origin listing returns: objects, common prefixes, buckets (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_KEYS = 1000  # one page at most, as S3 caps it


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of a bucket listing, as S3's ListObjectsV2 asks for it."""

    bucket: str
    prefix: str = ""
    delimiter: str = ""
    start_after: str = ""
    token: str = ""  # the origin's continuation token of the previous page
    limit: int = MAX_KEYS
    fetch_owner: bool = False


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object of a listing page."""

    key: str
    size: int
    etag: str
    last_modified: float  # unix seconds
    storage_class: str = "STANDARD"
    owner_id: str = ""  # only when the listing asked for owners
    owner_name: str = ""


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing and the token of the next ('' when this was the last)."""

    objects: tuple[ListedObject, ...]
    prefixes: tuple[str, ...] = ()  # CommonPrefixes, with a delimiter
    next_token: str = ""

    @property
    def truncated(self) -> bool:
        """Return whether more pages follow."""
        return bool(self.next_token)


@dataclass(frozen=True, slots=True)
class BucketInfo:
    """A bucket the origin credentials can see."""

    name: str
    created: float  # unix seconds
