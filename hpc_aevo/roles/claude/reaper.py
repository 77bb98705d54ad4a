"""Every process an agent session started ends with the session, even one the daemon did not see start.

A session's CLI runs in a pids cgroup of its own (`sandbox/pids.py`) and under `bwrap.powerless`, in a
pid namespace of its own that dies with the CLI or with the daemon (a daemon killed with -9 takes it
along). Neither depends on what a worker's commands do to themselves: one that clears its environment,
starts a new session or forks twice stays in the cgroup and in the namespace. At the session's end,
and before its candidate goes on after a restart, the cgroup is emptied with SIGKILL and removed. The
CLI and its launcher also carry a marker in their environment (set by the daemon, out of a worker's
reach): on a host without cgroups or user namespaces, killing them still ends the CLI itself.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from hpc_aevo.sandbox import pids

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
    """SIGKILL everything in the session's cgroup and every process carrying `marker`, again while any is
    still there (one forked during the scan, one not yet gone), until none is left or `wait_s` has passed;
    returns how many were killed."""
    killed = pids.Cap.existing(marker).close(wait_s)
    deadline = time.monotonic() + wait_s
    while True:
        found = marked(marker)
        if not found or time.monotonic() > deadline:
            return killed
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
        time.sleep(0.05)
