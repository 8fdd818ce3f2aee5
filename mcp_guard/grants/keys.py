"""Ed25519 keys: generation, files (PEM / JWK), RFC 7638 thumbprints.

Only Ed25519 exists here on purpose: one key type means no key-type confusion anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_guard.grants.errors import BAD_KEY, MALFORMED, GrantError

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding: alphabet checked and the encoding must be canonical.

    Python's decoder ignores stray characters and the unused low bits of the last symbol, so
    without the round-trip check two different strings could decode to one signature.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 OKP JWK of a public key (members in RFC 7638 order)."""
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw_public(key))}


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as ``kid`` and shown by ``inspect``."""
    canonical = json.dumps(public_jwk(key), separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def jwk_to_public_key(jwk: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from an OKP JWK; anything else (RSA, EC, X25519, a private key) is refused."""
    if not isinstance(jwk, Mapping):
        raise GrantError(MALFORMED, "a key must be a JWK object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise GrantError(BAD_KEY, "only Ed25519 keys (kty OKP, crv Ed25519) are accepted")
    if "d" in jwk:
        raise GrantError(BAD_KEY, "a private key was given where a public key belongs")
    unknown = set(jwk) - {"kty", "crv", "x", "kid", "alg", "use"}
    if unknown:
        raise GrantError(MALFORMED, f"the key has unexpected members: {', '.join(sorted(unknown))}")
    if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
        raise GrantError(BAD_KEY, "the key is not meant for EdDSA signatures")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise GrantError(BAD_KEY, "the Ed25519 key's `x` must be 32 bytes of base64url")
    return Ed25519PublicKey.from_public_bytes(raw)


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise GrantError(BAD_KEY, f"cannot read key file {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """A PKCS#8 PEM Ed25519 private key (as written by ``mcp-guard keygen``)."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise GrantError(BAD_KEY, f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise GrantError(BAD_KEY, f"{path} is not an Ed25519 private key; only Ed25519 signs grants")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a JWK (``public.jwk``) or PEM (``public.pem``) file."""
    data = _read(path)
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            jwk = json.loads(text)
        except ValueError:
            raise GrantError(BAD_KEY, f"{path} is not valid JSON") from None
        try:
            return jwk_to_public_key(jwk)
        except GrantError as exc:
            raise GrantError(BAD_KEY, f"{path}: {exc}") from None
    if "PRIVATE KEY" in text:
        raise GrantError(BAD_KEY, f"{path} is a private key; give the public key (public.jwk or public.pem)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise GrantError(BAD_KEY, f"{path} is neither a JWK nor a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise GrantError(BAD_KEY, f"{path} is not an Ed25519 public key; only Ed25519 verifies grants")
    return key


def write_keypair(directory: str | Path, *, force: bool = False) -> tuple[Path, Path, Path]:
    """``keygen``: DIR/private.pem (PKCS#8, mode 0600), DIR/public.jwk, DIR/public.pem."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, jwk_path, pem_path = out / "private.pem", out / "public.jwk", out / "public.pem"
    if not force:
        for p in (priv_path, jwk_path, pem_path):
            if p.exists():
                raise GrantError(BAD_KEY, f"{p} already exists; pass --force to replace the key pair")
    private, public = generate_keypair()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Create with 0600 from the start: never a moment where the key is world-readable.
    if priv_path.exists():
        priv_path.unlink()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)
    jwk = {**public_jwk(public), "kid": thumbprint(public), "alg": "EdDSA", "use": "sig"}
    jwk_path.write_text(json.dumps(jwk, indent=2) + "\n", encoding="utf-8")
    pem_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv_path, jwk_path, pem_path
