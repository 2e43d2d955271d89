"""Each refusal of the edge authenticator has the S3 code a client expects, and no secret."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import botocore.auth
import pytest

from cachenode.access import AccessDenied, RequestView
from cachenode.auth import claims
from cachenode.auth.edge import ANONYMOUS, EdgeAuthenticator
from cachenode.auth.keys import parse_keys
from tests.unit.test_sigv4 import SECRET, botocore_signed

KEYS = parse_keys(f"AKID1 {SECRET}\nAKID2 {SECRET}x bkt/team-a/ other\n")
AUTH = EdgeAuthenticator(KEYS)


@pytest.fixture
def signed_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Make botocore sign as if its clock were `offset_s` seconds off."""
    def at(offset_s: float) -> None:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            seconds=offset_s)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    yield at


def refused(view: RequestView, now: float | None = None,
            auth: EdgeAuthenticator = AUTH) -> AccessDenied:
    with pytest.raises(AccessDenied) as e:
        auth.authenticate(view, time.time() if now is None else now)
    assert SECRET not in str(e.value) and SECRET not in e.value.code
    return e.value


def with_headers(view: RequestView, **changes: str) -> RequestView:
    return RequestView(view.method, view.raw_path, view.raw_query, {**view.headers, **changes})


def test_codes_of_credential_failures() -> None:
    assert refused(RequestView.of("GET", "/bkt/k", [("Host", "h")])).code == "AccessDenied"
    assert refused(botocore_signed("k", {}, key_id="NOPE1")).code == "InvalidAccessKeyId"
    assert refused(botocore_signed("k", {}, secret=SECRET + "!")).code == (
        "SignatureDoesNotMatch")
    assert refused(botocore_signed("k", {}, presign=True, secret="x" * 20)).code == (
        "SignatureDoesNotMatch")
    v2 = RequestView.of("GET", "/bkt/k", [("Host", "h"), ("Authorization", "AWS AKID1:abc=")])
    assert refused(v2).code == "InvalidRequest"
    both = with_headers(botocore_signed("k", {}, presign=True),
                        authorization=botocore_signed("k", {}).headers["authorization"])
    assert refused(both).code == "InvalidArgument"


@pytest.mark.parametrize("offset_s", [-20 * 60, 20 * 60])
def test_a_request_20_minutes_skewed_is_refused(signed_at, offset_s: float) -> None:  # type: ignore[no-untyped-def]
    signed_at(offset_s)
    assert refused(botocore_signed("k", {})).code == "RequestTimeTooSkewed"
    signed_at(offset_s / 2)  # 10 minutes: inside the window
    assert AUTH.authenticate(botocore_signed("k", {}), time.time()).name == "AKID1"


def test_presigned_url_expiry_is_honoured(signed_at) -> None:  # type: ignore[no-untyped-def]
    signed_at(-299)
    view = botocore_signed("k", {}, presign=True)  # X-Amz-Expires=300
    assert AUTH.authenticate(view, time.time()).name == "AKID1"
    e = refused(view, time.time() + 2)
    assert e.code == "AccessDenied" and "expired" in e.reason
    signed_at(claims.SKEW_S + 60)  # from a clock far ahead
    assert "not valid yet" in refused(botocore_signed("k", {}, presign=True)).reason


@pytest.mark.parametrize("expires", ["604801", "-1", "1e3", ""])
def test_x_amz_expires_over_a_week_or_not_a_number_is_refused(expires: str) -> None:
    view = botocore_signed("k", {}, presign=True)
    q = view.raw_query.replace("X-Amz-Expires=300", f"X-Amz-Expires={expires}")
    e = refused(RequestView(view.method, view.raw_path, q, view.headers))
    assert e.code == claims.QUERY_ERR


def test_credential_scope_is_checked() -> None:
    view = botocore_signed("k", {})
    auth = view.headers["authorization"]
    day = auth.split("/")[1]
    other_day = str(int(day) - 1)
    assert refused(with_headers(view, authorization=auth.replace(f"/{day}/", f"/{other_day}/"))
                   ).code == claims.HEADER_ERR
    assert refused(with_headers(view, authorization=auth.replace("/s3/", "/ec2/"))
                   ).code == claims.HEADER_ERR
    assert refused(with_headers(view, authorization=auth.replace("aws4_request", "aws5"))
                   ).code == claims.HEADER_ERR
    # any region is accepted: the signature is bound to the one it names
    assert AUTH.authenticate(botocore_signed("k", {}, region="ap-south-2"), time.time())


def test_signed_headers_must_cover_host_and_every_x_amz_header() -> None:
    view = botocore_signed("k", {})
    e = refused(with_headers(view, **{"x-amz-checksum-mode": "ENABLED"}))
    assert e.code == "AccessDenied" and "x-amz-checksum-mode" in e.reason
    auth = view.headers["authorization"].replace("SignedHeaders=host;", "SignedHeaders=")
    assert "host" in refused(with_headers(view, authorization=auth)).reason
    pre = botocore_signed("k", {}, presign=True)
    assert refused(with_headers(pre, **{"x-amz-meta-x": "1"})).code == "AccessDenied"


@pytest.mark.parametrize("payload", ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "ab" * 32,
                                     "STREAMING-UNSIGNED-PAYLOAD-TRAILER"])
def test_a_read_with_a_body_hash_is_refused(payload: str) -> None:
    view = with_headers(botocore_signed("k", {}), **{"x-amz-content-sha256": payload})
    assert refused(view).code == "XAmzContentSHA256Mismatch"


def test_malformed_authorization_headers() -> None:
    base = botocore_signed("k", {})
    for bad in ["AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=AKID1/x",
                "AWS4-HMAC-SHA256 Credential=AKID1/20240101/us/s3/aws4_request, "
                "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64]:
        assert refused(with_headers(base, authorization=bad)).code == claims.HEADER_ERR
    assert refused(with_headers(base, **{"x-amz-date": "2024-01-01"})).code == "AccessDenied"
    sig = base.headers["authorization"].rsplit("=", 1)[1]
    short = base.headers["authorization"].replace(sig, sig[:10])
    assert refused(with_headers(base, authorization=short)).code == "SignatureDoesNotMatch"


def test_scopes_come_with_the_principal() -> None:
    p = AUTH.authenticate(botocore_signed("k", {}, key_id="AKID2", secret=SECRET + "x"),
                          time.time())
    assert p.may_read("bkt", "team-a/x") and p.may_read("other", "anything")
    assert not p.may_read("bkt", "team-b/x") and not p.may_read("bkt", "team-a")
    assert p.may_list("bkt", "team-a/sub") and not p.may_list("bkt", "")
    assert not p.internal


def test_without_keys_credentials_are_not_checked() -> None:
    open_auth = EdgeAuthenticator(None)
    assert not open_auth.enabled
    assert open_auth.authenticate(botocore_signed("k", {}, secret="wrong" * 4),
                                  time.time()) is ANONYMOUS
