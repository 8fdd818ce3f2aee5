"""The zygote and its launcher (``fixtures/zygote.py``): the process a test's upstream command starts
must behave as ``python script.py`` would — exit status, signals, fds, environment, stdio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import stop_process
from fixtures.zygote import Zygote, start, write_launcher

pytestmark = pytest.mark.timeout(120)

PROBE = '''
import json, os, random, sys
preloaded = "mcp.server" in sys.modules
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))[:-1]  # the last: listdir's own
umask = os.umask(0); os.umask(umask)
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "fds": fds, "umask": umask,
                  "path0": sys.path[0], "file": __file__, "preloaded": preloaded, "pid": os.getpid(),
                  "random": random.random(), "sid": os.getsid(0) == os.getpid()}))
sys.stdout.flush()
'''


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = start()
    assert z is not None and z.ready(), "the zygote did not come up"
    yield z
    z.stop()


def script(tmp_path: Path, body: str, name: str = "probe.py") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def run(z: Zygote, *args: str, **options: object) -> subprocess.CompletedProcess[str]:
    options.setdefault("env", {"PATH": os.environ["PATH"]})
    return subprocess.run([str(z.launcher), *args], capture_output=True, text=True, timeout=60, **options)  # type: ignore[call-overload, no-any-return]


def probe(z: Zygote, tmp_path: Path, *args: str, **options: object) -> dict[str, object]:
    done = run(z, str(script(tmp_path, PROBE)), *args, **options)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_child_starts_as_a_fresh_interpreter_would(zygote: Zygote, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    seen = probe(zygote, tmp_path, "a", "--b", env={"PATH": os.environ["PATH"], "ONLY_THIS": "1"}, cwd=work)
    assert seen["preloaded"] is True  # a fork of the zygote, not a fresh exec
    assert seen["argv"] == [str(tmp_path / "probe.py"), "a", "--b"]
    assert seen["cwd"] == str(work) and seen["path0"] == str(tmp_path) and seen["file"] == str(tmp_path / "probe.py")
    fresh = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ["PATH"], "ONLY_THIS": "1"})
    assert seen["env"] == json.loads(fresh.stdout)["env"]  # the launcher's environment, as the interpreter sees it
    assert seen["env"]["ONLY_THIS"] == "1" and "PYTEST_CURRENT_TEST" not in seen["env"]
    assert seen["fds"] == [0, 1, 2]  # nothing of the zygote's is inherited
    umask = os.umask(0o022)
    os.umask(umask)
    assert seen["umask"] == umask
    assert seen["sid"] is True  # its own session, as the guard starts upstreams


def test_two_children_draw_different_random_numbers(zygote: Zygote, tmp_path: Path) -> None:
    assert probe(zygote, tmp_path)["random"] != probe(zygote, tmp_path)["random"]


@pytest.mark.parametrize(("body", "code", "stderr"), [
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; sys.exit('bad input')", 1, "bad input"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM, ""),
    ("import sys; print('unflushed', end=''); sys.stderr.write('err')", 0, "err"),
])
def test_the_launcher_exits_as_the_child_did(zygote: Zygote, tmp_path: Path, body: str, code: int, stderr: str) -> None:
    done = run(zygote, str(script(tmp_path, body)))
    assert done.returncode == code and stderr in done.stderr
    if "unflushed" in body:
        assert done.stdout == "unflushed"  # stdio is flushed at the child's exit


def test_stdin_eof_and_large_outputs_pass_intact(zygote: Zygote, tmp_path: Path) -> None:
    body = "import sys\ndata = sys.stdin.buffer.read()\nsys.stdout.buffer.write(data * 4)\nsys.stderr.write('x' * 3_000_000)\n"
    payload = os.urandom(1_000_000).hex()  # 2 MB in, 8 MB out
    done = subprocess.run([str(zygote.launcher), str(script(tmp_path, body))], input=payload.encode(),
                          capture_output=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0
    assert done.stdout == payload.encode() * 4 and done.stderr == b"x" * 3_000_000


def _child_pid(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("pid "), line
    return int(line.split()[1])


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":  # ended; the zygote has yet to reap it
            return True
        time.sleep(0.02)
    return False


SLEEPER = "import os, sys, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(600)\n"


@pytest.mark.parametrize(("sig", "how"), [
    (signal.SIGTERM, "launcher"), (signal.SIGINT, "launcher"), (signal.SIGHUP, "launcher"),
    (signal.SIGTERM, "group"), (signal.SIGKILL, "group"), (signal.SIGKILL, "launcher"),
])
def test_a_signal_to_the_launcher_ends_the_child(zygote: Zygote, tmp_path: Path, sig: signal.Signals, how: str) -> None:
    """The guard signals its upstream's process group (``killpg``); tests signal the process."""
    proc = subprocess.Popen([str(zygote.launcher), str(script(tmp_path, SLEEPER))], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True, env={"PATH": os.environ["PATH"]})
    child = _child_pid(proc)
    assert child != proc.pid
    (os.killpg if how == "group" else os.kill)(proc.pid, sig)
    assert proc.wait(30) == -sig
    assert _gone(child)


