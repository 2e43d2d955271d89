"""Cluster trust at the edge: signed peer requests, peer headers without a signature, replays."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachenode.access import AccessDenied, RequestView
from cachenode.auth.cluster import BODY_SHA256, HEADER, ClusterKey, body_matches
from cachenode.auth.edge import ANONYMOUS, CLUSTER, EdgeAuthenticator
from cachenode.auth.keys import parse_keys
from cachenode.config import ConfigError

KEY = ClusterKey(b"cluster-secret-0123456789")
KEYS = parse_keys("AKID1 s3cr3t-s3cr3t-s3cr3t-0123\n")
PEER = {"Range": "bytes=0-4194303", "If-Match": '"e1"', "X-Blockcache-Size": "9000000",
        "X-Blockcache-Hops": "1", "X-Blockcache-Epoch": "7", "X-Blockcache-Cached-Only": "1"}


def peer_view(now: float, key: ClusterKey = KEY, method: str = "GET", path: str = "/bkt/a%20b",
              headers: dict[str, str] | None = None) -> RequestView:
    h = dict(PEER if headers is None else headers)
    h[HEADER] = key.sign(method, path, "", h, now)
    return RequestView.of(method, path, [*h.items(), ("Host", "n1:8080")])


@pytest.mark.parametrize("keys", [KEYS, None])
def test_a_signed_peer_request_is_the_clusters_own(keys: object) -> None:
    now = time.time()
    auth = EdgeAuthenticator(keys, KEY)  # type: ignore[arg-type]
    assert auth.authenticate(peer_view(now), now) is CLUSTER
    assert auth.authenticate(peer_view(now - 299), now) is CLUSTER
    for bad in (peer_view(now - 301), peer_view(now + 301),
                peer_view(now, ClusterKey(b"another-secret-0123456789"))):
        with pytest.raises(AccessDenied):  # a bad signature is refused, keys or not
            auth.authenticate(bad, now)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from([*PEER, "method", "path", "t", "n"]), data=st.data())
def test_any_tampered_signed_part_is_refused(name: str, data: st.DataObject) -> None:
    now = time.time()
    view = peer_view(now)
    h = dict(view.headers)
    if name == "method":
        view = RequestView("HEAD", view.raw_path, view.raw_query, h)
    elif name == "path":
        view = RequestView("GET", "/bkt/a%20c", view.raw_query, h)
    elif name == "t":
        t = int(h[HEADER.lower()].split(",")[0][2:])
        step = data.draw(st.sampled_from([-1, 1]))
        h[HEADER.lower()] = h[HEADER.lower()].replace(f"t={t}", f"t={t + step}")
    elif name == "n":
        n = h[HEADER.lower()].split(",")[1][2:]
        h[HEADER.lower()] = h[HEADER.lower()].replace(f"n={n}", f"n={n[::-1]}" if n != n[::-1]
                                                      else "n=" + "0" * 15 + "1")
    else:
        h[name.lower()] = data.draw(st.sampled_from(["", "0", "2", "bytes=0-1", '"e2"']).filter(
            lambda v: v != h[name.lower()]))
    view = RequestView(view.method, view.raw_path, view.raw_query, h)
    with pytest.raises(AccessDenied):
        EdgeAuthenticator(KEYS, KEY).authenticate(view, now)


def test_peer_headers_without_a_signature() -> None:
    now = time.time()
    forged = RequestView.of("GET", "/bkt/k", [*PEER.items(), ("Host", "n1")])
    with pytest.raises(AccessDenied, match="cluster secret"):
        EdgeAuthenticator(KEYS, KEY).authenticate(forged, now)  # keys on: refused
    # keys off: an ordinary client (not internal, so the API ignores the peer headers)
    assert EdgeAuthenticator(None, KEY).authenticate(forged, now) is ANONYMOUS
    assert not ANONYMOUS.internal
    hop0 = RequestView.of("GET", "/bkt/k", [("X-Blockcache-Hops", "0"), ("Host", "n1")])
    with pytest.raises(AccessDenied) as e:  # no peer header: a reader without credentials
        EdgeAuthenticator(KEYS, KEY).authenticate(hop0, now)
    assert "credentials required" in e.value.reason


def test_a_signed_post_signs_its_body_and_is_accepted_once() -> None:
    now = time.time()
    body = b'{"bucket": "bkt", "prefix": "m/"}'
    auth = EdgeAuthenticator(KEYS, KEY)
    with pytest.raises(AccessDenied, match="sign its body"):
        auth.authenticate(peer_view(now, method="POST", path="/_evict", headers={}), now)
    headers = {BODY_SHA256: hashlib.sha256(body).hexdigest()}
    view = peer_view(now, method="POST", path="/_evict", headers=headers)
    assert auth.authenticate(view, now) is CLUSTER
    with pytest.raises(AccessDenied, match="replay"):
        auth.authenticate(view, now + 1)
    again = peer_view(now, method="POST", path="/_evict", headers=headers)  # a retry: new nonce
    assert auth.authenticate(again, now) is CLUSTER
    assert body_matches(headers, body) and not body_matches(headers, body + b" ")


def test_cluster_secret_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "s").write_text("  cluster-secret-0123456789\n")
    key = ClusterKey.from_file(tmp_path / "s")
    assert "cluster-secret" not in repr(key)
    now = time.time()
    assert EdgeAuthenticator(None, KEY).authenticate(peer_view(now, key), now) is CLUSTER
    (tmp_path / "short").write_text("tiny-secret\n")
    with pytest.raises(ConfigError, match="at least 16") as e:
        ClusterKey.from_file(tmp_path / "short")
    assert "tiny-secret" not in str(e.value)
