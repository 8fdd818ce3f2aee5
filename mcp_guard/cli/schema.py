"""CLI: ``mcp-guard schema config|policy|tests`` — the JSON Schemas editors validate against."""

from __future__ import annotations

import json

import click

from mcp_guard.schema import SCHEMAS


def render(kind: str) -> str:
    """The schema's JSON text exactly as committed under ``schemas/``."""
    return json.dumps(SCHEMAS[kind](), indent=2, ensure_ascii=False) + "\n"


@click.command("schema")
@click.argument("kind", type=click.Choice(sorted(SCHEMAS)))
def schema(kind: str) -> None:
    """Print the JSON Schema (2020-12) of guard.yaml (config), policy files (policy) or policy
    test files (tests).

    \b
    Editors with the YAML language server validate as you type with a first-line modeline:
      # yaml-language-server: $schema=schemas/policy.schema.json
    """
    click.echo(render(kind), nl=False)


COMMANDS: list[click.Command] = [schema]
