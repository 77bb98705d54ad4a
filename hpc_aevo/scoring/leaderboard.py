"""The external target: a held-out leaderboard the workers can neither read nor call.

The `heldout-puzzles` adapter draws the reference substrate's puzzles from a *shifted*
distribution (other input ranges, longer words, a disjoint pool of sequence templates) and writes
the split into the state tree's private leaderboard directory. The frozen evaluator of `default/`
scores a candidate's selected checkpoint on it in a confined score job (`scoring/score_stage.py`);
the adapter checks what that job wrote and records it. Every score is charged to a quota ledger
kept under a lock, which only the daemon writes, and a candidate is recorded at most once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.state.records import Record, atomic_write_text, now_iso
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.untrusted import MIB, load_record

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
    """The leaderboard refused a submission (quota spent, a selected checkpoint it cannot take) or its result."""


@dataclass
class SplitScore(Record):
    """The evaluator's score.json: one checkpoint scored on a split (written in the score job)."""

    SCHEMA = "hpc_aevo.split_score"
    VERSION = 2

    checkpoint: str | None
    checkpoint_sha256: str | None
    step: int
    score: float
    per_domain: dict[str, float]
    examples_per_domain: dict[str, int]


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

    def check(self, result: Path, checkpoint: str, sha256: str, step: int) -> SplitScore:
        """The score job's result, read as untrusted and held to what was asked: this checkpoint's bytes,
        its step, every domain of the held-out split at its full size, scores that are fractions."""
        score = load_record(SplitScore, result, result.parent, MIB)
        expected = self.ledger().examples_per_domain
        problems = [
            f"it scored sha256 {score.checkpoint_sha256!r}, not {sha256}" if score.checkpoint_sha256 != sha256 else "",
            f"it scored step {score.step}, not {step}" if score.step != step else "",
            f"it counted examples {score.examples_per_domain}, not the split's {expected}"
            if score.examples_per_domain != expected else "",
            f"its domains {sorted(score.per_domain)} are not the split's {sorted(expected)}"
            if sorted(score.per_domain) != sorted(expected) else "",
            "a score outside [0, 1]" if not all(0.0 <= v <= 1.0 and math.isfinite(v)
                                               for v in (score.score, *score.per_domain.values())) else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise LeaderboardError(f"{result}: refused ({'; '.join(problems)}); checkpoint {checkpoint}")
        return score

    def record(self, candidate: str, result: Path, checkpoint: str, sha256: str, step: int) -> LeaderboardEntry:
        """Check the score job's `result` for `candidate` and record it, charged to the quota; a repeat
        returns the recorded score (a daemon restarted after recording finds it here)."""
        done = self.ledger().find(candidate)
        if done is not None:
            return done
        score = self.check(result, checkpoint, sha256, step)
        with LeaderboardLedger.locked_update(self.ledger_file, self.ledger()) as ledger:
            existing = ledger.find(candidate)
            if existing is not None:
                return existing
            if len(ledger.submissions) >= self.quota:
                raise LeaderboardError(f"leaderboard quota of {self.quota} submissions is spent; {candidate} not recorded")
            entry = LeaderboardEntry(candidate, checkpoint, score.step, score.score, dict(score.per_domain), now_iso(),
                                     sha256)
            ledger.submissions.append(entry)
        return entry


ADAPTERS = {"heldout-puzzles": HeldoutPuzzles}
