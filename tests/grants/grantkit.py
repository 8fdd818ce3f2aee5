"""Keys, chain builders and forgery helpers shared by the grant tests (real keys, real signatures)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mcp_guard.grants import ChainVerifier, delegate, generate_keypair, issue_grant

NOW = 1_800_000_000.0
AUD = "urn:mcp-guard:local"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode(compact: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = compact.split(".")
    return json.loads(unb64(h)), json.loads(unb64(p))


def sign_raw(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey | None) -> str:
    """Sign anything, bypassing every check of the library (that is the point of a forgery)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = key.sign(signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64(sig)}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def parent_hash(compact: str) -> str:
    return b64(hashlib.sha256(compact.encode()).digest())


@dataclass
class World:
    idp: Ed25519PrivateKey
    planner: Ed25519PrivateKey
    coder: Ed25519PrivateKey
    tester: Ed25519PrivateKey
    verifier: ChainVerifier

    def root(self, **kw: Any) -> str:
        args: dict[str, Any] = {
            "agent_key": self.planner.public_key(), "purpose": "code-review", "ttl": 3600, "depth": 2,
            "max_calls": 100, "now": NOW,
            "tools": {"fs/read*": {"max_calls": 50}, "fs/write_file": {"approval": "always", "max_calls": 5},
                      "time/*": {}},
        }
        args.update(kw)
        tools = args.pop("tools")
        return issue_grant(self.idp, "corp-idp", "alice@example.com", "planner", tools, **args)

    def two(self, **kw: Any) -> str:
        args: dict[str, Any] = {"agent_key": self.coder.public_key(), "ttl": 600, "depth": 1, "now": NOW + 10}
        args.update(kw)
        tools = args.pop("tools", ["fs/read_text_file", "fs/write_file", "time/get_current_time"])
        return delegate(self.root(), self.planner, "coder", tools, **args)

    def three(self) -> str:
        return delegate(self.two(), self.coder, "tester", ["fs/read_text_file"], ttl=300, now=NOW + 20)

    def resign_last(self, chain: str, key: Ed25519PrivateKey, mutate: Callable[[dict[str, Any]], None],
                    header: Callable[[dict[str, Any]], None] | None = None) -> str:
        """The chain with its last link's claims changed and re-signed by ``key`` (the legitimate holder)."""
        links = chain.split("~")
        h, p = decode(links[-1])
        mutate(p)
        if header is not None:
            header(h)
        return "~".join([*links[:-1], sign_raw(h, p, key)])


def make_world() -> World:
    keys = [generate_keypair()[0] for _ in range(4)]
    return World(*keys, verifier=ChainVerifier({"corp-idp": keys[0].public_key()}, AUD))
