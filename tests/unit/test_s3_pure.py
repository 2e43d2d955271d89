"""The pure pieces of the S3 API: XML bodies, listing parameters, kept headers, settings."""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET

import pytest

from cachenode.config import ConfigError, NodeConfig, parse_domain, parse_listener
from cachenode.errors import BadRequest
from cachenode.listing import BucketInfo, ListedObject, ListPage
from cachenode.meta_headers import MAX_HEADER_BYTES, kept_headers
from cachenode.s3_errors import S3Error
from cachenode.s3_list import parse_list
from cachenode.s3_xml import (
    buckets_xml,
    error_xml,
    iso8601,
    list_v1_xml,
    list_v2_xml,
    location_xml,
)

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
OBJ = ListedObject("d/a b+c&<.bin", 5, '"e"', 1_700_000_000.25, "STANDARD", "id", "me")


def texts(doc: bytes, path: str) -> list[str]:
    return [e.text or "" for e in ET.fromstring(doc).iter(NS + path)]


def test_error_document_has_code_message_resource_and_request_id() -> None:
    doc = error_xml("NoSuchKey", "no <such> key", "/b/k&", "RID", "HID", [("Key", "k")])
    root = ET.fromstring(doc)
    assert root.tag == "Error"
    assert [(c.tag, c.text) for c in root] == [
        ("Code", "NoSuchKey"), ("Message", "no <such> key"), ("Key", "k"),
        ("Resource", "/b/k&"), ("RequestId", "RID"), ("HostId", "HID")]


def test_list_v2_plain_and_url_encoded() -> None:
    page = ListPage((OBJ,), ("d/sub dir/",), "tok")
    plain = list_v2_xml("b", "d/", "/", 2, False, "", "prev", True, page)
    assert texts(plain, "Key") == [OBJ.key]  # escaped, not encoded
    assert texts(plain, "KeyCount") == ["2"] and texts(plain, "IsTruncated") == ["true"]
    assert texts(plain, "NextContinuationToken") == ["tok"]
    assert texts(plain, "ContinuationToken") == ["prev"]
    assert texts(plain, "ID") == ["id"] and texts(plain, "LastModified") == [
        "2023-11-14T22:13:20.250Z"]
    enc = list_v2_xml("b", "d/", "/", 2, True, "d/a", "", False, page)
    keys = texts(enc, "Key")
    assert keys == ["d/a%20b%2Bc%26%3C.bin"] and urllib.parse.unquote_plus(keys[0]) == OBJ.key
    assert texts(enc, "Prefix") == ["d/", "d/sub%20dir/"]  # Prefix, then CommonPrefixes
    assert texts(enc, "EncodingType") == ["url"] and texts(enc, "StartAfter") == ["d/a"]
    assert texts(enc, "Owner") == [] and texts(enc, "NextContinuationToken") == ["tok"]
    last = list_v2_xml("b", "", "", 1000, False, "", "", False, ListPage(()))
    assert texts(last, "IsTruncated") == ["false"] and texts(last, "NextContinuationToken") == []


def test_list_v1_next_marker_is_the_last_name_of_a_truncated_page() -> None:
    page = ListPage((OBJ,), ("d/z/",), "x")
    doc = list_v1_xml("b", "", "/", 2, False, "c", page)
    assert texts(doc, "NextMarker") == ["d/z/"] and texts(doc, "Marker") == ["c"]
    assert texts(doc, "DisplayName") == ["me"]  # v1 always lists owners
    assert texts(list_v1_xml("b", "", "", 2, False, "", ListPage((OBJ,))), "NextMarker") == []


def test_buckets_and_location() -> None:
    doc = buckets_xml([BucketInfo("m1", 0.0)], "me", "me")
    assert texts(doc, "Name") == ["m1"] and texts(doc, "CreationDate") == [
        "1970-01-01T00:00:00.000Z"]
    assert ET.fromstring(location_xml("")).text is None
    assert ET.fromstring(location_xml("eu-west-1")).text == "eu-west-1"
    assert iso8601(1.5) == "1970-01-01T00:00:01.500Z"


def test_parse_list_v1_and_v2() -> None:
    v2 = parse_list("bkt", {"list-type": "2", "prefix": "m/", "delimiter": "/",
                            "continuation-token": "t", "start-after": "m/a", "max-keys": "5000",
                            "encoding-type": "url", "fetch-owner": "true"}, "strict")
    assert (v2.version, v2.max_keys, v2.encode) == (2, 1000, True)
    q = v2.query
    assert (q.prefix, q.delimiter, q.token, q.start_after, q.limit, q.fetch_owner) == (
        "m/", "/", "t", "m/a", 1000, True)
    v1 = parse_list("bkt", {"marker": "m/b", "max-keys": "2"}, "strict")
    assert (v1.version, v1.marker, v1.query.start_after, v1.query.limit, v1.encode) == (
        1, "m/b", "m/b", 2, False)
    assert parse_list("bkt", {}, "strict").query.limit == 1000


@pytest.mark.parametrize("params", [{"max-keys": "-1"}, {"max-keys": "x"},
                                    {"encoding-type": "base64"}, {"list-type": "3"},
                                    {"list-type": "2", "continuation-token": ""},
                                    {"delimiter": "d" * 2000}])
def test_parse_list_refuses_bad_arguments(params: dict[str, str]) -> None:
    with pytest.raises(S3Error) as e:
        parse_list("bkt", params, "strict")
    assert (e.value.status, e.value.code) == (400, "InvalidArgument")


def test_parse_list_checks_names_under_the_key_policy() -> None:
    with pytest.raises(BadRequest):
        parse_list("bkt", {"prefix": "a//"}, "strict")
    assert parse_list("bkt", {"prefix": "a//"}, "verbatim").query.prefix == "a//"
    with pytest.raises(BadRequest):
        parse_list("x", {}, "strict")


def test_kept_headers_are_the_describing_ones_and_bounded() -> None:
    raw = {"Content-Type": "text/plain", "ETag": '"e"', "Cache-Control": "max-age=1",
           "x-amz-meta-a": "1", "x-amz-checksum-crc32": "AAAAAA==", "Server": "x",
           "x-amz-meta-bad": "caf\u00e9", "Expires": "Thu, 01 Jan 2099 00:00:00 GMT"}
    ctype, headers, sums = kept_headers(raw)
    assert ctype == "text/plain"
    assert headers == (("cache-control", "max-age=1"), ("x-amz-meta-a", "1"),
                       ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"))
    assert sums == (("x-amz-checksum-crc32", "AAAAAA=="),)
    many = {f"x-amz-meta-k{i}": "v" * 1000 for i in range(20)}
    _, kept, _ = kept_headers(many)
    assert 0 < sum(len(k) + len(v) for k, v in kept) <= MAX_HEADER_BYTES


def test_s3_listener_and_domain_settings() -> None:
    assert NodeConfig().s3_addr == ("0.0.0.0", 9000)
    assert parse_listener("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_listener("") is None and parse_listener("off") is None
    assert NodeConfig.from_args(["--s3", "off"], env={}).s3_addr is None
    assert NodeConfig.from_args([], env={"CACHENODE_S3_DOMAIN": "S3.Local."}).s3_domain == (
        "s3.local")
    assert parse_domain("") == ""
    for bad in ("a..b", "a b", "-" * 70):
        with pytest.raises(ConfigError):
            parse_domain(bad)
