"""The name an upstream gets when nobody chose one: derived from the command that starts it.

The rule (documented in docs/configuration.md, "The inline form"):

1. a launcher (``npx``, ``bunx``, ``pnpx``, ``uvx``, ``pipx run``, ``npm exec``, ``pnpm dlx``,
   ``yarn dlx``, ``uv tool run``) names its package: the first argument that is not an option;
   ``python -m MODULE`` names MODULE; ``python``/``node``/``deno``/``bun`` ``SCRIPT`` names the
   script; anything else is named by the command itself;
2. of that word keep the last path segment, without an ``@scope/``, a version (``@1.2``,
   ``==1.2``) or a file extension; lower-case it;
3. drop one ``mcp-server-``, ``server-`` or ``mcp-`` prefix and one ``-mcp-server``, ``-server``
   or ``-mcp`` suffix (``_`` counts as ``-``);
4. replace anything outside ``[a-z0-9_-]`` with ``-``, cut to 32 characters.

``@modelcontextprotocol/server-filesystem`` -> ``filesystem``; ``mcp-server-time`` -> ``time``;
``uvx mcp-server-git`` -> ``git``; ``@playwright/mcp`` -> ``playwright`` (a scope names the server
when the package name alone says nothing).  When that leaves nothing, or a word that says nothing about
the server (``python``, ``index``, ``main``, ``docker``, ...), there is no derived name and the
caller keeps its default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_LAUNCHERS = {"npx", "bunx", "pnpx", "uvx"}
_TWO_WORD_LAUNCHERS = {("pipx", "run"), ("npm", "exec"), ("pnpm", "dlx"), ("yarn", "dlx"), ("uv", "run"), ("bun", "x")}
_THREE_WORD_LAUNCHERS = {("uv", "tool", "run")}
_INTERPRETERS = re.compile(r"^(python[0-9.]*|node|nodejs|deno|bun|tsx|ts-node)$")
# options of launchers/interpreters that take a value (so the value is not the package)
_VALUE_OPTIONS = {"-p", "--package", "--from", "--with", "--python", "-c", "--spec", "--registry", "--cache", "-r", "--require", "--import"}
_GENERIC = {
    "", "python", "python3", "node", "deno", "bun", "index", "main", "server", "cli", "app", "run", "mcp",
    "start", "docker", "podman", "sh", "bash", "cmd", "npx", "uvx", "npm", "pnpm", "yarn", "uv", "pipx", "dist", "src",
    "bin", "upstream",
}
_VERSION = re.compile(r"(@[^@/]*|(==|>=|<=|~=|!=)\S*)$")
_EXTENSION = re.compile(r"\.(js|mjs|cjs|ts|py|exe|cmd|bat|sh)$", re.IGNORECASE)


def _base(word: str) -> str:
    return word.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _first_operand(args: Sequence[str]) -> str | None:
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in _VALUE_OPTIONS
            continue
        return a
    return None


def _word(command: Sequence[str]) -> str | None:
    """The word that names the server, before normalisation."""
    if not command:
        return None
    head = _EXTENSION.sub("", _base(command[0])).lower()
    rest = list(command[1:])
    if head in _LAUNCHERS:
        return _first_operand(rest)
    if (head, *rest[:2]) in _THREE_WORD_LAUNCHERS:
        return _first_operand(rest[2:])
    if (head, *rest[:1]) in _TWO_WORD_LAUNCHERS:
        return _first_operand(rest[1:])
    if _INTERPRETERS.fullmatch(head):
        if "-m" in rest:
            i = rest.index("-m")
            return rest[i + 1] if i + 1 < len(rest) else None
        return _first_operand(rest)
    return command[0]


def derive_upstream_name(command: Sequence[str]) -> str | None:
    """The derived upstream name of ``command`` (argv), or None when the command says too little."""
    word = _word(command)
    if not word:
        return None
    scope = ""
    if word.startswith("@") and "/" in word:
        scope, word = word[1:].split("/", 1)
    word = _VERSION.sub("", word)
    if _EXTENSION.sub("", _base(word)).lower() in _GENERIC and scope:  # @playwright/mcp -> playwright
        word = scope
    name = _EXTENSION.sub("", _base(word)).lower().replace("_", "-")
    name = name.rsplit(".", 1)[-1]  # python -m pkg.mcp_server_x -> mcp-server-x
    for prefix in ("mcp-server-", "server-", "mcp-"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    for suffix in ("-mcp-server", "-server", "-mcp"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")[:32].strip("-_")
    return None if name in _GENERIC else name


def inline_upstream_name(command: Sequence[str], policy_upstreams: set[str], default: str = "upstream") -> str:
    """The inline upstream's name when ``--name`` is not given.

    The derived name, unless the policies were written for the documented default ``upstream``
    (they name ``upstream/...`` and not the derived name): then ``upstream``, so such policies keep
    working.  No derived name: ``upstream``.
    """
    derived = derive_upstream_name(command)
    if derived is None:
        return default
    if default in policy_upstreams and derived not in policy_upstreams:
        return default
    return derived
