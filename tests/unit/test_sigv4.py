"""The SigV4 verifier against AWS's test suite (as botocore ships it) and botocore's signers."""

from __future__ import annotations

import calendar
import hashlib
import time
import urllib.parse
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from cachenode.access import AccessDenied, RequestView
from cachenode.auth import claims, sigv4
from cachenode.auth.edge import EdgeAuthenticator
from cachenode.auth.keys import parse_keys

SUITE = Path(__file__).parent / "aws4_testsuite"  # botocore tests/unit/auth/aws4_testsuite
SUITE_NOW = calendar.timegm((2015, 8, 30, 12, 36, 0))
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SECRET = "s3cr3t-s3cr3t-s3cr3t-0123"
KEYS = parse_keys(f"AKIDEXAMPLE {SUITE_SECRET}\nAKID1 {SECRET}\nAKID2 {SECRET}x bkt/team-a/\n")


def parse_raw(text: str) -> tuple[RequestView, bytes]:
    """Return the view and body of a raw request file of the suite (obs-fold joined)."""
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    first, *lines = head.split("\n")
    method, rest = first.split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + " " + line)
        else:
            name, _, value = line.partition(":")
            pairs.append((name, value))
    return RequestView.of(method, target, pairs), body.encode()


def suite_cases() -> list[object]:
    """Return the suite's vectors, less the path-normalizing ones: S3 never folds '.', '..'
    or '//' in a path, so those vectors describe other services."""
    return [pytest.param(req, id=str(req.parent.relative_to(SUITE)))
            for req in sorted(SUITE.rglob("*.req"))
            if not str(req.parent.relative_to(SUITE)).startswith("normalize-path")]


@pytest.mark.parametrize("req", suite_cases())
def test_aws4_testsuite(req: Path) -> None:
    view, body = parse_raw(req.read_text())
    want_creq = req.with_suffix(".creq").read_text().replace("\r", "")
    want_sts = req.with_suffix(".sts").read_text().replace("\r", "")
    authz = req.with_suffix(".authz").read_text().replace("\r", "")
    token = [ln for ln in want_creq.split("\n") if ln.startswith("x-amz-security-token:")]
    if token and "x-amz-security-token" not in view.headers:  # botocore adds the session's
        view = RequestView(view.method, view.raw_path, view.raw_query,
                           {**view.headers, "x-amz-security-token": token[0].split(":", 1)[1]})
    claim = claims.header_claim(RequestView(view.method, view.raw_path, view.raw_query,
                                            {**view.headers, "authorization": authz}),
                                authz, "service") if not body else None
    signed = tuple(authz.split("SignedHeaders=")[1].split(",")[0].split(";"))
    payload = hashlib.sha256(body).hexdigest()
    c = sigv4.Claim(sigv4.Credential("AKIDEXAMPLE", "20150830", "us-east-1", "service"),
                    "20150830T123600Z", signed, authz.rsplit("Signature=", 1)[1], payload)
    creq = sigv4.canonical_requests(view, c)[0]
    assert creq == want_creq
    assert sigv4.string_to_sign(c.timestamp, c.credential.scope, creq) == want_sts
    assert sigv4.sign(view, signed, c.credential, SUITE_SECRET, c.timestamp, payload) == authz
    assert sigv4.signature_matches(view, c, SUITE_SECRET)
    assert not sigv4.signature_matches(view, c, SUITE_SECRET + "x")
    if claim is not None:  # no body: the verifier's own reading of the request agrees
        assert claim == c
        claims.check_time(claim, SUITE_NOW)


# --- botocore signing real S3 requests ---------------------------------------------------

KEY_CHARS = st.characters(codec="utf-8", exclude_characters="\x00\r\n",
                          exclude_categories=("Cs",))
KEYS_ST = st.lists(st.text(KEY_CHARS, min_size=1, max_size=12), min_size=1, max_size=4).map(
    "/".join)
QUERY_ST = st.dictionaries(st.sampled_from(["response-content-type", "versionId", "x-id",
                                            "response-cache-control", "prefix", "acl"]),
                           st.text(KEY_CHARS, max_size=10), max_size=3)


