"""A stdio upstream: a child process speaking newline-delimited JSON-RPC.

The child gets the guard's environment minus the guard's own secrets (``MCP_GUARD_*``, so a grant
token never leaks to a server) plus its configured ``env``.  Its stderr goes to the guard's log,
never to the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal

import orjson

from mcp_guard.config import UpstreamConfig
from mcp_guard.errors import UpstreamError
from mcp_guard.jsonrpc import Message, dumps

log = logging.getLogger("mcp_guard.upstream")

LINE_LIMIT = 64 * 1024 * 1024  # a 2000-tool list is ~1 MB; leave ample room


def child_environment(config: UpstreamConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("MCP_GUARD_")}
    env.update(config.env)
    return env


class StdioChannel:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self) -> None:
        assert self.config.command is not None
        command = shutil.which(self.config.command, path=self.config.env.get("PATH") or os.environ.get("PATH")) or self.config.command
        try:
            self._proc = await asyncio.create_subprocess_exec(
                command,
                *self.config.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_environment(self.config),
                cwd=self.config.cwd,
                limit=LINE_LIMIT,
                start_new_session=True,  # the guard's signals (Ctrl-C in a terminal) are not the child's
            )
        except OSError as exc:
            raise UpstreamError(
                f"upstream {self.config.name} could not start `{self.config.command}`: {exc.strerror or exc}"
            ) from None
        self._stderr_task = asyncio.get_running_loop().create_task(self._pump_stderr())

    async def _pump_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        name = self.config.name
        with contextlib.suppress(Exception):
            while line := await self._proc.stderr.readline():
                log.info("[%s] %s", name, line.decode("utf-8", "replace").rstrip())

    async def send(self, message: Message) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise UpstreamError(f"upstream {self.config.name} is not running")
        try:
            proc.stdin.write(dumps(message))
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamError(f"upstream {self.config.name} stopped reading its input ({exc})") from None

    async def receive(self) -> Message | None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                log.error("[%s] sent a message over %d bytes; closing it", self.config.name, LINE_LIMIT)
                return None
            except ConnectionError:
                return None
            if not line:
                with contextlib.suppress(TimeoutError):  # so exit_reason() can name the exit code
                    await asyncio.wait_for(proc.wait(), 1.0)
                return None
            if not line.strip():
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("[%s] wrote a line that is not JSON; ignored: %.200r", self.config.name, line)
                continue
            if isinstance(message, dict):
                return message
            log.warning("[%s] wrote JSON that is not a JSON-RPC object; ignored", self.config.name)

    def exit_reason(self) -> str:
        if self._proc is None:
            return "was never started"
        code = self._proc.returncode
        if code is None:
            return "closed its output"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    async def close(self) -> None:
        proc = self._proc
        if proc is None or self._closing:
            return
        self._closing = True
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 1.0)
