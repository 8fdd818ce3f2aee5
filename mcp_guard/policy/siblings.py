"""A path condition on one tool while its siblings read the same files unconditioned.

Servers expose one capability through several tools: a filesystem server reads files through
``read_text_file``, ``read_file``, ``read_multiple_files``, ``search_files`` and
``directory_tree``.  A rule that confines ``read_text_file`` to ``args.path under /srv/sub``
protects nothing while a sibling that also takes a path stays allowed without a condition.  This
lint finds that from the pinned input schemas (guard.lock): which arguments of which tools are
path-like, which rules constrain them, and which sibling tools of the same upstream are allowed
with no condition on their own path-like arguments.

Pure: policy sources and tool definitions in, ``Problem`` warnings out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.policy._match import glob_matcher
from mcp_guard.policy.model import Effect, Rule
from mcp_guard.policy.parse import parse_text
from mcp_guard.yamlsrc import Problem, YamlSyntaxError, load

# an argument name that holds a file system path (or a list of them)
_PATHY = re.compile(r"(?i)^(?:.*(?:path|paths|file|files|filename|dir|dirs|directory|directories|folder|folders)"
                    r"|root|roots|source|destination|src|dst|dest|cwd|location)$")


def path_arguments(definition: Mapping[str, Any]) -> tuple[str, ...]:
    """The path-like arguments of a tool: by name, a string or a list of strings in its schema."""
    schema = definition.get("inputSchema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    out: list[str] = []
    for name, spec in (props.items() if isinstance(props, dict) else ()):
        if not isinstance(spec, dict) or not _PATHY.fullmatch(str(name)):
            continue
        kind = spec.get("type")
        items = spec.get("items")
        if kind == "string" or (kind == "array" and isinstance(items, dict) and items.get("type") == "string"):
            out.append(str(name))
    return tuple(out)


def _argument(key: str) -> str | None:
    """``args.path`` / ``args.paths[*]`` -> ``path`` / ``paths`` (the top-level argument)."""
    if not key.startswith("args."):
        return None
    return key[5:].split(".", 1)[0].split("[", 1)[0]


@dataclass(frozen=True, slots=True)
class _Located:
    policy: str
    index: int  # 0-based position in its policy
    rule: Rule
    file: str
    line: int
    col: int

    @property
    def ref(self) -> str:
        return f"{self.policy}#{self.rule.id or self.index + 1}"


def _rules(sources: Iterable[tuple[str, str]]) -> list[_Located]:
    """Every rule of every source that parses, with where its ``when:`` (or the rule) starts."""
    out: list[_Located] = []
    for file, text in sources:
        try:
            data, smap = load(text, file)
        except YamlSyntaxError:
            continue
        raw = data.get("policies") if isinstance(data, dict) else None
        parsed = {p.id: p for p in parse_text(text, file).policies}
        for pi, item in enumerate(raw if isinstance(raw, list) else ()):
            pol = parsed.get(str(item.get("id"))) if isinstance(item, dict) else None
            if pol is None:
                continue
            for ri, rule in enumerate(pol.rules):
                line, col = smap.at(("policies", pi, "rules", ri, "when"))
                out.append(_Located(pol.id, ri, rule, file, line, col))
    return out


def sibling_warnings(sources: Iterable[tuple[str, str]], definitions: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Problem]:
    """One warning per rule that constrains a path-like argument of some tools while sibling tools
    of the same upstream that take paths are allowed without a condition on theirs."""
    rules = _rules(sources)
    pathy = {up: {t: args for t, d in tools.items() if (args := path_arguments(d))} for up, tools in definitions.items()}
    problems: list[Problem] = []
    for r in rules:
        if r.rule.effect is Effect.DENY or not r.rule.tools:
            continue
        keys = {a for c in r.rule.when if (a := _argument(c.key))}
        if not keys:
            continue
        select = glob_matcher(r.rule.tools, segment=True)
        for up, tools in sorted(pathy.items()):
            constrained = sorted(t for t, args in tools.items() if select(f"{up}/{t}") and keys & set(args))
            if not constrained:
                continue
            itself = [f"{up}/{t} ({by})" for t in constrained if (by := _open(rules, f"{up}/{t}", tools[t]))]
            if itself:
                problems.append(Problem(
                    r.file, r.line, r.col,
                    f"rule {r.ref} confines {', '.join(f'{up}/{t}' for t in constrained)}, but another rule allows "
                    f"it without a path condition: {', '.join(itself)}; allow rules add up, so this condition narrows nothing",
                    "remove the tool from the other rule, or give it the same condition", severity="warning"))
            open_ = [f"{up}/{t} ({by})" for t, args in sorted(tools.items())
                     if t not in constrained and (by := _open(rules, f"{up}/{t}", args))]
            if open_:
                shown = ", ".join(f"args.{k}" for k in sorted(keys & {a for t in constrained for a in tools[t]}))
                problems.append(Problem(
                    r.file, r.line, r.col,
                    f"rule {r.ref} constrains {shown} of {', '.join(f'{up}/{t}' for t in constrained)}, but sibling tools "
                    f"of `{up}` that also take paths are allowed without such a condition: {', '.join(open_)}",
                    "give them the same condition (args.paths[*] for a list), or deny them", severity="warning"))
    return problems


def _open(rules: list[_Located], name: str, args: tuple[str, ...]) -> str | None:
    """The rule that permits ``name`` with no condition on its path arguments (None: none does,
    or an unconditional deny of it exists)."""
    found: str | None = None
    for r in rules:
        if not r.rule.tools or not glob_matcher(r.rule.tools, segment=True)(name):
            continue
        conditioned = {a for c in r.rule.when if (a := _argument(c.key))} & set(args)
        if r.rule.effect is Effect.DENY:
            if not r.rule.when and not r.rule.annotations:
                return None
            continue
        if not conditioned and found is None:
            found = r.ref
    return found
