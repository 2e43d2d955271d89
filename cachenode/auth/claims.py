"""Read a SigV4 claim from a request (Authorization header or presigned query) and check it.

Pure (stdlib only). Each refusal is an AccessDenied with the code an S3 client expects
(AWS's own codes and wording where it has them); no reason ever holds a secret.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
import urllib.parse
from collections.abc import Mapping

from cachenode.access import AccessDenied, RequestView
from cachenode.auth.sigv4 import (
    ALGORITHM,
    EMPTY_SHA256,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    Claim,
    Credential,
    query_pairs,
)

SKEW_S = 15 * 60  # AWS's window for the request time
MAX_EXPIRES_S = 7 * 24 * 3600  # a presigned URL lives at most a week
HEADER_ERR = "AuthorizationHeaderMalformed"
QUERY_ERR = "AuthorizationQueryParametersError"
QUERY_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                "X-Amz-SignedHeaders", "X-Amz-Signature")
_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_SCOPE_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")
PAYLOADS = (UNSIGNED_PAYLOAD, EMPTY_SHA256)  # a read has no body to sign


def is_presigned(view: RequestView) -> bool:
    """Return whether the query carries SigV4 parameters (a presigned URL)."""
    return any(urllib.parse.unquote(n) in ("X-Amz-Algorithm", "X-Amz-Signature",
                                           "X-Amz-Credential")
               for n, _ in query_pairs(view.raw_query))


def claim_of(view: RequestView, service: str = "s3") -> Claim | None:
    """Return the request's SigV4 claim, None if it carries no credentials at all."""
    auth = view.headers.get("authorization")
    presigned = is_presigned(view)
    if auth is not None and presigned:
        raise AccessDenied("InvalidArgument", "only one auth mechanism allowed: an "
                           "Authorization header or X-Amz-* query parameters, not both")
    if auth is not None:
        return header_claim(view, auth, service)
    if not presigned and any(n == "AWSAccessKeyId" for n, _ in query_pairs(view.raw_query)):
        raise AccessDenied("InvalidRequest", "signature version 2 presigned URLs are not "
                           f"supported; presign with {ALGORITHM} (boto3: Config("
                           "signature_version='s3v4'))")
    return query_claim(view, service) if presigned else None


