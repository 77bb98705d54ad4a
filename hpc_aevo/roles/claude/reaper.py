"""Every process an agent session started ends with the session, even one the daemon did not see start.

The CLI runs Bash inside its own OS sandbox, which may start a new session or process group, and a
command can go to the background (`run_in_background`) or outlive a daemon killed with -9 (then
its parent is pid 1). A process tree or a process group therefore misses some of them. What they all
keep is the environment the CLI passed down: each session's CLI gets a marker variable of its own,
and at the session's end, and before its candidate goes on after a restart, every process of this
user whose environment carries the marker is killed. A process that clears its own environment on
purpose escapes this; the session's wall-clock cap still ends the CLI itself.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

MARKER = "HPC_AEVO_AGENT_SESSION"


def new_marker() -> str:
    return uuid.uuid4().hex


def marked(marker: str) -> list[int]:
    """Pids of this user's processes whose environment carries `marker` (never this process)."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def reap(marker: str, wait_s: float = 10.0) -> int:
    """SIGKILL every process carrying `marker`, again while any is still there (one forked during the scan,
    one not yet gone), until none is left or `wait_s` has passed; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s
    while True:
        pids = marked(marker)
        if not pids or time.monotonic() > deadline:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                continue
        time.sleep(0.05)
