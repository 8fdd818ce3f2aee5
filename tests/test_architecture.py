"""The house rules of ``docs/architecture.md``, checked on the code's own imports (an ``ast`` scan).

Every import of the package counts: module-level, function-level and under ``TYPE_CHECKING`` (a
circle closed through a lazy import is still a circle a reader must hold in mind).  ``DEBTS`` lists
what today's code still breaks; each entry must still be true (so the list only shrinks), and
nothing outside it may break a rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mcp_guard"
MAX_LINES = 500

# Floors, ground first: a module may import only from its own floor or below.
FLOORS: dict[str, int] = {
    "errors": 0, "kinds": 0, "identity": 0, "paths": 0, "yamlsrc": 0, "typedoc": 1, "invisible": 0,
    "jsonrpc": 1,
    "transports": 2, "policy": 2, "grants": 2, "state": 2, "audit": 2, "flow": 2,
    "decision": 3, "pinning": 3, "report": 3, "starter": 3, "__init__": 3, "diffing": 4, "report_risk": 4,
    "request": 4,
    "telemetry": 5, "report_html": 5,
    "config": 6, "schema": 6, "hostconfig": 6, "logs": 6,
    "upstreams": 7,
    "proxy": 8,
    "serve": 9,
    "app": 10,
    "cli": 11, "demo": 11, "demo_server": 11, "__main__": 12,
}
# transports/ moves bytes: it may import nothing of the guard but these
TRANSPORT_IMPORTS = {"mcp_guard.jsonrpc", "mcp_guard.errors"}
# policy/ and grants/ are pure: no event loop, no MCP, no telemetry
PURE_ROOMS = ("policy", "grants")
IMPURE = ("asyncio", "anyio", "mcp", "mcp_types", "opentelemetry")

# The broad excepts (bare, ``Exception``, ``BaseException``) that swallow the error, by module and
# function: only at a process, thread, task or peer edge, each saying why on its ``except`` line.
# A broad except that ends in a bare ``raise`` (clean up, then let the error go on) needs no entry.
BROAD_EXCEPTS: set[tuple[str, str]] = {
    ("mcp_guard.grants.verify", "_arguments_problem"),
    ("mcp_guard.proxy.hub", "Hub._each"),
    ("mcp_guard.proxy.relay", "Relay._final"),
    ("mcp_guard.proxy.session", "GuardSession._serve"),
    ("mcp_guard.proxy.waiting", "tell_waiting"),
    ("mcp_guard.serve.admin", "Admin.readyz"),
    ("mcp_guard.serve.table", "SessionTable._sweep"),
    ("mcp_guard.serve.drain", "Drain.begin"),
    ("mcp_guard.serve.fanout", "Fanout._publish"),
    ("mcp_guard.serve.fanout", "Fanout._command"),
    ("mcp_guard.serve.workers", "run_workers"),
    ("mcp_guard.telemetry.export", "BoundedBatchProcessor._export_all"),
    ("mcp_guard.telemetry.recorder", "Recorder.shutdown"),
    ("mcp_guard.transports.stdio", "accept_line"),
    ("mcp_guard.transports.stdio", "finish"),
    ("mcp_guard.upstreams.connection", "Upstream._guarded"),
    ("mcp_guard.upstreams.connection", "Upstream._notify_changed"),
    ("mcp_guard.upstreams.connection", "Upstream._read_loop"),
    ("mcp_guard.upstreams.connection", "Upstream._supervise"),
    ("mcp_guard.upstreams.http", "HttpChannel._request"),
    ("mcp_guard.upstreams.http", "HttpChannel._deliver_answer"),
    ("mcp_guard.upstreams.stdio", "StdioChannel.line"),
    ("mcp_guard.upstreams.oauth", "_GuardFlow.async_auth_flow"),
}

# What today's code still breaks, by rule: (importer, imported) arrows, or a module's lines.
DEBTS: dict[str, set[object]] = {
    "circle": set(),
    "upward": set(),
    "transport": set(),
    "size": set(),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module of the package ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mcp_guard") and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def broken() -> dict[str, set[object]]:
    edges = graph()
    found: dict[str, set[object]] = {rule: set() for rule in DEBTS}
    for component in circles(edges):
        found["circle"].add(tuple(component))
    for source, targets in edges.items():
        for target in targets:
            if FLOORS[room(target)] > FLOORS[room(source)]:
                found["upward"].add((source, target))
            if room(source) == "transports" and room(target) != "transports" and target not in TRANSPORT_IMPORTS:
                found["transport"].add((source, target))
    for name, path in modules().items():
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            found["size"].add(name)
    return found


def test_every_room_has_a_floor() -> None:
    assert sorted({room(m) for m in modules()} - set(FLOORS)) == []


def test_the_house_rules_hold_but_for_the_listed_debts() -> None:
    found = broken()
    for rule, debts in DEBTS.items():
        assert found[rule] - debts == set(), f"new {rule} breaks"
        assert debts - found[rule] == set(), f"{rule} debts that are paid: strike them from DEBTS"


def test_pure_rooms_import_no_event_loop_mcp_or_telemetry() -> None:
    for name, path in modules().items():
        if room(name) not in PURE_ROOMS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] in IMPURE], (name, names)


_BROAD = {"Exception", "BaseException"}


def _is_broad(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(k is None or (isinstance(k, ast.Name) and k.id in _BROAD) for k in kinds)


def _handlers(node: ast.AST, where: str = "") -> Iterator[tuple[str, ast.ExceptHandler]]:
    """Every except handler under ``node``, with the qualified name of the function it is in."""
    for child in ast.iter_child_nodes(node):
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = f"{where}.{child.name}" if where else child.name
        if isinstance(child, ast.ExceptHandler):
            yield where or "<module>", child
        yield from _handlers(child, inner)


def broad_excepts() -> dict[tuple[str, str], list[str]]:
    """(module, function) -> the source line of each broad except there that does not re-raise."""
    found: dict[tuple[str, str], list[str]] = {}
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for where, handler in _handlers(ast.parse(text)):
            last = handler.body[-1]
            if _is_broad(handler) and not (isinstance(last, ast.Raise) and last.exc is None):
                found.setdefault((name, where), []).append(lines[handler.lineno - 1])
    return found


def test_broad_excepts_only_at_the_listed_edges_each_saying_why() -> None:
    found = broad_excepts()
    assert sorted(set(found) - BROAD_EXCEPTS) == [], "a new broad except: catch what can happen, or list the edge"
    assert sorted(BROAD_EXCEPTS - set(found)) == [], "broad excepts that are gone: strike them from BROAD_EXCEPTS"
    silent = [line.strip() for lines in found.values() for line in lines if "#" not in line]
    assert silent == [], "a broad except must say why on its line"


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_broad_except_finder_tells_a_swallow_from_a_cleanup() -> None:
    source = ("class C:\n    def f(self):\n        try:\n            pass\n        except (ValueError, Exception):\n"
              "            pass\n        try:\n            pass\n        except BaseException:\n            raise\n"
              "        try:\n            pass\n        except:\n            return\n")
    found = [(where, _is_broad(h), isinstance(h.body[-1], ast.Raise)) for where, h in _handlers(ast.parse(source))]
    assert found == [("C.f", True, False), ("C.f", True, True), ("C.f", True, False)]
