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

from hpc_aevo.state.contract import EVAL_RESULT, TRAIN_SUMMARY
from hpc_aevo.state.records import Record

_ROUND_DIR = re.compile(r"r(\d{3,})")
_CANDIDATE_KEY = re.compile(r"r(\d{3,})/cand-(\d{2,})")

REPORT_FIGURES = ("trajectory", "dev_vs_leaderboard", "per_subset", "compute")  # report/<name>.png
RECIPE_MARKER = "recipe.sha256"  # in checkpoints/: the recipe they were trained from, so a changed recipe restarts


@dataclass(frozen=True, order=True)
class CandidateRef:
    """One candidate of one round. Its key ("r003/cand-02") names it in records, job names, logs and
    the policy's standing source; its name ("cand-02") is its directory under the round."""

    round: int
    index: int

    @property
    def name(self) -> str:
        return f"cand-{self.index:02d}"

    @property
    def key(self) -> str:
        return f"r{self.round:03d}/{self.name}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, key: str) -> CandidateRef:
        match = _CANDIDATE_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"not a candidate key (rNNN/cand-NN): {key!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def named(cls, rnd: int, name: str) -> CandidateRef:
        """The candidate called `name` ("cand-02") in round `rnd`."""
        return cls.parse(f"r{rnd:03d}/{name}")


