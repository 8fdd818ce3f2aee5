"""Who is acting: the principal chain every decision and span is about.

Pure and tiny on purpose: the policy engine, the grant verifier, the proxy and telemetry all
speak of the same ``Principal`` without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """The origin user and the agents that act for them, origin side first.

    ``agents[-1]`` is the acting agent.  ``depth`` is the number of hops from the user
    (user -> agent = 1, user -> agent -> sub-agent = 2); policies match it as ``chain.depth``.
    ``verified`` is False when the identity is self-asserted (config or the host's clientInfo)
    rather than proven by a signed grant chain.
    """

    user: str
    agents: tuple[str, ...] = ()
    purpose: str | None = None
    verified: bool = False
    grant_id: str | None = None
    link_ids: tuple[str, ...] = field(default=())

    @property
    def agent(self) -> str:
        return self.agents[-1] if self.agents else ""

    @property
    def depth(self) -> int:
        return len(self.agents)

    @property
    def chain(self) -> tuple[str, ...]:
        """``("user:alice@example.com", "agent:planner", "agent:coder")`` for telemetry and audit."""
        return (f"user:{self.user}", *(f"agent:{a}" for a in self.agents))


def principal(user: str, agent: str = "", purpose: str | None = None) -> Principal:
    """Shorthand for a one-hop, self-asserted principal (config identity, policy tests)."""
    return Principal(user=user, agents=(agent,) if agent else (), purpose=purpose)
