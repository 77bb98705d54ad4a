"""The daemon lock: exactly one daemon drives a campaign, and a refused one is told whom to stop."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

import filelock

from hpc_aevo.state.records import Record, RecordError, now_iso
from hpc_aevo.state.tree import StateTree


@dataclass
class DaemonInfo(Record):
    """Who holds the daemon lock, so a refused second daemon can say whom to stop."""

    SCHEMA = "hpc_aevo.daemon"
    VERSION = 1

    pid: int
    host: str
    started_at: str  # ISO 8601, UTC


class CampaignBusy(RuntimeError):
    """Another live daemon drives this campaign."""


class DaemonLock:
    """Exactly one daemon per campaign: a non-blocking flock on root/daemon.lock.

    flock is held by the kernel for the open file, so it is released when the holder dies,
    even by SIGKILL, and a restarted daemon is never refused by a stale lock. A filesystem
    without flock is refused rather than served by a marker file that would outlive its owner.
    """

    def __init__(self, tree: StateTree):
        self.tree = tree
        self._lock = filelock.FileLock(str(tree.daemon_lock), fallback_to_soft=False)

    def _holder(self) -> str:
        try:
            info = DaemonInfo.load_or_none(self.tree.daemon_info)
        except RecordError:
            info = None
        if info is None:
            return "another daemon (it has not written daemon.json yet)"
        return f"pid {info.pid} on host {info.host} since {info.started_at}"

    def __enter__(self) -> DaemonInfo:
        self.tree.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            message = f"campaign {self.tree.root} is already driven by {self._holder()}; stop it first"
            raise CampaignBusy(message) from None
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            raise RuntimeError(f"campaign {self.tree.root}: its filesystem does not support flock, "
                               "which the daemon lock needs (mount it with flock, e.g. Lustre -o flock)") from None
        info = DaemonInfo(pid=os.getpid(), host=socket.gethostname(), started_at=now_iso())
        info.save(self.tree.daemon_info)
        return info

    def __exit__(self, *exc_info: object) -> None:
        self.tree.daemon_info.unlink(missing_ok=True)
        self._lock.release()
