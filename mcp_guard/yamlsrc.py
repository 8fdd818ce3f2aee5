"""YAML with source positions, so every config and policy problem can say ``file:line:col``.

Pure (PyYAML only).  ``load`` returns plain Python data plus a map from a path inside it
(``("policies", 0, "rules", 1, "effect")``) to the 1-based line and column of that node; a key's
position is recorded under its path too, so "unknown key" errors point at the key itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a source file; ``str()`` is the ``file:line:col: message`` line."""

    file: str
    line: int
    col: int
    message: str
    hint: str | None = None
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        label = "" if self.severity == "error" else "warning: "
        text = f"{self.file}:{self.line}:{self.col}: {label}{self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class _Loader(yaml.SafeLoader):
    pass



class SourceMap:
    """Positions of nodes inside one parsed document."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[Path, tuple[int, int]] = {}

    def at(self, path: Path) -> tuple[int, int]:
        """Position of ``path``, or of its nearest recorded ancestor (never fails)."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), (1, 1))

    def problem(self, path: Path, message: str, hint: str | None = None, severity: str = "error") -> Problem:
        line, col = self.at(path)
        return Problem(self.file, line, col, message, hint, severity)


def _build(node: yaml.Node, path: Path, smap: SourceMap, loader: _Loader) -> Any:
    smap.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key = key if isinstance(key, str | int | bool | float) or key is None else str(key)
            child = (*path, key if isinstance(key, str | int) else str(key))
            smap.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, smap, loader)
            # a value's own position (for "bad value" messages) is the value node
            smap.positions[(*child, "__value__")] = (
                value_node.start_mark.line + 1,
                value_node.start_mark.column + 1,
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), smap, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document.  Raises ``YamlSyntaxError`` carrying a ``Problem``."""
    smap = SourceMap(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, smap
        return _build(node, (), smap, loader), smap
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(Problem(file, line, col, f"invalid YAML: {exc.problem or exc}")) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(Problem(file, 1, 1, f"invalid YAML: {exc}")) from None
    finally:
        loader.dispose()


class YamlSyntaxError(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class SourceReader:
    """Walks parsed YAML collecting every problem (never stopping at the first); the config and
    policy readers build on it."""

    def __init__(self, smap: SourceMap, problems: list[Problem] | None = None) -> None:
        self.smap = smap
        self.problems: list[Problem] = [] if problems is None else problems

    def error(self, path: Path, message: str, hint: str | None = None, *, value: bool = True, warning: bool = False) -> None:
        """Record a problem at ``path`` (at its value when ``value`` and the value has a position)."""
        self.problems.append(self.problem(path, message, hint, value=value, warning=warning))

    def problem(self, path: Path, message: str, hint: str | None = None, *, value: bool = True, warning: bool = False) -> Problem:
        """The problem ``error`` would record, without recording it."""
        at = (*path, "__value__") if value and (*path, "__value__") in self.smap.positions else path
        return self.smap.problem(at, message, hint, "warning" if warning else "error")

    def unknown_keys(self, data: dict[Any, Any], path: Path, allowed: Iterable[str], what: str, *, list_all: bool = False) -> None:
        """An error with a "did you mean" hint for every key of ``data`` not in ``allowed``."""
        choices = list(allowed)
        for key in data:
            if key not in choices:
                hint = did_you_mean(str(key), choices) or (f"expected one of {', '.join(choices)}" if list_all else None)
                self.error((*path, key), f"unknown key `{key}` in {what}", hint, value=False)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean `approve`?"`` for a near miss, else None."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean `{match[0]}`?" if match else None