def view_of(method: str, url: str, headers: dict[str, str]) -> RequestView:
    """Return the view of what an HTTP client sends for a prepared botocore request."""
    u = urllib.parse.urlsplit(url)
    target = u.path + ("?" + u.query if u.query else "")
    return RequestView.of(method, target, [*headers.items(), ("Host", u.netloc)])


def botocore_signed(key: str, query: dict[str, str], *, method: str = "GET",
                    presign: bool = False, region: str = "eu-central-1",
                    key_id: str = "AKID1", secret: str = SECRET) -> RequestView:
    """Return the view of a request botocore's S3 signer (header or presigned) signed."""
    url = "http://127.0.0.1:8080/bkt/" + urllib.parse.quote(key, safe="/~")
    if query:
        url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    req = AWSRequest(method, url, headers={})
    creds = Credentials(key_id, secret)
    signer = (S3SigV4QueryAuth(creds, "s3", region, expires=300) if presign
              else S3SigV4Auth(creds, "s3", region))
    signer.add_auth(req)
    prepared = req.prepare()
    return view_of(method, prepared.url, dict(prepared.headers))


@settings(max_examples=150, deadline=None)
@given(key=KEYS_ST, query=QUERY_ST, presign=st.booleans(),
       method=st.sampled_from(["GET", "HEAD"]))
def test_botocore_signed_requests_verify(key: str, query: dict[str, str], presign: bool,
                                         method: str) -> None:
    view = botocore_signed(key, query, method=method, presign=presign)
    assert EdgeAuthenticator(KEYS).authenticate(view, time.time()).name == "AKID1"


def tamper(text: str, i: int, ch: str) -> str:
    """Return `text` with the character at `i % len` replaced (by another one)."""
    i %= len(text)
    return text[:i] + (ch if text[i] != ch else "Q") + text[i + 1:]


ALPHABET = "XYZ0123"  # no a-f or '~': a change can never spell the same bytes anew


@settings(max_examples=300, deadline=None)
@given(key=KEYS_ST, query=QUERY_ST, presign=st.booleans(), data=st.data(),
       part=st.sampled_from(["method", "path", "query", "header", "date", "signature"]))
def test_any_tampered_part_is_refused(key: str, query: dict[str, str], presign: bool,
                                      data: st.DataObject, part: str) -> None:
    view = botocore_signed(key, query, presign=presign)
    i, ch = data.draw(st.integers(0, 10**6)), data.draw(st.sampled_from(ALPHABET))
    h = dict(view.headers)
    if part == "method":
        view = RequestView(data.draw(st.sampled_from(["HEAD", "PUT", "get", "POST"])),
                           view.raw_path, view.raw_query, h)
    elif part == "path":
        view = RequestView(view.method, tamper(view.raw_path, i, ch), view.raw_query, h)
    elif part == "query" and view.raw_query:
        view = RequestView(view.method, view.raw_path, tamper(view.raw_query, i, ch), h)
    elif part == "header" or (part == "query" and not view.raw_query):
        signed = ["host"] if presign else h["authorization"].split("SignedHeaders=")[1].split(
            ",")[0].split(";")
        name = data.draw(st.sampled_from(signed))
        h[name] = tamper(h[name], i, ch)
        view = RequestView(view.method, view.raw_path, view.raw_query, h)
    elif part == "date":
        if presign:
            at = view.raw_query.index("X-Amz-Date=") + len("X-Amz-Date=")
            view = RequestView(view.method, view.raw_path,
                               tamper(view.raw_query, at + i % 16, ch), h)
        else:
            h["x-amz-date"] = tamper(h["x-amz-date"], i % 16, ch)
            view = RequestView(view.method, view.raw_path, view.raw_query, h)
    else:
        sig = view.raw_query.rsplit("X-Amz-Signature=", 1)[1] if presign else (
            h["authorization"].rsplit("Signature=", 1)[1])
        j = i % len(sig)
        bad = sig[:j] + ("0" if sig[j] != "0" else "1") + sig[j + 1:]
        if presign:
            view = RequestView(view.method, view.raw_path, view.raw_query.replace(sig, bad), h)
        else:
            h["authorization"] = h["authorization"].replace(sig, bad)
            view = RequestView(view.method, view.raw_path, view.raw_query, h)
    with pytest.raises(AccessDenied):
        EdgeAuthenticator(KEYS).authenticate(view, time.time())


