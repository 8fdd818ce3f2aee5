"""The sealed ``requestState`` of an approval, and what an approval is bound to.

A 2026-07-28 host carries the state of a pending approval itself, so the guard seals it
(AES-256-GCM under a per-guard key, or one derived from ``approvals.state_key`` that every replica
shares): the host can neither read nor alter it, and a token sealed for one purpose never opens as
another's.  The bindings (principal, target, arguments' digest) are hashes, so the sealed state and
the state store hold no principal or argument in the clear.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_guard.audit import canonical
from mcp_guard.identity import Principal

STATE_VERSION = 1
_AAD = b"mcp-guard/approval-state/v1"
_NONCE_BYTES = 12
MAX_STATE_CHARS = 4096  # a sealed state is ~250 characters; anything far larger is not ours


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSealer:
    """AES-256-GCM envelope for ``requestState``: the host can neither read nor alter it."""

    def __init__(self, key: bytes | None = None, aad: bytes = _AAD, *, max_chars: int = MAX_STATE_CHARS) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))
        self._aad = aad  # what the envelope is for: one purpose's tokens never open as another's
        self._max_chars = max_chars

    def seal(self, payload: Mapping[str, Any]) -> str:
        iv = os.urandom(_NONCE_BYTES)
        return _b64(iv + self._aead.encrypt(iv, orjson.dumps(dict(payload)), self._aad))

    def open(self, token: Any) -> dict[str, Any] | None:
        """The payload, or None for anything not sealed by this guard (altered, foreign, garbage)."""
        if not isinstance(token, str) or not token or len(token) > self._max_chars:
            return None
        try:
            raw = _unb64(token)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], self._aad)
            payload = orjson.loads(plain)
        except (ValueError, binascii.Error, InvalidTag, orjson.JSONDecodeError):
            return None
        return payload if isinstance(payload, dict) and payload.get("v") == STATE_VERSION else None


def sealer_key(secret: str | None) -> bytes | None:
    """The sealing key derived from ``approvals.state_key`` (None: a random key per guard)."""
    return hashlib.sha256(b"mcp-guard/approval-state-key/v1\x00" + secret.encode()).digest() if secret else None


def principal_tag(who: Principal) -> str:
    """The principal an approval is bound to, as a short hash (chain, purpose, grant, verified)."""
    material = canonical([list(who.chain), who.purpose, who.grant_id, who.verified])
    return hashlib.sha256(material).hexdigest()[:32]


def page_binding(who: Principal, qualified: str, digest: str) -> str:
    """What an approval on the page is bound to: the principal chain (names, purpose, whether
    verified — not the token, which may be refreshed while the human decides), the target and the
    arguments' digest.  A changed argument is a different binding, so a new approval."""
    material = canonical([list(who.chain), who.purpose, who.verified, qualified, digest])
    return hashlib.sha256(material).hexdigest()[:32]