@dataclass(frozen=True)
class AttemptFiles:
    """The files of one attempt of a candidate's job, in its `jobs/` directory.

    A plain value over a directory, so that the job (which gets only paths, pickled) and the daemon
    name the same files. Train-only and eval-only tasks (SLURM's two arrays) have their own claim
    and outcome; the local job runs both stages under the attempt's.
    """

    jobs_dir: Path
    attempt: int

    def _file(self, suffix: str) -> Path:
        return Path(self.jobs_dir) / f"attempt-{self.attempt}{suffix}"

    @property
    def submission(self) -> Path:
        """The daemon's intent, then its record of the submitted job."""
        return self._file(".json")

    def claim(self, stage: str | None = None) -> Path:
        """The O_EXCL claim of the attempt (stage None or "train") or of its eval-only task."""
        return self._file(".eval.claim" if stage == "eval" else ".claim")

    def outcome(self, stage: str | None = None) -> Path:
        """The attempt's outcome (stage None or "eval"), or the train-only task's own."""
        return self._file(".train.outcome.json" if stage == "train" else ".outcome.json")

    def log(self, stage: str) -> Path:
        return self._file(f".{stage}.log")

    def rank_log(self, rank: int) -> Path:
        """The log of one rank of a multi-node training task."""
        return self._file(f".train.rank{rank}.log")

    def out(self, stage: str) -> Path:
        """The one writable directory of an evaluating stage (eval, score): the evaluator writes its result
        there, and the job (eval) or the daemon (score) takes it from there once it is checked."""
        return self._file(f".{stage}-out")

    @property
    def submitit_dir(self) -> Path:
        """submitit's pickles and logs of the local backend's jobs."""
        return Path(self.jobs_dir) / "submitit"


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
    def heldout_split(self) -> Path:
        """The held-out rows with their answers (heldout-puzzles, jsonl): the daemon's, a score job's for puzzles."""
        return self.leaderboard_dir / "heldout.jsonl"

    @property
    def heldout_prompts(self) -> Path:
        """The jsonl leaderboard's prompts without their answers: what its score jobs see."""
        return self.leaderboard_dir / "prompts.jsonl"

    @property
    def leaderboard_data(self) -> Path:
        """The command leaderboard's data, copied in under its own name: what its score jobs see."""
        return self.leaderboard_dir / "data"

    @property
    def leaderboard_ledger(self) -> Path:
        """Submissions to the leaderboard, charged to the quota."""
        return self.leaderboard_dir / "ledger.json"

    @property
    def compute_ledger(self) -> Path:
        """GPU- and CPU-hours of every scheduler task."""
        return self.root / "ledger.json"

    @property
    def campaign_trace(self) -> Path:
        """The daemon's campaign-wide events: the edits of the campaign file it applied."""
        return self.root / "trace.jsonl"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def daemon_info(self) -> Path:
        return self.root / "daemon.json"

    @property
    def report_dir(self) -> Path:
        """`python -m hpc_aevo.report`'s output, refreshed by the daemon at the end of every round."""
        return self.root / "report"

    @property
    def report_record(self) -> Path:
        return self.report_dir / "report.json"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def report_figures(self) -> dict[str, Path]:
        """The report's PNG figures, by name."""
        return {name: self.report_dir / f"{name}.png" for name in REPORT_FIGURES}

    @property
    def campaign_tensorboard(self) -> Path:
        """The campaign-level TensorBoard run: per-round scores, band and compute."""
        return self.report_dir / "campaign"

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

    def slurm_dir(self, r: int) -> Path:
        """submitit's pickles and logs of the round's SLURM arrays."""
        return self.round_dir(r) / "slurm"

    def agents_dir(self, r: int) -> Path:
        """The round's agent session records (claude backend)."""
        return self.round_dir(r) / "agents"

    def agents_trace(self, r: int) -> Path:
        """The round's collector and meta sessions' trace."""
        return self.agents_dir(r) / "trace.jsonl"

    def agent_home(self, r: int, who: str) -> Path:
        """A session's CLI home (config, transcripts)."""
        return self.agents_dir(r) / "home" / who

    def agent_record(self, r: int, who: str, role: str, n: int) -> Path:
        """The n-th session record of `who` in `role` this round."""
        return self.agents_dir(r) / f"{who}.{role}.{n}.json"

    def agent_records(self, r: int, who: str = "*", role: str = "*") -> list[Path]:
        """The round's session records (of `who` in `role`, or all), oldest first per who and role."""
        found = self.agents_dir(r).glob(f"{who}.{role}.*.json")
        return sorted(found, key=lambda p: (p.stem.rsplit(".", 1)[0], int(p.stem.rsplit(".", 1)[1])))

    def candidate_dir(self, r: int, c: int) -> Path:
        return self.round_dir(r) / CandidateRef(r, c).name

    def sandbox(self, r: int, c: int) -> Path:
        """The only directory the candidate's worker may write."""
        return self.candidate_dir(r, c) / "sandbox"

    def manifest(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "manifest.json"

    def trace(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "trace.jsonl"

    def checkpoints(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "checkpoints"

    def train_summary(self, r: int, c: int) -> Path:
        return self.checkpoints(r, c) / TRAIN_SUMMARY

    def eval_result(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / EVAL_RESULT

    def tensorboard(self, r: int, c: int) -> Path:
        """The candidate's TensorBoard run (training metrics, dev scores per checkpoint), written by the report."""
        return self.candidate_dir(r, c) / "tensorboard"

    def jobs(self, r: int, c: int) -> Path:
        return self.candidate_dir(r, c) / "jobs"

    def attempt(self, r: int, c: int, n: int) -> AttemptFiles:
        return AttemptFiles(self.jobs(r, c), n)

    def score_jobs(self, r: int, c: int) -> Path:
        """The attempts of the candidate's leaderboard scoring job (numbered apart from its training's)."""
        return self.jobs(r, c) / "score"

    def leaderboard_score(self, r: int, c: int) -> Path:
        """The evaluator's output when the leaderboard scored this candidate, once the daemon checked it."""
        return self.jobs(r, c) / "leaderboard-score.json"

    def candidate_manifests(self, r: int) -> list[Path]:
        """The manifests of the round's forked candidates, in candidate order."""
        return sorted(self.round_dir(r).glob("cand-*/manifest.json"))

    def rounds(self) -> list[int]:
        """Numbers of the rounds that have a directory, ascending."""
        base = self.root / "rounds"
        if not base.is_dir():
            return []
        found = (_ROUND_DIR.fullmatch(p.name) for p in base.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)


def attempt_logs(jobs_dir: Path) -> list[Path]:
    """Every stage log of every attempt in a candidate's jobs/ directory, in name order."""
    return sorted(Path(jobs_dir).glob("attempt-*.log"))


def attempt_outcomes(jobs_dir: Path) -> list[Path]:
    """Every outcome record of every attempt in a candidate's jobs/ directory, in name order."""
    return sorted(Path(jobs_dir).glob("attempt-*.outcome.json"))


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
