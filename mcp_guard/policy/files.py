"""Policy files on disk: which files a path holds, and their text with the names problems show.

The only place that reads policy and policy test files; parsing them is ``parse``'s job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from mcp_guard.errors import ConfigError


def iter_policy_files(path: Path) -> Iterator[Path]:
    """A file, or every ``*.yaml``/``*.yml`` in a directory tree (sorted), skipping ``*.test.yaml`` and
    anything under an ``examples/`` folder (examples to copy, never policies in force by being there)."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix in (".yaml", ".yml") and not p.name.endswith((".test.yaml", ".test.yml")) and p.is_file() \
                    and "examples" not in p.relative_to(path).parts[:-1]:
                yield p
    else:
        yield path


def iter_policy_test_files(path: Path) -> Iterator[Path]:
    """``*.test.yaml`` files under a directory (or the file itself)."""
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.name.endswith((".test.yaml", ".test.yml")) and p.is_file())
    else:
        yield path


def read_sources(paths: Iterator[Path] | list[Path] | tuple[Path, ...], display: Callable[[Path], str] | None = None) -> list[tuple[str, str]]:
    """``[(display name, text)]`` for the policy parser; unreadable files raise ConfigError."""
    out: list[tuple[str, str]] = []
    show = display or (lambda p: os.path.relpath(p) if p.is_absolute() else str(p))
    problems: list[str] = []
    for p in paths:
        try:
            out.append((show(p), p.read_text(encoding="utf-8")))
        except OSError as exc:
            problems.append(f"{show(p)}:1:1: cannot read: {exc.strerror or exc}")
    if problems:
        raise ConfigError(problems[0], problems)
    return out


def policy_sources(paths: tuple[Path, ...] | list[Path]) -> list[tuple[str, str]]:
    """Every policy document under ``paths`` (files or directories), ready for ``policy.load_sources``."""
    files: list[Path] = []
    for p in paths:
        files.extend(iter_policy_files(p))
    return read_sources(files)
