"""A cap on how many processes (threads count) a sandbox runs, and the one place that ends them all: a pids cgroup.

RLIMIT_NPROC does not bind uid 0, and a root daemon's sandboxes are uid 0 to the kernel (their user
namespaces map to it), so without this a fork bomb in a worker's Bash or smoke test meets no limit. A
cgroup's pids.max binds every user, and no process leaves its cgroup by clearing its environment,
starting a session or forking twice; every sandbox sees /sys read-only, so none can move itself out.
So killing what is in the cgroup ends everything the sandbox started. Where no pids cgroup can be made
(cgroup v2 without a delegated subtree, no write access), `Cap.why` says so in one line and nothing is
capped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "hpc-aevo-"
JOIN = 'echo $$ > "$0" && exec "$@"'  # sh: this shell into the cgroup, then exec the command (pid unchanged)


def _own_dir() -> Path:
    """This process's directory in the hierarchy that has the pids controller (v1, or v2 where it is enabled)."""
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, supers = fields[fields.index("-") + 1], fields[fields.index("-") + 3].split(",")
        root, mountpoint = fields[3], fields[4]
        if fstype == "cgroup" and "pids" in supers:
            path = next(p for c, p in own.items() if "pids" in c.split(","))
        elif fstype == "cgroup2" and "pids" in (Path(mountpoint) / "cgroup.controllers").read_text().split():
            path = own.get("", "/")
        else:
            continue
        return Path(mountpoint) / os.path.relpath(path, root)
    raise OSError("no cgroup hierarchy with the pids controller is mounted")


@dataclass
class Cap:
    """One sandbox's pids cgroup (`path` None: not capped, `why` says why)."""

    path: Path | None
    why: str | None = None

    @classmethod
    def create(cls, name: str, limit: int) -> "Cap":
        path = None
        try:
            path = _own_dir() / f"{PREFIX}{name}"
            path.mkdir(exist_ok=True)
            (path / "pids.max").write_text(str(limit))  # cgroup v2: only where pids is enabled for its children
        except (OSError, StopIteration) as exc:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.rmdir()
            return cls(None, f"process cap of {limit} not enforced: no pids cgroup can be made here ({exc})")
        return cls(path)

    @classmethod
    def existing(cls, name: str) -> "Cap":
        """The cgroup `create(name, ...)` made, if it is still there (a killed daemon's session left it)."""
        try:
            path = _own_dir() / f"{PREFIX}{name}"
        except (OSError, StopIteration) as exc:
            return cls(None, str(exc))
        return cls(path if path.is_dir() else None)

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` started inside the cgroup: it joins before it execs, so nothing of it runs outside."""
        return argv if self.path is None else ["sh", "-c", JOIN, str(self.path / "cgroup.procs"), *argv]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()] if self.path else []
        except FileNotFoundError:
            return []

    def close(self, wait_s: float = 10.0) -> int:
        """SIGKILL everything in the cgroup, again while anything is (a process forked during the kill), then
        remove it; how many processes were killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + wait_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    continue
            time.sleep(0.05)
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:  # gone already, or something unkillable is left: the next reap tries again
                pass
        return len(killed)
