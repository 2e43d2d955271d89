"""gRPC call credentials: SigV4 over a canonical form of the call, as botocore signs it too."""

from __future__ import annotations

import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cachenode.access import AccessDenied
from cachenode.auth.edge import EdgeAuthenticator
from cachenode.auth.grpc_auth import (
    SERVICE_PATH,
    SIGNING_HOST,
    GrpcCredentials,
    call_query,
    call_view,
)
from cachenode.auth.keys import parse_keys
from cachenode.pb import blockcache_pb2 as pb

SECRET = "s3cr3t-s3cr3t-s3cr3t-0123"
AUTH = EdgeAuthenticator(parse_keys(f"AKID1 {SECRET}\n"))
CALLS = [("Stat", pb.StatRequest(bucket="bkt", key="a b/ሴ+%")),
         ("ReadRange", pb.ReadRangeRequest(bucket="bkt", key="k", offset=5, length=-1,
                                           etag='"e1"')),
         ("ReadBlock", pb.ReadBlockRequest(bucket="bkt", key="k", etag='"e"', object_size=9,
                                           index=2, hops=1, cached_only=True))]


@pytest.mark.parametrize(("method", "msg"), CALLS)
def test_metadata_verifies_and_equals_botocores(method: str, msg: object) -> None:
    md = GrpcCredentials("AKID1", SECRET).metadata(method, msg)
    assert AUTH.authenticate(call_view(method, msg, md), time.time()).name == "AKID1"
    ts = dict(md)["x-amz-date"]
    url = f"http://{SIGNING_HOST}{SERVICE_PATH}{method}?{call_query(method, msg)}"
    req = AWSRequest("POST", url, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
                                           "X-Amz-Date": ts})
    req.context["timestamp"] = ts
    signer = SigV4Auth(Credentials("AKID1", SECRET), "s3", "us-east-1")
    assert signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req) \
        == dict(md)["authorization"].rsplit("Signature=", 1)[1]
    names = [pair.split("=")[0] for pair in call_query(method, msg).split("&")]
    assert names == sorted(f.name for f in msg.DESCRIPTOR.fields)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "msg"), CALLS)
def test_credentials_cover_every_field_of_the_call(method: str, msg: object) -> None:
    md = GrpcCredentials("AKID1", SECRET).metadata(method, msg)
    other = type(msg)()  # type: ignore[operator]
    other.CopyFrom(msg)  # type: ignore[attr-defined]
    other.key = "other"  # type: ignore[attr-defined]
    with pytest.raises(AccessDenied) as e:
        AUTH.authenticate(call_view(method, other, md), time.time())
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(AccessDenied) as e:
        AUTH.authenticate(call_view(method, msg, ()), time.time())
    assert e.value.code == "AccessDenied"
