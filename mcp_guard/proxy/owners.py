"""Who owns which resource, template and prompt: what each upstream last listed, shared by every
session of a guard (the hub's), refreshed whenever a list is aggregated from the upstreams here;
routing reads it to resolve a request to its upstream."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_guard.errors import RpcError, UpstreamError
from mcp_guard.jsonrpc import Message
from mcp_guard.proxy.completion import template_pattern
from mcp_guard.upstreams.connection import Status, Upstream

log = logging.getLogger("mcp_guard.routing")

MAX_UPSTREAM_PAGES = 1000


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

    async def list_resources(self, upstreams: Mapping[str, Upstream]) -> list[tuple[Upstream, Message]]:
        items = [(up, it) for up, it in await aggregate(upstreams, "resources/list", "resources", "resources")
                 if isinstance(it.get("uri"), str)]
        for up, it in items:
            self.resources[it["uri"]] = up.name
        return items

    async def list_templates(self, upstreams: Mapping[str, Upstream]) -> list[tuple[Upstream, Message]]:
        items = [(up, it) for up, it in await aggregate(upstreams, "resources/templates/list", "resourceTemplates", "resources")
                 if isinstance(it.get("uriTemplate"), str)]
        for up, it in items:
            template = it["uriTemplate"]
            if template not in self.templates:
                self.templates[template] = (up.name, template_pattern(template))
        self.resources_known = True
        return items

    async def list_prompts(self, upstreams: Mapping[str, Upstream]) -> list[tuple[Upstream, str, Message]]:
        out: list[tuple[Upstream, str, Message]] = []
        for up, it in await aggregate(upstreams, "prompts/list", "prompts", "prompts"):
            name = it.get("name")
            if isinstance(name, str):
                exposed = up.config.exposed(name)
                self.prompts[exposed] = (up.name, name)
                out.append((up, exposed, it))
        self.prompts_known = True
        return out


def ready(upstreams: Mapping[str, Upstream], capability: str) -> list[Upstream]:
    """The upstreams that are up and declared ``capability``."""
    return [u for u in upstreams.values() if u.status == Status.READY and capability in u.capabilities]


async def aggregate(upstreams: Mapping[str, Upstream], method: str, key: str, capability: str) -> list[tuple[Upstream, Message]]:
    """Every page of ``method``'s ``key`` list from every ready upstream with ``capability`` (one
    that fails is left out, and said so)."""
    items: list[tuple[Upstream, Message]] = []
    for up in ready(upstreams, capability):
        cursor: str | None = None
        for _ in range(MAX_UPSTREAM_PAGES):
            try:
                got = await up.request(method, {"cursor": cursor} if cursor else None)
            except (RpcError, UpstreamError) as exc:
                log.warning("%s from %s failed: %s", method, up.name, exc)
                break
            items.extend((up, it) for it in got.get(key) or [] if isinstance(it, dict))
            cursor = got.get("nextCursor")
            if not cursor or not isinstance(cursor, str):
                break
    return items


__all__ = ["Owners", "aggregate", "ready"]
