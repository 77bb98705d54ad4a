"""The external target: a held-out leaderboard the workers can neither read nor call.

An adapter keeps its data in the state tree's private leaderboard directory, says what a candidate's
confined score job runs on it (`scoring/score_stage.py`), and turns what that job wrote into a score
and per-subset scores once it has checked it. Every score is charged to a quota ledger kept under a
lock, which only the daemon writes, and a candidate is recorded at most once.

The `heldout-puzzles` adapter draws the reference substrate's puzzles from a *shifted* distribution
(other input ranges, longer words, a disjoint pool of sequence templates); the frozen evaluator of
`default/` scores the selected checkpoint on it. `scoring/adapters.py` has a team's own benchmarks.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.jobs.spec import ScoreInput
from hpc_aevo.state.contract import SCORE_RESULT
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


class Adapter(abc.ABC):
    """A leaderboard: its private data, the command a score job runs on it, and the check of what it wrote."""

    def __init__(self, tree: StateTree, quota: int):
        self.tree, self.quota = tree, quota
        self.ledger_file = tree.leaderboard_ledger

    @abc.abstractmethod
    def data_files(self) -> list[Path]:
        """The held-out data `prepare` wrote: what every recorded score was measured on."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Write the held-out data into the private leaderboard directory and the ledger, once (idempotent)."""

    @abc.abstractmethod
    def score_input(self, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> ScoreInput:
        """What the score job runs to score `checkpoint` (the candidate's `recipe` beside it), writing into `out`."""

    @abc.abstractmethod
    def result(self, out: Path, sha256: str, step: int) -> tuple[float, dict[str, float]]:
        """(score, per-subset scores) of what a score job wrote into `out`, read as untrusted and held to
        what was asked; LeaderboardError (or UntrustedFile) when it is not that."""

    def ledger(self) -> LeaderboardLedger:
        return LeaderboardLedger.load(self.ledger_file)

    def record(self, candidate: str, out: Path, checkpoint: str, sha256: str, step: int) -> LeaderboardEntry:
        """Check the score job's output `out` for `candidate` and record it, charged to the quota; a repeat
        returns the recorded score (a daemon restarted after recording finds it here)."""
        done = self.ledger().find(candidate)
        if done is not None:
            return done
        score, per_subset = self.result(out, sha256, step)
        expected = self.ledger().examples_per_domain
        problems = [f"its subsets {sorted(per_subset)} are not the split's {sorted(expected)}"
                    if sorted(per_subset) != sorted(expected) else "",
                    "a score outside [0, 1]" if not all(0.0 <= v <= 1.0 and math.isfinite(v)
                                                       for v in (score, *per_subset.values())) else ""]
        if any(problems):
            raise LeaderboardError(f"{out}: refused ({'; '.join(p for p in problems if p)}); checkpoint {checkpoint}")
        with LeaderboardLedger.locked_update(self.ledger_file, self.ledger()) as ledger:
            existing = ledger.find(candidate)
            if existing is not None:
                return existing
            if len(ledger.submissions) >= self.quota:
                raise LeaderboardError(f"leaderboard quota of {self.quota} submissions is spent; {candidate} not recorded")
            entry = LeaderboardEntry(candidate, checkpoint, step, score, per_subset, now_iso(), sha256)
            ledger.submissions.append(entry)
        return entry


def evaluator_input(checkpoint: Path, sha256: str, recipe: Path, split: Path, *mode: str) -> ScoreInput:
    """A score job that runs the frozen evaluator on `checkpoint` (refused unless its bytes have `sha256`) over
    `split`, which it sees read-only: `mode` says what to write (`--out FILE` scores, `--predictions FILE` answers)."""
    return ScoreInput(str(checkpoint), sha256, ("--checkpoint", str(checkpoint), "--sha256", sha256, "--recipe",
                                                str(recipe), *mode), views=(str(split),))


class HeldoutPuzzles(Adapter):
    """The `heldout-puzzles` adapter over the installed reference substrate: `per_domain` puzzles of each domain
    (the first 100 are the same in every size, so a larger split extends the default one)."""

    def __init__(self, tree: StateTree, quota: int, seed: int, per_domain: int = HELDOUT_PER_DOMAIN):
        super().__init__(tree, quota)
        self.seed, self.per_domain = seed, per_domain
        self.split_file = tree.heldout_split

    def data_files(self) -> list[Path]:
        return [self.split_file]

    def prepare(self) -> None:
        """Write the held-out split once (idempotent), outside every sandbox; a campaign that asks another size
        later is refused, since its earlier scores were on this split."""
        if self.split_file.exists() and self.ledger_file.exists():
            drawn = set(self.ledger().examples_per_domain.values())
            if drawn != {self.per_domain}:
                raise LeaderboardError(f"{self.split_file}: drawn with {sorted(drawn)} puzzles per domain, but the "
                                       f"campaign asks leaderboard.examples_per_domain {self.per_domain}; its earlier "
                                       f"scores are on the drawn split (keep its size, or start a new state_root)")
            return
        puzzles = _load_module(self.tree.default_dir / "puzzles.py", "heldout_puzzles_source")
        params = heldout_params(puzzles)
        rows = [ex for d in puzzles.DOMAINS
                for ex in puzzles.generate(d, self.per_domain, 7_000_000 + self.seed, **params[d])]
        atomic_write_text(self.split_file, "".join(json.dumps(r) + "\n" for r in rows))
        counts = {d: self.per_domain for d in sorted(puzzles.DOMAINS)}
        LeaderboardLedger(quota=self.quota, examples_per_domain=counts).save(self.ledger_file)

    def score_input(self, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> ScoreInput:
        return evaluator_input(checkpoint, sha256, recipe, self.split_file,
                               "--split-file", str(self.split_file), "--out", str(out / SCORE_RESULT))

    def result(self, out: Path, sha256: str, step: int) -> tuple[float, dict[str, float]]:
        """The evaluator's score.json, held to this checkpoint's bytes, its step and the split's full size."""
        path = out / SCORE_RESULT
        score = load_record(SplitScore, path, out, MIB)
        expected = self.ledger().examples_per_domain
        problems = [
            f"it scored sha256 {score.checkpoint_sha256!r}, not {sha256}" if score.checkpoint_sha256 != sha256 else "",
            f"it scored step {score.step}, not {step}" if score.step != step else "",
            f"it counted examples {score.examples_per_domain}, not the split's {expected}"
            if score.examples_per_domain != expected else "",
        ]
        if any(problems):
            raise LeaderboardError(f"{path}: refused ({'; '.join(p for p in problems if p)})")
        return score.score, dict(score.per_domain)
