"""The one exception the grants core raises: a stable reason code plus a sentence for people."""

from __future__ import annotations

from mcp_guard.errors import GuardError

# Stable reason codes (documented in docs/grants.md); audit records and spans carry them.
MALFORMED = "malformed"
TOO_LARGE = "too_large"
TOO_MANY_LINKS = "too_many_links"
ALG_NOT_ALLOWED = "alg_not_allowed"
HEADER_KEY_NOT_ALLOWED = "header_key_not_allowed"
BAD_SIGNATURE = "bad_signature"
UNTRUSTED_ISSUER = "untrusted_issuer"
AUDIENCE_MISMATCH = "audience_mismatch"
PARENT_HASH_MISMATCH = "parent_hash_mismatch"
ISSUER_MISMATCH = "issuer_mismatch"
ACTOR_MISMATCH = "actor_mismatch"
USER_CHANGED = "user_changed"
PURPOSE_CHANGED = "purpose_changed"
EXPIRY_EXTENDED = "expiry_extended"
STARTS_EARLIER = "starts_earlier"
DEPTH_NOT_DECREASING = "depth_not_decreasing"
WIDENED_TOOLS = "widened_tools"
APPROVAL_RELAXED = "approval_relaxed"
BUDGET_RAISED = "budget_raised"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
REVOKED = "revoked"
WRONG_HOLDER_KEY = "wrong_holder_key"
BAD_KEY = "bad_key"
# Call-time (CallCheck.code), not chain rejections.
TOOL_NOT_GRANTED = "tool_not_granted"
ARGUMENTS_NOT_PERMITTED = "arguments_not_permitted"


class GrantError(GuardError):
    """A grant chain (or a request to build one) is refused.

    ``code`` is one of the stable reason codes above; ``link_index`` names the link that failed
    (0 = root) when one does, so ``inspect`` and ``explain`` can point at it.
    """

    def __init__(self, code: str, message: str, link_index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.link_index = link_index

    def at(self, link_index: int) -> GrantError:
        """The same error attributed to a link (first attribution wins)."""
        if self.link_index is None:
            self.link_index = link_index
        return self