def test_botocore_generic_signer_with_a_date_header_verifies() -> None:
    req = AWSRequest("GET", "http://127.0.0.1:8080/bkt/k", headers={
        "Date": "Mon, 01 Jan 2024 00:00:00 GMT", "X-Amz-Content-SHA256": sigv4.EMPTY_SHA256})
    # botocore's generic signer (not S3's) sets Date to now and signs it, no x-amz-date
    SigV4Auth(Credentials("AKID1", SECRET), "s3", "us-east-1").add_auth(req)
    prepared = req.prepare()
    view = view_of("GET", prepared.url, dict(prepared.headers))
    assert "x-amz-date" not in view.headers  # botocore signs Date when a request has one
    assert EdgeAuthenticator(KEYS).authenticate(view, time.time()).name == "AKID1"
    late = time.time() + claims.SKEW_S + 60  # the Date header is the request time
    with pytest.raises(AccessDenied) as e:
        EdgeAuthenticator(KEYS).authenticate(view, late)
    assert e.value.code == "RequestTimeTooSkewed"


def test_wire_path_signed_verbatim_is_accepted_and_names_the_same_object() -> None:
    # A client that encodes '/' in a key as %2F and signs its wire path byte for byte.
    view = RequestView.of("GET", "/bkt/a%2Fb?x=1",
                          [("Host", "h"), ("x-amz-date", "20240101T000000Z")])
    cred = sigv4.Credential("AKID1", "20240101", "us-east-1", "s3")
    claim = sigv4.Claim(cred, "20240101T000000Z", ("host", "x-amz-date"), "",
                        sigv4.EMPTY_SHA256)
    s3_form, wire_form = sigv4.canonical_requests(view, claim)
    assert s3_form.split("\n")[1] == "/bkt/a/b" and wire_form.split("\n")[1] == "/bkt/a%2Fb"
    key = sigv4.signing_key(SECRET, cred.date, cred.region, cred.service)
    sig = sigv4.signature(key, sigv4.string_to_sign(claim.timestamp, cred.scope, wire_form))
    signed = RequestView(view.method, view.raw_path, view.raw_query, {
        **view.headers, "authorization": f"{sigv4.ALGORITHM} Credential=AKID1/{cred.scope}, "
        f"SignedHeaders=host;x-amz-date, Signature={sig}"})
    assert EdgeAuthenticator(KEYS).authenticate(signed, calendar.timegm(
        (2024, 1, 1, 0, 0, 0))).name == "AKID1"


def test_canonical_forms() -> None:
    assert sigv4.canonical_uri("") == "/"
    assert sigv4.canonical_uri("/b/%7e/a b/%2f/x%41") == "/b/~/a%20b///xA"
    assert sigv4.canonical_uri("/b//k/./..") == "/b//k/./.."  # S3: never normalized
    pairs = sigv4.query_pairs("b=2&acl&a=%2f+x&a=1&&sp=a%20b")
    assert sigv4.canonical_query(pairs) == "a=%2F%2Bx&a=1&acl=&b=2&sp=a%20b"
    pre = sigv4.query_pairs("X-Amz-Signature=abc&X-Amz-Date=1")
    assert sigv4.canonical_query(pre, presigned=True) == "X-Amz-Date=1"


def test_signing_keys_are_cached_per_secret_day_and_region() -> None:
    sigv4.signing_key.cache_clear()
    for _ in range(3):
        sigv4.signing_key(SECRET, "20240101", "us-east-1", "s3")
    sigv4.signing_key(SECRET, "20240102", "us-east-1", "s3")
    info = sigv4.signing_key.cache_info()
    assert (info.hits, info.misses) == (2, 2)
