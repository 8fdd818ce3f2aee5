"""A writer in its own OS process (run as a script by the crash and multi-writer tests).

    python auditproc.py PATH COUNT [MAX_BYTES] [FSYNC]   COUNT = 0: append until killed
Prints "ready" after the first record, then "done N" when COUNT records were written.
"""

from __future__ import annotations

import os
import sys

from mcp_guard.audit import AuditLog, args_hash


def main(path: str, count: int, max_bytes: int | None, fsync: bool) -> None:
    log = AuditLog(path, fsync=fsync, max_bytes=max_bytes)
    pid = os.getpid()
    i = 0
    while count == 0 or i < count:
        log.append({
            "session": f"pid-{pid}",
            "principal": ["user:alice@example.com", "agent:planner"],
            "upstream": "fs",
            "tool": "read_text_file",
            "args_sha256": args_hash({"path": f"/srv/tickets/{i}.md", "pad": "x" * (i % 200)}),
            "decision": "allow",
            "policy_ids": ["support-tickets"],
            "seq": i,
        })
        if i == 0:
            print("ready", flush=True)
        i += 1
    print(f"done {i}", flush=True)
    log.close()


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None,
        len(sys.argv) > 4 and sys.argv[4] == "fsync",
    )
