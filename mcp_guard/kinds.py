"""What a request is about: a tool, a resource or a prompt.

A bottom module (imports nothing of the guard) so that the policy engine and the grant chain,
which must not import each other, name the same three kinds.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """The three kinds of things a host asks an upstream for, each decided by the same engine."""

    TOOL = "tool"
    RESOURCE = "resource"
    PROMPT = "prompt"
