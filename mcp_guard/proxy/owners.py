"""Who owns which resource, template and prompt: what each upstream last listed, shared by every
session of a guard (the hub's); routing reads it to resolve a request to its upstream."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Owners:
    """What each upstream last listed, shared by every session of a guard (who owns which URI,
    template and prompt); refreshed whenever a list is aggregated."""

    resources: dict[str, str] = field(default_factory=dict)  # uri -> upstream
    templates: dict[str, tuple[str, re.Pattern[str]]] = field(default_factory=dict)  # uriTemplate -> (upstream, pattern)
    prompts: dict[str, tuple[str, str]] = field(default_factory=dict)  # exposed name -> (upstream, own name)
    # listed since the last list_changed: a name missing then is unknown, without asking the upstreams
    # again (so looking up a nonexistent name costs what looking up a hidden one does: no timing oracle)
    prompts_known: bool = False
    resources_known: bool = False

    def changed(self, method: str) -> None:
        """An upstream said its resources or prompts changed: list them again on the next lookup."""
        if method == "notifications/prompts/list_changed":
            self.prompts_known = False
        elif method == "notifications/resources/list_changed":
            self.resources_known = False


__all__ = ["Owners"]
