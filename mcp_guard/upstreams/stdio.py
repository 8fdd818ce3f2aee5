"""A stdio upstream: a child process speaking newline-delimited JSON-RPC.

The child gets an explicit environment (``config.upstream_environment``): a few essentials such as
PATH and HOME, what ``env_passthrough`` names and its configured ``env`` — never another upstream's
token or the guard's own secrets.  Its stderr goes to the guard's log, never to the host.

Its stdout is a pipe of the guard's own, read by the event loop directly (``_Stdout``; a
subprocess transport's pipe hands each read on one loop turn later) and split into lines by the
pipe's protocol, not by a stream reader and a read loop: an answer to a request in flight is handed
to the connection as soon as it arrives (``answer_with``), so a call's answer costs no wake-up of
the reader task.  Everything else (the
upstream's requests and notifications) is queued for ``receive``, and so is an answer while
anything is queued or being handled before it: the upstream's messages keep their order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable

import orjson

from mcp_guard.config import UpstreamConfig, upstream_environment
from mcp_guard.errors import UpstreamError
from mcp_guard.jsonrpc import LineSplitter, Message, dumps

log = logging.getLogger("mcp_guard.upstream")

LINE_LIMIT = 64 * 1024 * 1024  # a 2000-tool list is ~1 MB; leave ample room
INBOX_LIMIT = 1024  # messages queued for ``receive`` before the child's stdout stops being read


class _Pipes(asyncio.subprocess.SubprocessStreamProtocol):
    """The child's stdin and stderr, as ``asyncio.subprocess`` streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=LINE_LIMIT, loop=loop)
        self.paused = False  # the child's stdin is full: a write must wait for ``drain``

    def pause_writing(self) -> None:  # called by the stdin pipe's write, as its buffer passes the high-water mark
        super().pause_writing()
        self.paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused = False


class _Stdout(asyncio.Protocol):
    """The child's stdout, split into lines here and handed to the channel."""

    def __init__(self, channel: StdioChannel) -> None:
        self._channel = channel
        self._lines = LineSplitter(channel.line, channel.overrun, LINE_LIMIT, resume=False)

    def data_received(self, data: bytes) -> None:
        self._lines.feed(data)

    def eof_received(self) -> bool:
        return False  # the transport closes: ``connection_lost`` says the end

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel.ended()


class StdioChannel:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._pipes: _Pipes | None = None
        self._stdout: asyncio.ReadTransport | None = None  # the child's stdout pipe (paused while the inbox is full)
        self._stderr_task: asyncio.Task[None] | None = None
        self._closing = False
        self._inbox: collections.deque[Message | None] = collections.deque()  # None: the end
        self._waiter: asyncio.Future[None] | None = None  # ``receive`` waits on it (nothing queued)
        self._paused = False
        self._answer: Callable[[Message], bool] | None = None

    def answer_with(self, answer: Callable[[Message], bool]) -> None:
        """``answer(message)`` takes a response as it arrives (True: it was one, and is handled)
        while ``receive`` is idle and nothing is queued before it."""
        self._answer = answer

    async def open(self) -> None:
        assert self.config.command is not None
        env = upstream_environment(self.config)
        command = shutil.which(self.config.command, path=env.get("PATH")) or self.config.command
        loop = asyncio.get_running_loop()
        stdout, child_stdout = os.pipe()
        try:
            # asyncio.create_subprocess_exec, with stdout a pipe of the guard's own (``_Stdout``)
            transport, protocol = await loop.subprocess_exec(
                lambda: _Pipes(loop),
                command,
                *self.config.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=child_stdout,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.config.cwd,
                start_new_session=True,  # the guard's signals (Ctrl-C in a terminal) are not the child's
            )
        except OSError as exc:
            os.close(stdout)
            raise UpstreamError(
                f"upstream {self.config.name} could not start `{self.config.command}`: {exc.strerror or exc}"
            ) from None
        finally:
            os.close(child_stdout)  # the child's copy is the only writer left: its exit ends the pipe
        self._proc = asyncio.subprocess.Process(transport, protocol, loop)
        self._pipes = protocol
        self._stdout, _ = await loop.connect_read_pipe(lambda: _Stdout(self), os.fdopen(stdout, "rb", 0))
        self._stderr_task = loop.create_task(self._pump_stderr())

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
            stdin = proc.stdin
            stdin.write(dumps(message))
            pipes = self._pipes
            # drain() returns at once unless the pipe is full or closing (two coroutines per call saved)
            if pipes is None or pipes.paused or stdin.transport.is_closing():
                await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamError(f"upstream {self.config.name} stopped reading its input ({exc})") from None

    # ------------------------------------------------------------------ stdout, line by line (``_Lines``)

    def line(self, line: bytes) -> None:
        """One line of the child's stdout: parsed, then answered at once or queued for ``receive``."""
        if not line.strip():
            return
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("[%s] wrote a line that is not JSON; ignored: %.200r", self.config.name, line)
            return
        if not isinstance(message, dict):
            log.warning("[%s] wrote JSON that is not a JSON-RPC object; ignored", self.config.name)
            return
        waiter = self._waiter
        if self._answer is not None and waiter is not None and not waiter.done() and not self._inbox:
            try:
                if self._answer(message):
                    return
            except Exception:  # protocol edge: one bad answer must not end the upstream's reader
                log.exception("[%s] handling a message failed", self.config.name)
                return
        self._queue(message)

    def overrun(self) -> None:
        log.error("[%s] sent a message over %d bytes; closing it", self.config.name, LINE_LIMIT)
        self._queue(None)

    def ended(self) -> None:
        self._queue(None)

    def _queue(self, message: Message | None) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if message is not None and len(self._inbox) >= INBOX_LIMIT and not self._paused:
            self._reading(False)

    def _reading(self, on: bool) -> None:
        """Resume (or pause) reading the child's stdout: the inbox's back-pressure."""
        self._paused = not on
        if self._stdout is not None:
            with contextlib.suppress(Exception):  # a pipe already closed has nothing to pause
                if on:
                    self._stdout.resume_reading()
                else:
                    self._stdout.pause_reading()

    async def receive(self) -> Message | None:
        if self._proc is None:
            return None
        inbox = self._inbox
        while not inbox:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = inbox[0]
        if message is None:  # the end stays queued: every later call returns None too
            with contextlib.suppress(TimeoutError):  # so exit_reason() can name the exit code
                await asyncio.wait_for(self._proc.wait(), 1.0)
            return None
        inbox.popleft()
        if self._paused and len(inbox) < INBOX_LIMIT // 2:
            self._reading(True)
        return message

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
        if self._paused:  # read on, so the end of the child's output closes its pipes
            self._reading(True)
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
        if self._stdout is not None:  # a grandchild may still hold the child's stdout open
            self._stdout.close()