def test_a_signal_to_the_child_is_the_launchers_exit(zygote: Zygote, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(zygote.launcher), str(script(tmp_path, SLEEPER))], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={"PATH": os.environ["PATH"]})
    os.kill(_child_pid(proc), signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


@pytest.mark.parametrize("case", ["option", "sitecustomize", "shadowing", "other variable"])
def test_what_a_fork_cannot_honour_runs_on_the_real_interpreter(zygote: Zygote, tmp_path: Path, case: str) -> None:
    env = {"PATH": os.environ["PATH"]}
    site = tmp_path / "site"
    site.mkdir()
    args: list[str] = [str(script(tmp_path, PROBE))]
    if case == "option":
        args = ["-u", *args]
    elif case == "sitecustomize":
        (site / "sitecustomize.py").write_text("import os; os.environ['SITE_RAN'] = '1'\n")
        env["PYTHONPATH"] = str(site)
    elif case == "shadowing":
        (site / "anyio").mkdir()
        env["PYTHONPATH"] = str(site)
    else:
        env["PYTHONHASHSEED"] = "7"
    done = run(zygote, *args, env=env)
    seen = json.loads(done.stdout)
    assert seen["preloaded"] is False  # a fresh interpreter
    assert (seen["env"].get("SITE_RAN") == "1") is (case == "sitecustomize")


def test_a_plain_pythonpath_is_honoured_by_the_fork(zygote: Zygote, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helper_mod.py").write_text("VALUE = 42\n")
    body = "import sys, helper_mod\nprint('mcp.server' in sys.modules, helper_mod.VALUE)\n"
    done = run(zygote, str(script(tmp_path, body)), env={"PATH": os.environ["PATH"], "PYTHONPATH": str(lib)})
    assert done.stdout.split() == ["True", "42"]


def test_a_launcher_started_before_the_zygote_is_ready_waits_for_it(tmp_path: Path) -> None:
    z = start()
    assert z is not None
    try:
        assert probe(z, tmp_path)["preloaded"] is True
    finally:
        z.stop()


@pytest.mark.parametrize("zygote", ["none", "exited"])
def test_without_a_zygote_the_launcher_is_the_real_interpreter(tmp_path: Path, zygote: str) -> None:
    launcher = tmp_path / "python"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_launcher(launcher, tmp_path / "nobody-listens.sock", sys.executable, gone.pid if zygote == "exited" else 0)
    done = subprocess.run([str(launcher), str(script(tmp_path, PROBE)), "x"], capture_output=True, text=True,
                          timeout=60, env={"PATH": os.environ["PATH"]})
    seen = json.loads(done.stdout)
    assert done.returncode == 0 and seen["preloaded"] is False and seen["argv"][1:] == ["x"]


# --------------------------------------------------------------------------- the guard's launcher


def _guard() -> Path:
    """The worker's launcher for ``mcp-guard`` (tests/conftest.py's zygote)."""
    import fixtures

    if fixtures.GUARD is None:
        pytest.skip("the guard is not forked here (MCP_GUARD_TEST_ZYGOTE=0)")
    return fixtures.GUARD


@pytest.mark.parametrize("args", [["--version"], ["no-such-command"], ["run", "--config", "missing.yaml"],
                                  ["run", "--config", "bad.yaml"]])
def test_the_guard_launcher_answers_and_exits_as_the_console_script(tmp_path: Path, args: list[str]) -> None:
    from fixtures import real_mcp_guard_bin

    (tmp_path / "bad.yaml").write_text("version: 1\nupstreams: [x]\n", encoding="utf-8")
    forked, real = (subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                   stdin=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
                    for exe in (_guard(), real_mcp_guard_bin()))
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
    assert forked.returncode == {"--version": 0, "no-such-command": 2}.get(args[0], 1)


def _children(pid: int) -> str:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().strip()


def _start_run(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """``mcp-guard run`` over the launcher, past the host's ``initialize`` (its upstream started)."""
    from fixtures import recording_server_command, stdio_upstream, tools_env, write_guard_config

    config = write_guard_config(tmp_path, {"rec": stdio_upstream(recording_server_command())})
    err = tmp_path / "guard.log"
    with err.open("wb") as log:
        proc = subprocess.Popen([str(_guard()), "run", "--config", str(config)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, cwd=tmp_path, env=tools_env(env))
    assert proc.stdin is not None and proc.stdout is not None
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    proc.stdin.write(json.dumps(hello).encode() + b"\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    return proc, err


def test_a_guard_started_with_a_variable_read_at_import_runs_on_the_real_console_script(tmp_path: Path) -> None:
    proc, _err = _start_run(tmp_path, {"OTEL_PROPAGATORS": "tracecontext"})
    try:
        assert _children(proc.pid) != ""  # the launcher became the guard: its upstream is its child
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)


def test_a_forked_run_reads_its_environment_reloads_on_sighup_and_ends_at_stdin_eof(tmp_path: Path) -> None:
    proc, err = _start_run(tmp_path, {"MCP_GUARD_LOG_LEVEL": "INFO", "MCP_GUARD_LOG_FORMAT": "json"})
    assert proc.stdin is not None
    try:
        assert _children(proc.pid) == ""  # the guard (and its upstream) run in the zygote's child, not here
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "policies reloaded" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
    records = [json.loads(line) for line in err.read_text().splitlines() if line.strip()]  # JSON: read at start
    assert any("policies reloaded" in json.dumps(r) for r in records)  # INFO: read at start


def test_a_forked_serve_drains_on_sigterm(tmp_path: Path) -> None:
    from fixtures.ops import OpsSetup

    _guard()  # what OpsSetup starts: mcp_guard_bin()
    setup = OpsSetup(tmp_path, drain="2s")
    with setup.running(env={"MCP_GUARD_LOG_LEVEL": "INFO"}) as proc:
        assert _children(proc.pid) == ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert any("draining on SIGTERM" in line for line in setup.lines())
