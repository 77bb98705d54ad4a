"""The external target: a held-out leaderboard the workers can neither read nor call.

The `heldout-puzzles` adapter draws the reference substrate's puzzles from a *shifted*
distribution (other input ranges, longer words, a disjoint pool of sequence templates), writes
the split into the state tree's private leaderboard directory, and scores a candidate's selected
checkpoint with the frozen evaluator of `default/`. Every submission is charged to a quota ledger
kept under a lock, and a candidate is scored at most once: re-asking returns the recorded score.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.state.contract import EVALUATOR
from hpc_aevo.state.records import Record, atomic_write_text, now_iso
from hpc_aevo.state.tree import StateTree

HELDOUT_PER_DOMAIN = 100


def heldout_params(puzzles) -> dict[str, dict]:
    """The shift: what the leaderboard asks that the training distribution does not show."""
    train_pool = set(puzzles.sequence_templates(pool_seed=1, size=40))
    every = puzzles.sequence_templates(pool_seed=2, size=31 * 9)
    unseen = random.Random(2).sample([t for t in every if t not in train_pool], 40)
    return {
        "bits": {"popcounts": (1, 2, 6, 7)},
        "equation": {"b_range": (21, 40)},
        "cipher": {"lengths": (5, 5)},
        "base": {"n_range": (100, 127)},
        "sequence": {"templates": sorted(unseen)},
    }


class LeaderboardError(RuntimeError):
    """The leaderboard refused a submission (quota spent) or could not score it."""


@dataclass
class LeaderboardEntry:
    candidate: str  # "r001/cand-02"
    checkpoint: str
    step: int
    score: float
    per_domain: dict[str, float]
    submitted_at: str
    checkpoint_sha256: str | None = None  # of the bytes scored (None in ledgers from before it was recorded)


@dataclass
class LeaderboardLedger(Record):
    SCHEMA = "hpc_aevo.leaderboard_ledger"
    VERSION = 1

    quota: int
    examples_per_domain: dict[str, int] = field(default_factory=dict)
    submissions: list[LeaderboardEntry] = field(default_factory=list)

    def find(self, candidate: str) -> LeaderboardEntry | None:
        return next((s for s in self.submissions if s.candidate == candidate), None)


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HeldoutPuzzles:
    """The `heldout-puzzles` adapter over the installed reference substrate."""

    def __init__(self, tree: StateTree, quota: int, seed: int):
        self.tree, self.quota, self.seed = tree, quota, seed
        self.split_file = tree.heldout_split
        self.ledger_file = tree.leaderboard_ledger

    def prepare(self) -> None:
        """Write the held-out split once (idempotent), outside every sandbox."""
        if self.split_file.exists() and self.ledger_file.exists():
            return
        puzzles = _load_module(self.tree.default_dir / "puzzles.py", "heldout_puzzles_source")
        params = heldout_params(puzzles)
        rows = [ex for d in puzzles.DOMAINS
                for ex in puzzles.generate(d, HELDOUT_PER_DOMAIN, 7_000_000 + self.seed, **params[d])]
        atomic_write_text(self.split_file, "".join(json.dumps(r) + "\n" for r in rows))
        counts = {d: HELDOUT_PER_DOMAIN for d in sorted(puzzles.DOMAINS)}
        LeaderboardLedger(quota=self.quota, examples_per_domain=counts).save(self.ledger_file)

    def ledger(self) -> LeaderboardLedger:
        return LeaderboardLedger.load(self.ledger_file)

    def submit(self, candidate: str, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> LeaderboardEntry:
        """Score `checkpoint` for `candidate` (the evaluator writes `out`), charged to the quota; a repeat
        returns the recorded score. The evaluator builds the model from the candidate's `recipe` and scores
        the file only if its bytes have `sha256` (what the dev evaluation scored); it must say it did."""
        done = self.ledger().find(candidate)
        if done is not None:
            return done
        if len(self.ledger().submissions) >= self.quota:
            raise LeaderboardError(f"leaderboard quota of {self.quota} submissions is spent; {candidate} not scored")
        proc = subprocess.run(
            [sys.executable, EVALUATOR, "--checkpoint", str(checkpoint), "--sha256", sha256, "--recipe", str(recipe),
             "--split-file", str(self.split_file), "--out", str(out)],
            cwd=self.tree.default_dir, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise LeaderboardError(f"scoring {candidate} failed: {proc.stderr.strip()[-500:]}")
        body = json.loads(out.read_text())
        if body.get("checkpoint_sha256") != sha256:
            raise LeaderboardError(f"scoring {candidate}: the evaluator scored sha256 {body.get('checkpoint_sha256')!r}, "
                                   f"not {sha256}")
        with LeaderboardLedger.locked_update(self.ledger_file, self.ledger()) as ledger:
            existing = ledger.find(candidate)
            if existing is not None:
                return existing
            submission = LeaderboardEntry(candidate, str(checkpoint), body["step"], body["score"], body["per_domain"],
                                          now_iso(), sha256)
            ledger.submissions.append(submission)
        return submission


ADAPTERS = {"heldout-puzzles": HeldoutPuzzles}
