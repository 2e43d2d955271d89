"""S3 XML bodies: errors, ListObjects v1/v2, ListBuckets, GetBucketLocation (pure, no I/O).

Element names and order follow the S3 API reference (ListObjectsV2, ListObjects,
ListBuckets, GetBucketLocation, Error responses). With encoding-type=url the key-like
elements are percent-encoded (v2: Delimiter, Prefix, Key, StartAfter, CommonPrefixes;
v1: Delimiter, Marker, Prefix, NextMarker, Key, CommonPrefixes): '/' stays, a space is %20
and '+' is %2B, which botocore's unquote_plus and every SDK's decoder read back exactly.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable
from xml.sax.saxutils import escape

from cachenode.listing import BucketInfo, ListedObject, ListPage

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601(ts: float) -> str:
    """Return a unix time as S3 writes it in XML: 2009-10-12T17:50:30.000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def el(name: str, value: object) -> str:
    """Return one XML element with escaped text."""
    return f"<{name}>{escape(str(value))}</{name}>"


def error_xml(code: str, message: str, resource: str, request_id: str, host_id: str,
              extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """Return an S3 <Error> document (Code, Message, extra fields, Resource, RequestId)."""
    fields = "".join(el(k, v) for k, v in extra)
    return (HEAD + "<Error>" + el("Code", code) + el("Message", message) + fields
            + el("Resource", resource) + el("RequestId", request_id) + el("HostId", host_id)
            + "</Error>").encode()


def _enc(value: str, encode: bool) -> str:
    return urllib.parse.quote(value, safe="/") if encode else value


def _contents(o: ListedObject, encode: bool, owner: bool) -> str:
    """Return one <Contents> element."""
    who = ("<Owner>" + el("ID", o.owner_id) + el("DisplayName", o.owner_name) + "</Owner>"
           if owner else "")
    return ("<Contents>" + el("Key", _enc(o.key, encode))
            + el("LastModified", iso8601(o.last_modified)) + el("ETag", o.etag)
            + el("Size", o.size) + who + el("StorageClass", o.storage_class) + "</Contents>")


def _entries(page: ListPage, encode: bool, owner: bool) -> str:
    """Return the Contents and CommonPrefixes of a page."""
    return ("".join(_contents(o, encode, owner) for o in page.objects)
            + "".join("<CommonPrefixes>" + el("Prefix", _enc(p, encode)) + "</CommonPrefixes>"
                      for p in page.prefixes))


def list_v2_xml(bucket: str, prefix: str, delimiter: str, max_keys: int, encode: bool,
                start_after: str, token: str, fetch_owner: bool, page: ListPage) -> bytes:
    """Return a ListObjectsV2 <ListBucketResult>."""
    parts = [el("Name", bucket), el("Prefix", _enc(prefix, encode)),
             el("KeyCount", len(page.objects) + len(page.prefixes)), el("MaxKeys", max_keys)]
    if delimiter:
        parts.append(el("Delimiter", _enc(delimiter, encode)))
    if encode:
        parts.append(el("EncodingType", "url"))
    parts.append(el("IsTruncated", "true" if page.truncated else "false"))
    if token:
        parts.append(el("ContinuationToken", token))
    if page.truncated:
        parts.append(el("NextContinuationToken", page.next_token))
    if start_after:
        parts.append(el("StartAfter", _enc(start_after, encode)))
    return _result(parts, _entries(page, encode, fetch_owner))


def list_v1_xml(bucket: str, prefix: str, delimiter: str, max_keys: int, encode: bool,
                marker: str, page: ListPage) -> bytes:
    """Return a ListObjects (v1) <ListBucketResult>; NextMarker is the page's last name."""
    parts = [el("Name", bucket), el("Prefix", _enc(prefix, encode)),
             el("Marker", _enc(marker, encode)), el("MaxKeys", max_keys)]
    if delimiter:
        parts.append(el("Delimiter", _enc(delimiter, encode)))
    if encode:
        parts.append(el("EncodingType", "url"))
    parts.append(el("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated:
        names = [o.key for o in page.objects] + list(page.prefixes)
        parts.append(el("NextMarker", _enc(max(names, default=marker), encode)))
    return _result(parts, _entries(page, encode, True))


def _result(parts: list[str], entries: str) -> bytes:
    return (HEAD + f'<ListBucketResult xmlns="{NS}">' + "".join(parts) + entries
            + "</ListBucketResult>").encode()


def buckets_xml(buckets: Iterable[BucketInfo], owner_id: str, owner_name: str) -> bytes:
    """Return a ListBuckets <ListAllMyBucketsResult>."""
    items = "".join("<Bucket>" + el("Name", b.name) + el("CreationDate", iso8601(b.created))
                    + "</Bucket>" for b in buckets)
    return (HEAD + f'<ListAllMyBucketsResult xmlns="{NS}"><Owner>' + el("ID", owner_id)
            + el("DisplayName", owner_name) + "</Owner><Buckets>" + items
            + "</Buckets></ListAllMyBucketsResult>").encode()


def location_xml(region: str) -> bytes:
    """Return a GetBucketLocation <LocationConstraint> (empty for us-east-1)."""
    return (HEAD + f'<LocationConstraint xmlns="{NS}">{escape(region)}'
            "</LocationConstraint>").encode()
