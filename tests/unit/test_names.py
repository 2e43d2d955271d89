"""Object names: bucket rules, path tricks, and the strict/verbatim key policies."""

from __future__ import annotations

import pytest

from cachenode.errors import BadRequest
from cachenode.names import MAX_KEY_BYTES, validate_name, validate_prefix

# Spellings SeaweedFS reads as another key (probed against the test server: `a//b`, `/a`,
# `a///b` read `a/b`; `d/` and `d//` are the directory `d/`; `x\y` is `x/y`).
ALIASED = ["llm//v1/x", "/leading", "a///b", "dir/", "dir//", "x\\y", "\\x", "..\\x"]


@pytest.mark.parametrize(
    ("bucket", "key"),
    [("models", "a b/c d.bin"), ("models", "ключ/模型.bin"), ("models", "100%25/x"),
     ("models", "100%/x"), ("models", "a+b"), ("models", "..."), ("models", "a..b/.x"),
     ("m-1.x_y", "k"), ("abc", "/".join(["k" * 255] * 4))],
)
def test_accepted_under_both_policies(bucket: str, key: str) -> None:
    assert len(key.encode()) <= MAX_KEY_BYTES
    validate_name(bucket, key)
    validate_name(bucket, key, "verbatim")


@pytest.mark.parametrize(
    ("bucket", "key", "reason"),
    [("ab", "k", "bucket"), ("a" * 64, "k", "bucket"), ("bk t", "k", "bucket"),
     ("bkt/x", "k", "bucket"), ("bküt", "k", "bucket"), ("bkt", "", "missing"),
     ("bkt", "..", "'..'"), ("bkt", "a/../b", "'..'"), ("bkt", "a/./b", "'.'"),
     ("bkt", "a/..", "'..'"), ("bkt", "a\x00b", "NUL"),
     ("bkt", "k" * (MAX_KEY_BYTES + 1), "longer"), ("bkt", "é" * 513, "longer")],
)
def test_refused_under_both_policies(bucket: str, key: str, reason: str) -> None:
    for policy in ("strict", "verbatim"):
        with pytest.raises(BadRequest) as info:
            validate_name(bucket, key, policy)
        assert reason in str(info.value)


@pytest.mark.parametrize("key", ALIASED)
def test_strict_refuses_keys_a_path_origin_aliases(key: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_name("bkt", key)
    reason = str(info.value)
    assert "--origin-keys verbatim" in reason
    assert ("backslash" in reason) == ("\\" in key)
    assert ("empty path segment" in reason) == ("\\" not in key)


@pytest.mark.parametrize("key", [k for k in ALIASED if k != "..\\x"])
def test_verbatim_passes_them_on(key: str) -> None:
    validate_name("bkt", key, "verbatim")


def test_strict_refuses_a_segment_no_file_name_can_hold() -> None:
    validate_name("bkt", "a/" + "s" * 255)
    with pytest.raises(BadRequest, match="longer than 255 bytes"):
        validate_name("bkt", "a/" + "s" * 256)
    validate_name("bkt", "a/" + "s" * 256, "verbatim")


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/b/", "a/.", "a/..x", "llm/v"])
def test_prefixes_accepted(prefix: str) -> None:
    validate_prefix("bkt", prefix)


@pytest.mark.parametrize(("prefix", "strict_only"), [
    ("a//", True), ("/a", True), ("a//b", True), ("a\\", True), ("a/../", False),
    ("./a", False), ("a\x00", False), ("p" * (MAX_KEY_BYTES + 1), False)])
def test_prefixes_refused(prefix: str, strict_only: bool) -> None:
    with pytest.raises(BadRequest):
        validate_prefix("bkt", prefix)
    if strict_only:
        validate_prefix("bkt", prefix, "verbatim")
    else:
        with pytest.raises(BadRequest):
            validate_prefix("bkt", prefix, "verbatim")
    with pytest.raises(BadRequest, match="bucket"):
        validate_prefix("b", "x")
