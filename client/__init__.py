"""The blockcache client: a ring-aware parallel range reader and a file-like object."""

from client.client import CacheClient, ObjectInfo
from client.errors import ClientError, NotFound, ObjectChanged, Unavailable
from client.fileobj import CacheFile, open_object

__all__ = ["CacheClient", "CacheFile", "ClientError", "NotFound", "ObjectChanged",
           "ObjectInfo", "Unavailable", "open_object"]
