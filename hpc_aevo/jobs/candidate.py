"""A candidate as the launcher sees it: its reference, where its files are and how its job runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import CandidateRef, StateTree


@dataclass
class Candidate:
    """One candidate as the launcher sees it: where its files are and how to run it."""

    round: int
    index: int
    tree: StateTree
    confine: str = "auto"  # scheduler.confine_jobs
    hidden: tuple[str, ...] = ()  # the campaign's files its jobs must not see, besides the state tree
    max_processes: int = 4096  # scheduler.max_processes

    @property
    def ref(self) -> CandidateRef:
        return CandidateRef(self.round, self.index)

    @property
    def key(self) -> str:
        return self.ref.key

    def manifest(self) -> CandidateManifest:
        return CandidateManifest.load(self.tree.manifest(self.round, self.index))

    def save(self, manifest: CandidateManifest) -> None:
        manifest.save(self.tree.manifest(self.round, self.index))

    def trace(self) -> Trace:
        return Trace(self.tree.trace(self.round, self.index))

    def spec(self, attempt: int) -> JobSpec:
        t, r, c = self.tree, self.round, self.index
        return JobSpec(key=self.key, attempt=attempt, sandbox=str(t.sandbox(r, c)), evaluator_dir=str(t.default_dir),
                       checkpoints=str(t.checkpoints(r, c)), eval_result=str(t.eval_result(r, c)),
                       jobs_dir=str(t.jobs(r, c)), hidden=(str(t.root), *self.hidden), confine=self.confine,
                       max_processes=self.max_processes)

    def submission_path(self, attempt: int) -> Path:
        return self.tree.attempt(self.round, self.index, attempt).submission
