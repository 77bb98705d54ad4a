"""The campaign's state tree: every path under the state root, named in one place.

All campaign state is files under one root on the shared filesystem, so a restarted daemon
rebuilds its view from them. Code asks the tree for a path instead of joining strings, which
keeps the layout in this one module. The tree also holds the campaign's identity record and
the lock that lets exactly one daemon drive it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import filelock

from .records import Record, RecordError

_ROUND_DIR = re.compile(r"r(\d{3,})")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StateTree:
    """Paths of a campaign's state tree under `root` (nothing is created here)."""

    def __init__(self, root: Path | str):
        self.root = Path(os.path.abspath(root))

    @property
    def default_dir(self) -> Path:
        """The installed, read-only substrate that every candidate forks."""
        return self.root / "default"

    @property
    def substrate_manifest(self) -> Path:
        return self.root / "default.manifest.json"

    @property
    def campaign_record(self) -> Path:
        return self.root / "campaign.json"

    @property
    def leaderboard_dir(self) -> Path:
        """Private: held-out data and the leaderboard ledger, outside every sandbox."""
        return self.root / "leaderboard"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def daemon_info(self) -> Path:
        return self.root / "daemon.json"

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"r{r:03d}"

    def policy(self, r: int) -> Path:
        """The policy that governs round r."""
        return self.round_dir(r) / "policy.json"

    def round_state(self, r: int) -> Path:
        return self.round_dir(r) / "round.json"

    def evidence_json(self, r: int) -> Path:
        return self.round_dir(r) / "evidence.json"

    def evidence_md(self, r: int) -> Path:
        return self.round_dir(r) / "evidence.md"

    def decision(self, r: int) -> Path:
        return self.round_dir(r) / "decision.json"

    def candidate_dir(self, r: int, c: int) -> Path:
        return self.round_dir(r) / f"cand-{c:02d}"

    def sandbox(self, r: int, c: int) -> Path:
        """The only directory the candidate's worker may write."""
        return self.candidate_dir(r, c) / "sandbox"

    def manifest(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "manifest.json"

    def trace(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "trace.jsonl"

    def checkpoints(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "checkpoints"

    def eval_result(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "eval.json"

    def jobs(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "jobs"

    def rounds(self) -> list[int]:
        """Numbers of the rounds that have a directory, ascending."""
        base = self.root / "rounds"
        if not base.is_dir():
            return []
        found = (_ROUND_DIR.fullmatch(p.name) for p in base.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)


@dataclass
class CampaignRecord(Record):
    """What this state tree was created for; lets a restart notice a swapped config or substrate."""

    SCHEMA = "hpc_aevo.campaign"
    VERSION = 1

    name: str
    campaign_file: str  # absolute path of the campaign YAML
    config_sha256: str  # of the YAML's bytes when the campaign was created
    substrate_sha256: str  # tree hash of the installed substrate
    constitution_sha256: str
    created_at: str  # ISO 8601, UTC


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
