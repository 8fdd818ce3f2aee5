"""JSON Schemas (2020-12) of guard.yaml, policy files and policy test files, for editors.

Each is generated from the file's document model (``config.document``, ``policy.document``): the
same pydantic models that validate guard.yaml, policy and policy test files, so a key or a type
is written down once.  The schema is the editor's first line of help; ``mcp-guard
check`` stays the judge of what no schema can see (files on disk, unique policy ids, regex
syntax, the path-safety of ``under`` roots).

``mcp-guard schema config|policy|tests`` prints these; ``schemas/*.schema.json`` are the committed
copies editors load through the ``# yaml-language-server: $schema=...`` modeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp_guard.config.document import GuardDoc
from mcp_guard.policy.document import PolicyFileDoc, TestFileDoc
from mcp_guard.typedoc import json_schema

FILES = {"config": "guard.schema.json", "policy": "policy.schema.json", "tests": "policy-tests.schema.json"}

Schema = dict[str, Any]


def config_schema() -> Schema:
    """guard.yaml."""
    return json_schema(GuardDoc, "mcp-guard guard.yaml")


def policy_schema() -> Schema:
    """A policy file (``version: 1``, ``policies: [...]``, ``labels: [...]``)."""
    return json_schema(PolicyFileDoc, "mcp-guard policy file", null_is_absent=True)


def tests_schema() -> Schema:
    """A policy test file (``*.test.yaml``)."""
    return json_schema(TestFileDoc, "mcp-guard policy test file", null_is_absent=True)


SCHEMAS: dict[str, Callable[[], Schema]] = {"config": config_schema, "policy": policy_schema, "tests": tests_schema}
