"""``mcp-guard serve`` at scale: wrk load against the guard over HTTP, beside the direct upstream
and FastMCP's HTTP proxy, interleaved, one JSON line per measurement.

Starts, once: the upstream (``echo_server.py --http``, the mcp SDK's Streamable HTTP app under
uvicorn, plain JSON answers), a dummy OTLP sink (accepts and discards posts), and every target on
its own port; then for each round, connection count and era runs ``wrk`` (``wrk/mcp_call.lua``)
against each target in turn, reading the proxy's and the upstream's CPU time from
``/proc/<pid>/stat`` (utime + stime, whole process tree) around each run.

Targets:
  direct        the upstream itself
  passthrough   http_passthrough.py: uvicorn + Starlette + httpx2 forwarding bodies unchanged (the
                guard's HTTP stack without mediation: the floor for a Python HTTP proxy)
  guard         mcp-guard serve (200-rule bench policy, sqlite state, 2-link bearer grant chain)
  guard_full    guard + tracing (OTLP traces and metrics to the sink) + hash-chained audit log
  guard_w2      guard_full with --workers 2 (one port, SO_REUSEPORT, shared sqlite state)
  guard_redis2  two guard_full replicas (--reuse-port) on one port sharing a redis:// state
                (redis-server started here on a free port)
  base, base_full  guard and guard_full run from another source tree (``--base DIR``, e.g. an
                ``git archive`` of main), for before/after in the same run
  fastmcp       FastMCP 4.x HTTP proxy (fastmcp_proxy.py --http --reuse-session; without
                --reuse-session it opens a new upstream session per request: ~12 calls/s)

Eras: ``modern`` = 2026-07-28 stateless POSTs; ``legacy`` = 2025-11-25 sessions, opened here
(initialize + notifications/initialized, one per connection) before wrk runs; ``legacy1`` = the
same with one session shared by every connection (what the upstream sees behind the guard, which
holds one upstream session for all its callers). A handshake-era session lives in the process that
opened it, so neither is run against guard_w2/guard_redis2.

``--strace-upstream`` attaches ``strace -c -f`` to the upstream during each measurement and adds its
system calls and loop wake-ups (``epoll_pwait``) per request to the row: how many requests the
upstream finds per wake-up, a figure the machine's load moves far less than requests per second.

Usage (from the repository root; needs wrk: ``apt-get install -y wrk``):
  .venv/bin/python bench/serve_bench.py [--conns 1,4,16,64,256] [--duration 5] [--rounds 2]
      [--eras modern,legacy,legacy1] [--strace-upstream] [--targets direct,passthrough,guard,guard_full,guard_w2,guard_redis2,fastmcp]
      [--out bench/results/serve-<stamp>]
then ``.venv/bin/python bench/summarize.py --serve OUT/results.jsonl [--markdown]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from otlp_sink import otlp_sink

from mcp_guard.grants import delegate, generate_keypair, issue_grant, public_jwk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
GUARD = Path(sys.executable).parent / "mcp-guard"
LUA = HERE / "wrk" / "mcp_call.lua"
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "passthrough", "guard", "guard_full", "guard_w2", "guard_redis2", "fastmcp")
BASE = ("base", "base_full")  # with --base DIR
MULTI = ("guard_w2", "guard_redis2")  # several processes: handshake-era sessions are per process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args!r} exited with {p.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing listened on port {port} within {timeout}s")


def tree_cpu_s(roots: list[int]) -> float:
    """utime + stime (seconds) of the given processes and all their descendants, from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            table[int(name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack, seen = 0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total / TICKS


def sleeps(pid: int) -> int:
    """Voluntary context switches of ``pid``'s main thread (an event loop's: each is a wait for I/O that
    found nothing ready), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    except (OSError, StopIteration, ValueError):
        return 0


@dataclass
class Target:
    name: str
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tool: str = "echo"
    token: str = "-"
    sessions: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


class Bench:
    def __init__(self, work: Path, sink: str, base: Path | None = None) -> None:
        self.work = work
        self.base = base
        self.sink = sink
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = (work / "servers.log").open("ab")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.env["PYTHONPATH"] = f"{ROOT}:{HERE}"  # this tree's mcp_guard, whatever the venv has installed
        # a 2-link chain: the IdP lets the planner act for alice, the planner delegates echo to a coder
        idp, idp_pub = generate_keypair()
        planner, planner_pub = generate_keypair()
        (work / "idp.jwk").write_text(json.dumps(public_jwk(idp_pub)))
        root = issue_grant(idp, "bench-idp", "alice@example.com", "planner", ["upstream/*"], agent_key=planner_pub,
                           depth=1, ttl=24 * 3600)
        self.token = delegate(root, planner, "coder", ["upstream/echo"], ttl=24 * 3600)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=self.logs, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.work, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()  # SIGTERM: a background job's children ignore SIGINT
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.logs.close()

    def quiesce(self, idle: float = 0.1, limit: float = 45.0) -> None:
        """Wait until every server started here is idle (below ``idle`` of a core for 0.5 s), so the
        requests a previous run left queued (wrk stops, servers finish what they accepted) do not
        load the next one; gives up after ``limit`` seconds."""
        pids = [p.pid for p in self.procs]
        deadline = time.monotonic() + limit
        before, calm = tree_cpu_s(pids), 0
        while time.monotonic() < deadline and calm < 2:
            time.sleep(0.25)
            now = tree_cpu_s(pids)
            calm = calm + 1 if now - before < idle * 0.25 else 0
            before = now

    def guard_config(self, name: str, *, full: bool, state: str) -> Path:
        directory = self.work / name
        directory.mkdir()
        doc: dict[str, Any] = {
            "version": 1,
            "upstreams": {"upstream": {"url": self.upstream_url}},
            "policies": str(HERE / "policies"),
            "trust": {"issuers": {"bench-idp": str(self.work / "idp.jwk")}},
            "state": {"url": state},
            # wrk's legacy runs hold one session per connection, all of one principal (default cap 64)
            "serve": {"max_sessions_per_principal": 1024, "max_sessions_per_root": 1024},
        }
        if full:
            doc["audit"] = {"path": str(directory / "audit.jsonl")}
            doc["telemetry"] = {"endpoint": self.sink, "service_name": "mcp-guard-bench"}
        path = directory / "guard.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def start(self, names: list[str]) -> list[Target]:
        up_port = free_port()
        self.upstream = self.spawn([PY, str(HERE / "echo_server.py"), "--http", str(up_port)])
        self.upstream_url = f"http://127.0.0.1:{up_port}/mcp"
        wait_port(up_port, [self.upstream])
        targets: list[Target] = []
        for name in names:
            port = up_port if name == "direct" else free_port()
            t = Target(name, port)
            serve = [str(GUARD), "serve", "--port", str(port), "--log-level", "WARNING"]
            if name == "direct":
                t.procs = [self.upstream]
            elif name == "passthrough":
                t.procs = [self.spawn([PY, str(HERE / "http_passthrough.py"), "--port", str(port),
                                       "--upstream-url", self.upstream_url])]
            elif name == "fastmcp":
                t.procs = [self.spawn([PY, str(HERE / "fastmcp_proxy.py"), "--http", str(port), "--reuse-session",
                                       "--upstream-url", self.upstream_url])]
            elif name in ("guard", "guard_full", "guard_w2"):
                config = self.guard_config(name, full=name != "guard", state=f"sqlite:///{self.work / name / 'state.db'}")
                extra = ["--workers", "2"] if name == "guard_w2" else []
                t.procs = [self.spawn([*serve, "--config", str(config), *extra])]
            elif name in BASE:
                if self.base is None:
                    raise SystemExit(f"target {name} needs --base DIR")
                config = self.guard_config(name, full=name == "base_full", state=f"sqlite:///{self.work / name / 'state.db'}")
                env = {**self.env, "PYTHONPATH": f"{self.base}:{HERE}"}  # the other tree's mcp_guard wins
                t.procs = [self.spawn([PY, "-m", "mcp_guard", *serve[1:], "--config", str(config)], env=env)]
            elif name == "guard_redis2":
                redis_port = free_port()
                self.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"])
                wait_port(redis_port, self.procs[-1:])
                config = self.guard_config(name, full=True, state=f"redis://127.0.0.1:{redis_port}/0")
                with config.open("a") as f:  # replicas must open each other's sealed approval state
                    f.write(yaml.safe_dump({"approvals": {"state_key": "bench-" + "k" * 40}}))
                t.procs = [self.spawn([*serve, "--config", str(config), "--reuse-port"]) for _ in range(2)]
            else:
                raise SystemExit(f"unknown target {name}")
            if name.startswith(("guard", "base")):
                t.tool, t.token = "upstream_echo", self.token
            targets.append(t)
        for t in targets:
            wait_port(t.port, t.procs)
        return targets


# ------------------------------------------------------------------ HTTP set-up phase (legacy era)

def post(port: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/mcp", json.dumps(body), {"Content-Type": "application/json",
                                                         "Accept": "application/json, text/event-stream", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def open_session(t: Target) -> str:
    auth = {"Authorization": f"Bearer {t.token}"} if t.token != "-" else {}
    status, headers, body = post(t.port, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "serve_bench", "version": "1"}}}, auth)
    sid = headers.get("mcp-session-id")
    if status != 200 or not sid:
        raise SystemExit(f"{t.name}: initialize answered {status}: {body[:300]!r}")
    more = {**auth, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    status, _, body = post(t.port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, more)
    if status not in (200, 202):
        raise SystemExit(f"{t.name}: notifications/initialized answered {status}: {body[:300]!r}")
    return sid


# ------------------------------------------------------------------ one wrk run

def strace_counts(table: Path) -> dict[str, int]:
    """System calls by name from a ``strace -c`` table."""
    return {m.group(2): int(m.group(1)) for line in table.read_text().splitlines()
            if (m := re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)) and m.group(2) != "total"}


def run_wrk(b: Bench, t: Target, era: str, conns: int, seconds: float, strace_upstream: bool = False) -> dict[str, Any]:
    threads = 1 if conns == 1 else 2
    script_args = ["legacy" if era == "legacy1" else era, t.tool, t.token]
    if era in ("legacy", "legacy1"):
        while len(t.sessions) < (conns if era == "legacy" else 1):
            t.sessions.append(open_session(t))
        sids = b.work / f"sessions-{t.name}-{era}-{conns}.txt"
        sids.write_text("\n".join(t.sessions[:conns] if era == "legacy" else t.sessions[:1] * conns) + "\n")
        script_args += [str(sids), str(threads)]
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(LUA), t.url, "--", *script_args]
    pids = [p.pid for p in t.procs]
    upstream = [] if t.name == "direct" else [b.upstream.pid]
    b.quiesce()
    tracer, table = None, b.work / f"strace-upstream-{t.name}-{era}-{conns}.txt"
    if strace_upstream:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(table), "-p", str(b.upstream.pid)])
        time.sleep(2)  # attached to every thread
    cpu0, up0, t0, sleeps0 = tree_cpu_s(pids), tree_cpu_s(upstream), time.monotonic(), sleeps(b.upstream.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - t0
    cpu1, up1, sleeps1 = tree_cpu_s(pids), tree_cpu_s(upstream), sleeps(b.upstream.pid)
    traced: dict[str, Any] = {}
    if tracer is not None:
        time.sleep(0.5)  # what wrk left in flight
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    w = json.loads(line[len("WRKJSON "):])
    first_errors = [x[len("WRKERR "):] for x in out.stdout.splitlines() if x.startswith("WRKERR ")]
    n = max(1, w["requests"])
    if tracer is not None:
        counts = strace_counts(table)
        traced = {"upstream_syscalls_per_req": round(sum(counts.values()) / n, 2),
                  "upstream_epoll_per_req": round(counts.get("epoll_pwait", 0) / n, 2)}
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "rpc_errors"))
    return {
        "label": t.name, "era": era, "conns": conns, "threads": threads, "seconds": seconds,
        "rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
        "p50_ms": round(w["p50_us"] / 1000, 3), "p90_ms": round(w["p90_us"] / 1000, 3),
        "p99_ms": round(w["p99_us"] / 1000, 3), "max_ms": round(w["max_us"] / 1000, 3),
        "requests": w["requests"], "errors": errors, "wrk": w,
        "proxy_cpu_us": round((cpu1 - cpu0) / n * 1e6, 1),
        "upstream_cpu_us": round((up1 - up0) / n * 1e6, 1) if upstream else None,
        "proxy_cpu_util": round((cpu1 - cpu0) / wall, 3),
        "upstream_sleeps_per_req": round((sleeps1 - sleeps0) / n, 3),
        "procs": len(pids),
        "first_errors": first_errors,
        **traced,
    }


@contextlib.contextmanager
def bench(work: Path, base: Path | None = None) -> Iterator[Bench]:
    """The servers of one run, stopped on the way out."""
    with otlp_sink() as sink:
        b = Bench(work, sink, base)
        try:
            yield b
        finally:
            b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", default="1,4,16,64,256")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk per target before measuring")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eras", default="modern,legacy", help="modern, legacy, legacy1 (one session for all connections)")
    ap.add_argument("--strace-upstream", action="store_true", help="count the upstream's system calls per request (strace -c)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=None,
                    help="a source tree holding mcp_guard/ (targets base, base_full), e.g. "
                         "mkdir /tmp/base && git archive main mcp_guard | tar -x -C /tmp/base")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    if shutil.which("wrk") is None:
        raise SystemExit("serve_bench.py needs wrk (HTTP load generator): apt-get install -y wrk")
    names = [t for t in args.targets.split(",") if t]
    if "guard_redis2" in names and shutil.which("redis-server") is None:
        raise SystemExit("target guard_redis2 needs redis-server: apt-get install -y redis-server")
    out = (args.out or HERE / "results" / time.strftime("serve-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = (out / "results.jsonl").open("a")
    eras = [e for e in args.eras.split(",") if e]
    conns = [int(c) for c in args.conns.split(",") if c]
    meta = {"meta": True, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "load": os.getloadavg(), "rounds": args.rounds, "duration": args.duration, "targets": names,
            "eras": eras, "conns": conns}
    results.write(json.dumps(meta) + "\n")
    print(json.dumps(meta), file=sys.stderr)
    with bench(out, args.base.resolve() if args.base else None) as b:
        targets = b.start(names)
        for t in targets:
            for era in eras:
                if era.startswith("legacy") and t.name in MULTI:
                    continue
                run_wrk(b, t, era, 16, args.warmup)  # imports, caches, first exports
        for r in range(1, args.rounds + 1):
            for c in conns:
                for era in eras:
                    for t in targets:
                        if era.startswith("legacy") and t.name in MULTI:
                            continue
                        row = run_wrk(b, t, era, c, args.duration, args.strace_upstream)
                        row["round"] = r
                        row["load"] = round(os.getloadavg()[0], 2)
                        results.write(json.dumps(row) + "\n")
                        results.flush()
                        print(f"{time.strftime('%H:%M:%S')} r{r} c={c:<3} {era:6} {t.name:12} {row['rps']:8.1f} rps "
                              f"p50 {row['p50_ms']:7.2f} p99 {row['p99_ms']:8.2f} ms  cpu {row['proxy_cpu_us']:7.1f} us/req "
                              f"err {row['errors']}" + (f"  upstream cpu {row['upstream_cpu_us']} us/req" if row["upstream_cpu_us"] else "")
                              + f"  upstream sleeps {row['upstream_sleeps_per_req']}/req"
                              + (f" epoll {row['upstream_epoll_per_req']}/req" if "upstream_epoll_per_req" in row else ""), file=sys.stderr)
    results.close()
    print(f"raw: {out / 'results.jsonl'}", file=sys.stderr)
    subprocess.run([PY, str(HERE / "summarize.py"), "--serve", str(out / "results.jsonl")], check=False)


if __name__ == "__main__":
    main()
