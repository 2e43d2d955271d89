"""AWS Signature Version 4 (AWS4-HMAC-SHA256) as S3 uses it: canonical request, key, signature.

Pure (stdlib only, no I/O). The wire facts follow botocore's signers (botocore/auth.py:
SigV4Auth, S3SigV4Auth, S3SigV4QueryAuth) and AWS's SigV4 test suite (botocore
tests/unit/auth/aws4_testsuite), both of which tests/unit/test_sigv4.py runs against:

- Canonical URI, for S3: the path decoded once and URI-encoded once ('/' kept, unreserved
  A-Z a-z 0-9 - . _ ~ kept, every other byte as %XX in upper case), never normalized: no
  double encoding, '//' and '.' segments stay. So `%7e` and `~` sign alike, and `%2F` in a
  path signs as '/'. A client that signs its wire path byte for byte (botocore's own
  URL-query form) is accepted as well: both forms come from the same request bytes and
  decode to the same object, so neither lets a signature cover another request.
- Canonical query: each name and value decoded once and URI-encoded (unreserved kept, a
  space as %20, '+' as %2B, '/' as %2F), pairs sorted by name then value; a name without
  '=' has the empty value (`acl` -> `acl=`). A presigned URL signs every pair but
  X-Amz-Signature.
- Canonical headers: the signed ones, lower case, values trimmed with inner runs of white
  space made one, repeated headers joined by ','; then the signed header list, then the
  payload hash (x-amz-content-sha256 as sent; UNSIGNED-PAYLOAD for a presigned URL).
- Signing key: HMAC chain "AWS4"+secret -> date -> region -> service -> "aws4_request",
  cached per (secret, date, region, service).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cachenode.access import RequestView

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TERMINATOR = "aws4_request"
SIGNATURE_PARAM = "X-Amz-Signature"


@dataclass(frozen=True, slots=True)
class Credential:
    """The credential a request names: access key id and the scope its key was derived for."""

    key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str

    @property
    def scope(self) -> str:
        """Return the credential scope line of the string to sign."""
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a SigV4 request claims: who signed it, when, which headers, and the signature."""

    credential: Credential
    timestamp: str  # YYYYMMDDTHHMMSSZ, as in the string to sign
    signed_headers: tuple[str, ...]
    signature: str
    payload_hash: str
    presigned: bool = False
    expires_s: int = 0  # presigned: seconds from `timestamp` the URL stays valid


def uri_encode(raw: str, safe: str = "") -> str:
    """Return `raw` decoded once and URI-encoded as SigV4 wants (upper-case %XX)."""
    return urllib.parse.quote(urllib.parse.unquote_to_bytes(raw), safe=safe)


def canonical_uri(raw_path: str) -> str:
    """Return the S3 canonical URI of a raw path (decoded once, encoded once, '/' kept)."""
    return uri_encode(raw_path or "/", safe="/")


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """Return the raw (name, value) pairs of a query string; a bare name has value ''."""
    return [(n, v) for n, _, v in (p.partition("=") for p in raw_query.split("&") if p)]


def canonical_query(pairs: Sequence[tuple[str, str]], presigned: bool = False) -> str:
    """Return the canonical query string of raw pairs (without X-Amz-Signature if presigned)."""
    encoded = sorted((uri_encode(n), uri_encode(v)) for n, v in pairs
                     if not (presigned and urllib.parse.unquote(n) == SIGNATURE_PARAM))
    return "&".join(f"{n}={v}" for n, v in encoded)


def verbatim_query(pairs: Sequence[tuple[str, str]], presigned: bool = False) -> str:
    """Return the query as a client signing its wire bytes sorts it (botocore's URL form)."""
    kept = sorted((n, v) for n, v in pairs
                  if not (presigned and urllib.parse.unquote(n) == SIGNATURE_PARAM))
    return "&".join(f"{n}={v}" for n, v in kept)


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, str],
                      signed: Sequence[str], payload_hash: str) -> str:
    """Return the canonical request whose hash the string to sign carries."""
    lines = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    return "\n".join([method, uri, query, lines, ";".join(signed), payload_hash])


def string_to_sign(timestamp: str, scope: str, creq: str) -> str:
    """Return the string to sign of a canonical request."""
    digest = hashlib.sha256(creq.encode("utf-8", "surrogateescape")).hexdigest()
    return "\n".join([ALGORITHM, timestamp, scope, digest])


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


@lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Return the key derived from a secret for one day, region and service (cached)."""
    k = _hmac(f"AWS4{secret}".encode(), date)
    return _hmac(_hmac(_hmac(k, region), service), TERMINATOR)


def signature(key: bytes, sts: str) -> str:
    """Return the hex signature of a string to sign."""
    return hmac.new(key, sts.encode("utf-8"), hashlib.sha256).hexdigest()


def canonical_requests(view: RequestView, claim: Claim) -> list[str]:
    """Return the canonical requests a valid signature may cover: the S3 form, else verbatim."""
    pairs = query_pairs(view.raw_query)
    forms = [(canonical_uri(view.raw_path), canonical_query(pairs, claim.presigned)),
             (view.raw_path or "/", verbatim_query(pairs, claim.presigned))]
    if forms[1] == forms[0]:
        forms.pop()
    return [canonical_request(view.method, uri, query, view.headers, claim.signed_headers,
                              claim.payload_hash) for uri, query in forms]


def signature_matches(view: RequestView, claim: Claim, secret: str) -> bool:
    """Return whether the claim's signature is the one `secret` gives this request."""
    c = claim.credential
    key = signing_key(secret, c.date, c.region, c.service)
    ok = False
    for creq in canonical_requests(view, claim):  # every form compared: no early exit
        want = signature(key, string_to_sign(claim.timestamp, c.scope, creq))
        ok |= hmac.compare_digest(want, claim.signature)
    return ok


def sign(view: RequestView, signed: Sequence[str], credential: Credential, secret: str,
         timestamp: str, payload_hash: str = UNSIGNED_PAYLOAD) -> str:
    """Return the Authorization header value signing `view` (its headers include `signed`)."""
    claim = Claim(credential, timestamp, tuple(signed), "", payload_hash)
    creq = canonical_requests(view, claim)[0]
    key = signing_key(secret, credential.date, credential.region, credential.service)
    sig = signature(key, string_to_sign(timestamp, credential.scope, creq))
    return (f"{ALGORITHM} Credential={credential.key_id}/{credential.scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
