"""A small filesystem MCP server for ``mcp-guard demo`` when the reference server is not installed.

It offers the reference filesystem server's tool names, schemas' key arguments and annotations
(``read_text_file``, ``write_file``, ``move_file``, ...), so the demo's policy reads the same, and
it works with nothing but Python: no Node, no download at start.  Like the reference server it
refuses any path outside the directories given on its command line (after resolving symlinks
and ``..``), whatever the guard in front of it decides.

    python -m mcp_guard.demo_server DIR [DIR ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

_STR = {"type": "string"}
_PATH = {"type": "object", "properties": {"path": _STR}, "required": ["path"]}


def _tool(name: str, description: str, schema: dict[str, Any], *, read_only: bool = True,
          destructive: bool | None = None) -> types.Tool:
    annotations = types.ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive, open_world_hint=False)
    return types.Tool(name=name, description=description, input_schema=schema, annotations=annotations)


TOOLS = [
    _tool("read_text_file", "Read the complete contents of a file as text.", _PATH),
    _tool("list_directory", "List the files and directories in a directory.", _PATH),
    _tool("directory_tree", "A recursive tree of a directory as JSON.", _PATH),
    _tool("search_files", "Find files whose name contains a pattern, under a directory.",
          {"type": "object", "properties": {"path": _STR, "pattern": _STR}, "required": ["path", "pattern"]}),
    _tool("get_file_info", "Size and kind of a file or directory.", _PATH),
    _tool("list_allowed_directories", "The directories this server may access.", {"type": "object", "properties": {}}),
    _tool("write_file", "Create or overwrite a file.",
          {"type": "object", "properties": {"path": _STR, "content": _STR}, "required": ["path", "content"]},
          read_only=False, destructive=True),
    _tool("edit_file", "Replace exact text in a file.",
          {"type": "object", "properties": {"path": _STR, "old_text": _STR, "new_text": _STR},
           "required": ["path", "old_text", "new_text"]}, read_only=False, destructive=True),
    _tool("create_directory", "Create a directory (and its parents).", _PATH, read_only=False, destructive=False),
    _tool("move_file", "Move or rename a file or directory.",
          {"type": "object", "properties": {"source": _STR, "destination": _STR}, "required": ["source", "destination"]},
          read_only=False, destructive=True),
]


def _result(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


class DemoFilesystem:
    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r.resolve() for r in roots]
        self.server: Server[Any] = Server("mcp-guard-demo-filesystem", version="1.0.0",
                                          on_list_tools=self.list_tools, on_call_tool=self.call_tool)

    def inside(self, raw: Any) -> Path:
        """The resolved path, if it lies in an allowed directory; relative paths start in the first."""
        p = Path(os.path.expanduser(str(raw)))
        p = (p if p.is_absolute() else self.roots[0] / p).resolve()
        if not any(p == r or r in p.parents for r in self.roots):
            raise PermissionError(f"Access denied - path outside allowed directories: {raw}")
        return p

    async def list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args: dict[str, Any] = dict(params.arguments or {})
        try:
            return _result(self.run(params.name, args))
        except (OSError, KeyError, ValueError) as exc:
            return _result(f"Error: {exc}", error=True)

    def _tree(self, p: Path) -> list[dict[str, Any]]:
        return [{"name": c.name, "type": "directory", "children": self._tree(c)} if c.is_dir() else {"name": c.name, "type": "file"}
                for c in sorted(p.iterdir())]

    def run(self, name: str, args: dict[str, Any]) -> str:
        if name == "list_allowed_directories":
            return "Allowed directories:\n" + "\n".join(map(str, self.roots))
        if name == "move_file":
            src, dst = self.inside(args["source"]), self.inside(args["destination"])
            shutil.move(src, dst)
            return f"Successfully moved {args['source']} to {args['destination']}"
        p = self.inside(args["path"])
        if name == "read_text_file":
            return p.read_text(encoding="utf-8")
        if name == "list_directory":
            return "\n".join(("[DIR] " if c.is_dir() else "[FILE] ") + c.name for c in sorted(p.iterdir()))
        if name == "directory_tree":
            return json.dumps(self._tree(p), indent=2)
        if name == "search_files":
            hits = [str(c) for c in sorted(p.rglob("*")) if str(args["pattern"]).lower() in c.name.lower()]
            return "\n".join(hits) or "No matches found"
        if name == "get_file_info":
            st = p.stat()
            return f"size: {st.st_size}\nisDirectory: {p.is_dir()}\nisFile: {p.is_file()}"
        if name == "write_file":
            p.write_text(str(args["content"]), encoding="utf-8")
            return f"Successfully wrote to {args['path']}"
        if name == "edit_file":
            text = p.read_text(encoding="utf-8")
            if str(args["old_text"]) not in text:
                raise ValueError("old_text was not found in the file")
            p.write_text(text.replace(str(args["old_text"]), str(args["new_text"]), 1), encoding="utf-8")
            return f"Successfully edited {args['path']}"
        if name == "create_directory":
            p.mkdir(parents=True, exist_ok=True)
            return f"Successfully created directory {args['path']}"
        raise ValueError(f"Unknown tool: {name}")

    async def serve(self) -> None:
        async with stdio_server() as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]]
    if not roots or not all(r.is_dir() for r in roots):
        sys.stderr.write("usage: python -m mcp_guard.demo_server DIR [DIR ...] (existing directories)\n")
        sys.exit(2)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(DemoFilesystem(roots).serve)


if __name__ == "__main__":
    main()
