"""Delegated grants: signed, attenuating grant chains from a user to an agent to its sub-agents.

Pure (no I/O besides the key-file helpers, no clock: ``now`` is passed in).  The format and the
invariants are described in docs/grants.md.
"""

from mcp_guard.grants.errors import GrantError
from mcp_guard.grants.inspect import ChainReport, LinkView, inspect_chain
from mcp_guard.grants.issue import delegate, issue_grant
from mcp_guard.grants.keys import (
    generate_keypair,
    load_private_key,
    load_public_key,
    public_jwk,
    thumbprint,
    write_keypair,
)
from mcp_guard.grants.model import DEFAULT_AUDIENCE, Budget, CallCheck, matches
from mcp_guard.grants.verify import MAX_BYTES, MAX_LINKS, ChainVerifier, GrantChain

__all__ = [
    "DEFAULT_AUDIENCE",
    "MAX_BYTES",
    "MAX_LINKS",
    "Budget",
    "CallCheck",
    "ChainReport",
    "ChainVerifier",
    "GrantChain",
    "GrantError",
    "LinkView",
    "delegate",
    "generate_keypair",
    "inspect_chain",
    "issue_grant",
    "load_private_key",
    "load_public_key",
    "matches",
    "public_jwk",
    "thumbprint",
    "write_keypair",
]
