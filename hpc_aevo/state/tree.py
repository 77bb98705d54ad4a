"""The campaign's state tree: every path under the state root, named in one place.

All campaign state is files under one root on the shared filesystem, so a restarted daemon
rebuilds its view from them. Code asks the tree for a path instead of joining strings, which
keeps the layout in this one module. The campaign's identity record lives here too; the lock
that lets exactly one daemon drive it is in `lock.py`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.state.records import Record

_ROUND_DIR = re.compile(r"r(\d{3,})")




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






