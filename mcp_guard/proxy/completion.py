"""Resource templates and what a completion may show.

An upstream's completion values are suggestions the guard did not write, so a value that names a
prompt, resource or resource template the caller may not see — or that, put into the template
being completed, makes a URI the caller may not see — is dropped (hidden is unknown there too)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from mcp_guard.jsonrpc import Message
from mcp_guard.kinds import Kind

_SIMPLE_EXPR = re.compile(r"\{([A-Za-z0-9_.%]+)\}")


def template_pattern(template: str) -> re.Pattern[str]:
    """An RFC 6570 URI template as a full-match pattern: each ``{expression}`` matches any text."""
    parts = re.split(r"\{[^{}]*\}", template)
    return re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)


def expand(template: str, values: dict[str, Any]) -> str | None:
    """``template`` with its simple ``{name}`` expressions filled from ``values`` (RFC 6570 level
    1, unescaped: the guard judges the URI the upstream would be asked for); None when an
    expression is not simple or has no string value."""
    if "{" not in template:
        return None
    out = _SIMPLE_EXPR.sub(lambda m: values[m.group(1)] if isinstance(values.get(m.group(1)), str) else "\x00", template)
    return None if "\x00" in out or "{" in out else out


def hidden_values(prompts: Mapping[str, tuple[str, str]], resources: Mapping[str, str], templates: Mapping[str, str],
                  shows: Callable[[Kind, str, bool], bool], template: tuple[str, str, str] | None,
                  args: dict[str, Any]) -> Callable[[str], bool]:
    """Which completion values to drop: the names a caller may not see of what the upstreams list
    (``prompts`` exposed name -> ``(upstream, name)``, ``resources`` and ``templates`` -> upstream;
    ``shows(kind, UPSTREAM/NAME, judge_uri)`` is the caller's listing visibility), and, completing
    ``template`` (``(upstream, template, argument)``) with ``args``, a value of the argument that
    puts into it a URI the caller may not see."""
    hidden: set[str] = set()
    for exposed, (upstream, name) in prompts.items():
        if not shows(Kind.PROMPT, f"{upstream}/{name}", True):
            hidden.update((exposed, name))
    hidden.update(uri for uri, upstream in resources.items() if not shows(Kind.RESOURCE, f"{upstream}/{uri}", True))
    hidden.update(t for t, upstream in templates.items() if not shows(Kind.RESOURCE, f"{upstream}/{t}", False))
    def drop(value: str) -> bool:
        if value in hidden:
            return True
        if template is None:
            return False
        uri = expand(template[1], {**args, template[2]: value})
        return uri is not None and not shows(Kind.RESOURCE, f"{template[0]}/{uri}", True)

    return drop


def filter_values(response: Message, drop: Callable[[str], bool]) -> Message:
    """``response`` (a completion/complete answer) without the values ``drop`` names; ``total``
    shrinks by as many."""
    completion = response.get("result", {}).get("completion") if isinstance(response.get("result"), dict) else None
    if not isinstance(completion, dict) or not isinstance(completion.get("values"), list):
        return response
    values = completion["values"]
    kept = [v for v in values if not (isinstance(v, str) and drop(v))]
    if len(kept) == len(values):
        return response
    shown = {**completion, "values": kept}
    if isinstance(completion.get("total"), int):
        shown["total"] = max(len(kept), completion["total"] - (len(values) - len(kept)))
    return {**response, "result": {**response["result"], "completion": shown}}