def header_claim(view: RequestView, auth: str, service: str) -> Claim:
    """Return the claim of an `Authorization: AWS4-HMAC-SHA256 ...` header."""
    scheme, _, rest = auth.partition(" ")
    if scheme != ALGORITHM:
        raise AccessDenied("InvalidRequest", f"the authorization mechanism {scheme[:32]!r} "
                           f"is not supported; use {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    missing = [f for f in ("Credential", "SignedHeaders", "Signature") if not fields.get(f)]
    if missing:
        raise AccessDenied(HEADER_ERR, f"the authorization header lacks {', '.join(missing)}")
    timestamp = header_timestamp(view.headers)
    cred = credential(fields["Credential"], timestamp, service, HEADER_ERR)
    signed = signed_headers(fields["SignedHeaders"], HEADER_ERR)
    date_header = "x-amz-date" if "x-amz-date" in view.headers else "date"
    check_signed(view.headers, signed, date_header)
    payload = view.headers.get("x-amz-content-sha256", EMPTY_SHA256)
    check_payload(payload)
    return Claim(cred, timestamp, signed, fields["Signature"], payload)


def query_claim(view: RequestView, service: str) -> Claim:
    """Return the claim of a presigned URL (X-Amz-* query parameters)."""
    params: dict[str, str] = {}
    for raw_name, raw_value in query_pairs(view.raw_query):
        name = urllib.parse.unquote(raw_name)
        if name in QUERY_PARAMS:
            if name in params:
                raise AccessDenied(QUERY_ERR, f"{name} is given more than once")
            params[name] = urllib.parse.unquote(raw_value)
    missing = [p for p in QUERY_PARAMS if not params.get(p)]
    if missing:
        raise AccessDenied(QUERY_ERR, f"query-string authentication requires "
                           f"{', '.join(missing)}")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise AccessDenied(QUERY_ERR, f"X-Amz-Algorithm only supports {ALGORITHM}")
    timestamp = params["X-Amz-Date"]
    epoch_of(timestamp, QUERY_ERR)
    expires = params["X-Amz-Expires"]
    if not (expires.isascii() and expires.isdigit() and int(expires) <= MAX_EXPIRES_S):
        raise AccessDenied(QUERY_ERR, f"X-Amz-Expires must be a number of seconds from 0 to "
                           f"{MAX_EXPIRES_S} (a week)")
    cred = credential(params["X-Amz-Credential"], timestamp, service, QUERY_ERR)
    signed = signed_headers(params["X-Amz-SignedHeaders"], QUERY_ERR)
    check_signed(view.headers, signed, None)
    payload = view.headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
    check_payload(payload)
    return Claim(cred, timestamp, signed, params["X-Amz-Signature"], payload, presigned=True,
                 expires_s=int(expires))


def header_timestamp(headers: Mapping[str, str]) -> str:
    """Return the request time from x-amz-date, else Date, as YYYYMMDDTHHMMSSZ."""
    value = headers.get("x-amz-date")
    if value is not None:
        epoch_of(value, "AccessDenied")
        return value
    parsed = email.utils.parsedate_tz(headers.get("date", ""))
    if parsed is None:
        raise AccessDenied("AccessDenied", "AWS authentication requires a valid Date or "
                           "x-amz-date header")
    at = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def epoch_of(timestamp: str, err: str) -> int:
    """Return the Unix time of a YYYYMMDDTHHMMSSZ timestamp, or refuse with code `err`."""
    try:
        if _TIMESTAMP.fullmatch(timestamp):
            return calendar.timegm(time.strptime(timestamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        pass
    raise AccessDenied(err, f"the request time {timestamp[:20]!r} is not a valid "
                       "YYYYMMDDTHHMMSSZ (ISO 8601 basic) time")


def credential(text: str, timestamp: str, service: str, err: str) -> Credential:
    """Return the credential `AKID/date/region/service/aws4_request`, checked."""
    parts = text.split("/")
    if len(parts) != 5 or not all(_SCOPE_PART.fullmatch(p) for p in parts):
        raise AccessDenied(err, "the credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/"
                           f"SERVICE/{TERMINATOR}")
    cred = Credential(*parts[:4])
    if cred.date != timestamp[:8]:
        raise AccessDenied(err, f"invalid credential date {cred.date!r}: it is not the date "
                           f"of the request time {timestamp}")
    if cred.service != service:
        raise AccessDenied(err, f"the credential names service {cred.service!r}; this "
                           f"endpoint is {service!r}")
    if parts[4] != TERMINATOR:
        raise AccessDenied(err, f"the credential must end in {TERMINATOR}")
    return cred


def signed_headers(text: str, err: str) -> tuple[str, ...]:
    """Return the signed header names: lower case, sorted, each once."""
    names = tuple(text.split(";"))
    if list(names) != sorted(set(names)) or any(n != n.lower() or not n for n in names):
        raise AccessDenied(err, "SignedHeaders must be lower-case names, sorted, each once")
    return names


def check_signed(headers: Mapping[str, str], signed: tuple[str, ...],
                 date_header: str | None) -> None:
    """Refuse unless host, the date header and every x-amz-* header sent are signed."""
    needed = ["host"] + ([date_header] if date_header else [])
    needed += [h for h in headers if h.startswith("x-amz-")]
    unsigned = sorted(h for h in set(needed) if h not in signed)
    if unsigned:
        raise AccessDenied("AccessDenied", "there were headers present in the request which "
                           f"were not signed: {', '.join(unsigned)}")


def check_payload(payload: str) -> None:
    """Refuse a payload hash other than UNSIGNED-PAYLOAD or the empty body's (reads only)."""
    if payload not in PAYLOADS:
        raise AccessDenied("XAmzContentSHA256Mismatch", "x-amz-content-sha256 must be "
                           f"{UNSIGNED_PAYLOAD} or the hash of an empty body: this API only "
                           "reads (streaming and signed bodies are not accepted)")


def check_time(claim: Claim, now: float) -> None:
    """Refuse a request outside the 15-minute window, or a presigned URL past its expiry."""
    at = epoch_of(claim.timestamp, "AccessDenied")
    if claim.presigned:
        if now > at + claim.expires_s:
            raise AccessDenied("AccessDenied", f"request has expired (signed at "
                               f"{claim.timestamp} for {claim.expires_s}s)")
        if at > now + SKEW_S:
            raise AccessDenied("AccessDenied", f"request is not valid yet: signed at "
                               f"{claim.timestamp}, more than 15 minutes ahead of this node")
    elif abs(now - at) > SKEW_S:
        raise AccessDenied("RequestTimeTooSkewed", f"the difference between the request "
                           f"time {claim.timestamp} and the server's time "
                           f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))} is too "
                           "large (more than 15 minutes)")


def check_signature_format(claim: Claim) -> None:
    """Refuse a signature that is not 64 lower-case hex digits (before any HMAC)."""
    if not _SIGNATURE.fullmatch(claim.signature):
        raise AccessDenied("SignatureDoesNotMatch", "the signature must be 64 lower-case "
                           "hex digits")
