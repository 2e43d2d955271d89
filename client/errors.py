"""Errors the client reports; each carries the node's reason when there is one."""

from __future__ import annotations


class ClientError(Exception):
    """A read through the cache failed; `str()` says why."""


class NotFound(ClientError):
    """The bucket or key does not exist at the origin."""


class Unavailable(ClientError):
    """No node could serve the request (or the origin failed for uncached bytes)."""


class ObjectChanged(ClientError):
    """The object was overwritten at origin while it was being read: stat it again."""
