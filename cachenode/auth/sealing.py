"""Seal tenants' SigV4 secrets for etcd with a key derived from the cluster secret.

A SigV4 secret must stay usable for HMAC, so it cannot be stored hashed as a bearer token
is. It is stored sealed: encrypted and authenticated with two keys derived (HKDF-SHA256)
from the cluster secret, so etcd alone (a snapshot, a backup, a reader of its keys) does not
give it away; a holder of both etcd and the cluster secret has it, as every node must.

The construction is stdlib-only (no compiled crypto dependency): the keystream is
HMAC-SHA256(enc_key, nonce || counter) (a PRF in counter mode), XORed with the secret; the
tag is HMAC-SHA256(mac_key, version || associated data || nonce || ciphertext), checked in
constant time before anything is decrypted (encrypt-then-MAC). The associated data binds a
sealed secret to its tenant and key id, so it cannot be moved to another key record. The
stored form is `v1.<key fingerprint>.<base64url(nonce || ciphertext || tag)>`: the
fingerprint tells a node with another cluster secret why it cannot open a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

VERSION = "v1"
NONCE_BYTES = 16
TAG_BYTES = 32
MAX_SECRET_BYTES = 1024
_INFO = b"blockcache tenant secrets v1"


class SealError(ValueError):
    """A sealed secret cannot be opened: another cluster secret, tampered, or malformed."""


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    """Return `length` bytes of HKDF-SHA256 (RFC 5869) of `secret`, empty salt."""
    prk = hmac.new(b"\0" * 32, secret, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


class Sealer:
    """Seals and opens secrets with the keys of one cluster secret."""

    def __init__(self, cluster_secret: bytes) -> None:
        keys = _hkdf(cluster_secret, _INFO, 64)
        self._enc, self._mac = keys[:32], keys[32:]
        self.fingerprint = hmac.new(self._mac, b"fingerprint", hashlib.sha256).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Sealer(<key {self.fingerprint}>)"

    def _stream(self, nonce: bytes, n: int) -> bytes:
        blocks = (hmac.new(self._enc, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
                  for i in range(-(-n // 32)))
        return b"".join(blocks)[:n]

    def _tag(self, aad: str, nonce: bytes, ct: bytes) -> bytes:
        head = f"{VERSION}\n{aad}\n".encode()
        return hmac.new(self._mac, head + nonce + ct, hashlib.sha256).digest()

    def seal(self, secret: str, aad: str) -> str:
        """Return the stored form of `secret`, bound to `aad` (tenant and key id)."""
        pt = secret.encode()
        if len(pt) > MAX_SECRET_BYTES:
            raise ValueError("secret too long")
        nonce = os.urandom(NONCE_BYTES)
        ct = bytes(a ^ b for a, b in zip(pt, self._stream(nonce, len(pt)), strict=True))
        blob = base64.urlsafe_b64encode(nonce + ct + self._tag(aad, nonce, ct)).decode()
        return f"{VERSION}.{self.fingerprint}.{blob}"

    def open(self, sealed: str, aad: str) -> str:
        """Return the secret of a stored form sealed for `aad`, or raise SealError."""
        version, _, rest = sealed.partition(".")
        fingerprint, _, blob = rest.partition(".")
        if version != VERSION:
            raise SealError(f"unknown sealing version {version[:8]!r}")
        if fingerprint != self.fingerprint:
            raise SealError(f"sealed with another cluster secret (key {fingerprint[:12]}, "
                            f"this process has {self.fingerprint})")
        try:
            raw = base64.urlsafe_b64decode(blob.encode())
        except ValueError:
            raise SealError("sealed secret is not base64url") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise SealError("sealed secret is too short")
        nonce, ct, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(aad, nonce, ct)):
            raise SealError("sealed secret fails its tag (tampered, or moved to another key)")
        pt = bytes(a ^ b for a, b in zip(ct, self._stream(nonce, len(ct)), strict=True))
        try:
            return pt.decode()
        except UnicodeDecodeError:
            raise SealError("sealed secret is not text") from None
