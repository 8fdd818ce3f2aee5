"""A deliberately tiny compact-JWS codec that knows exactly one algorithm: EdDSA over Ed25519.

Not a general JOSE library on purpose: the header never chooses the key or the algorithm, so the
classic JWT confusions (``alg: none``, HMAC keyed with a public key, header-embedded keys) have
no code path to reach.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_guard.grants.errors import (
    ALG_NOT_ALLOWED,
    BAD_SIGNATURE,
    HEADER_KEY_NOT_ALLOWED,
    MALFORMED,
    GrantError,
)
from mcp_guard.grants.keys import b64url_decode, b64url_encode, thumbprint

TYP = "mcp-guard-grant+jwt"
ALG = "EdDSA"
_KEY_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"})
_ALLOWED_HEADERS = frozenset({"alg", "typ", "kid"})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate member {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """JSON without duplicate members or NaN: two parsers must never read two different claims."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def sign(payload: dict[str, Any], key: Ed25519PrivateKey) -> str:
    header = {"alg": ALG, "typ": TYP, "kid": thumbprint(key.public_key())}
    signing_input = f"{b64url_encode(canonical_json(header))}.{b64url_encode(canonical_json(payload))}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """One link, decoded but not yet verified."""

    compact: str
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    def verify(self, key: Ed25519PublicKey, key_id: str) -> None:
        """Check the signature with the key the *verifier* chose; the header's ``kid`` only has to agree."""
        kid = self.header.get("kid")
        if kid is not None and kid != key_id:
            raise GrantError(BAD_SIGNATURE, "the link names a different signing key than the one that must sign it")
        try:
            key.verify(self.signature, self.signing_input)
        except InvalidSignature:
            raise GrantError(BAD_SIGNATURE, "the link's signature does not verify with the key that must sign it") from None


def parse(compact: str) -> ParsedJWS:
    parts = compact.split(".")
    if len(parts) != 3:
        raise GrantError(MALFORMED, "a link is not a compact JWS (three base64url parts joined by dots)")
    try:
        header_raw, payload_raw, signature = (b64url_decode(p) for p in parts)
    except ValueError:
        raise GrantError(MALFORMED, "a link contains invalid base64url") from None
    try:
        header = strict_json(header_raw)
    except ValueError:
        raise GrantError(MALFORMED, "a link's header is not valid JSON") from None
    if not isinstance(header, dict):
        raise GrantError(MALFORMED, "a link's header is not a JSON object")
    if header.get("alg") != ALG:
        raise GrantError(ALG_NOT_ALLOWED, f"the link uses algorithm {header.get('alg')!r}; only EdDSA is accepted")
    present = _KEY_HEADERS & header.keys()
    if present:
        raise GrantError(
            HEADER_KEY_NOT_ALLOWED,
            f"the link's header carries a key reference ({', '.join(sorted(present))}); keys come only from trust config and the parent link",
        )
    if set(header) - _ALLOWED_HEADERS:
        raise GrantError(MALFORMED, f"the link's header has unsupported members: {', '.join(sorted(set(header) - _ALLOWED_HEADERS))}")
    if header.get("typ") != TYP:
        raise GrantError(MALFORMED, f"the link's header typ must be {TYP!r}")
    if "kid" in header and not isinstance(header["kid"], str):
        raise GrantError(MALFORMED, "the link's header kid must be a string")
    if len(signature) != 64:
        raise GrantError(BAD_SIGNATURE, "the link's signature is not an Ed25519 signature")
    try:
        payload = strict_json(payload_raw)
    except ValueError:
        raise GrantError(MALFORMED, "a link's payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise GrantError(MALFORMED, "a link's payload is not a JSON object")
    return ParsedJWS(compact, header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
