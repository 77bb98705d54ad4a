"""The leaderboard scoring as a job stage: who a round scores, the job that scores each, and the check of
what it wrote before the daemon (and only the daemon) records it in the leaderboard's ledger.

After the round's dev evaluation the daemon chooses its candidates for the leaderboard (anchors first,
then by dev score, within `leaderboard.per_round` and what is left of the quota) and writes each choice,
with the file the eval stage selected and that file's hash, into the candidate's manifest. The launcher
then runs one score job per chosen candidate (on SLURM one array, `r<round>.score.<campaign>`), with the
crash safety, retries and compute charges of any other stage. The job sees that one file, the recipe,
the frozen evaluator and the held-out split, and scores the file only if its bytes still have the hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.launcher import JobState, Track
from hpc_aevo.jobs.spec import JobOutcome, JobSpec, ScoreInput
from hpc_aevo.scoring.leaderboard import Adapter, LeaderboardError
from hpc_aevo.scoring.results import leaderboard_order, read_eval_result, selected_file
from hpc_aevo.state.contract import RECIPE_FILE
from hpc_aevo.state.manifest import CandidateManifest, ScoreJob
from hpc_aevo.state.records import Record, atomic_write_text
from hpc_aevo.state.tree import AttemptFiles
from hpc_aevo.state.untrusted import UntrustedFile


def choose(candidates: list[Candidate], manifests: list[CandidateManifest], per_round: int,
           adapter: Adapter) -> list[CandidateManifest]:
    """Write the round's choice of candidates to score into their manifests (a choice once written stands:
    a restarted daemon makes the same one) and return the chosen. A candidate whose eval stage named no
    usable checkpoint is passed over, with the reason in its trace."""
    by_index = {c.index: c for c in candidates}
    left = adapter.quota - len(adapter.ledger().submissions) - sum(
        m.scoring is not None and m.scoring.status in ("chosen", "submitted") for m in manifests)
    chosen = []
    for manifest in leaderboard_order(manifests)[:per_round]:
        cand = by_index[manifest.candidate]
        if manifest.scoring is not None or manifest.measured.leaderboard is not None:  # the latter: scored in the
            chosen.append(manifest)  # daemon before the score stage existed (a state tree from then): no job
            continue
        if left <= 0:
            cand.trace().log("daemon", "leaderboard-refused",
                             reason=f"leaderboard quota of {adapter.quota} submissions is spent")
            continue
        checkpoints = cand.tree.checkpoints(cand.round, cand.index)
        try:
            selected = read_eval_result(cand.tree.eval_result(cand.round, cand.index)).selected_checkpoint
            path = selected_file(checkpoints, selected)
        except (LeaderboardError, FileNotFoundError, UntrustedFile) as exc:
            cand.trace().log("daemon", "leaderboard-refused", reason=str(exc))
            continue
        manifest.scoring = ScoreJob(str(path.relative_to(checkpoints)), selected.sha256, selected.step)
        cand.save(manifest)
        cand.trace().log("daemon", "leaderboard-chosen", checkpoint=manifest.scoring.checkpoint,
                         sha256=selected.sha256, step=selected.step)
        chosen.append(manifest)
        left -= 1
    return chosen


@dataclass
class LeaderboardScore(Record):
    """The candidate's leaderboard score as the daemon recorded it (jobs/leaderboard-score.json), whatever
    the adapter: what it scored (the selected export and its hash) and the numbers."""

    SCHEMA = "hpc_aevo.leaderboard_score"
    VERSION = 1

    candidate: str
    checkpoint: str
    checkpoint_sha256: str
    step: int
    score: float
    per_subset: dict[str, float]


def score_spec(cand: Candidate, attempt: int, score: ScoreInput | None) -> JobSpec:
    """Attempt `attempt` of the candidate's score job (`score` None: a dry run's, which renders but never runs)."""
    return dataclasses.replace(cand.spec(attempt), stages=("score",), score=score,
                               jobs_dir=str(cand.tree.score_jobs(cand.round, cand.index)))


class ScoreTrack(Track):
    """The launcher's view of score jobs: their state is the manifest's `scoring`, their attempts live in
    the candidate's jobs/score/, and a completed one is checked and recorded here."""

    stage, waiting, done, logged = "score", "chosen", "scored", ("score",)

    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    def state(self, manifest: CandidateManifest) -> JobState | None:
        return manifest.scoring

    def spec(self, cand: Candidate, manifest: CandidateManifest, attempt: int) -> JobSpec:
        scoring, tree = manifest.scoring, cand.tree
        spec = score_spec(cand, attempt, None)
        spec.score = self.adapter.score_input(tree.checkpoints(cand.round, cand.index) / scoring.checkpoint,
                                              scoring.sha256, tree.sandbox(cand.round, cand.index) / RECIPE_FILE,
                                              spec.files.out("score"))
        return spec

    def submission_path(self, cand: Candidate, attempt: int) -> Path:
        return AttemptFiles(cand.tree.score_jobs(cand.round, cand.index), attempt).submission

    def completed(self, cand: Candidate, manifest: CandidateManifest, outcome: JobOutcome) -> str:
        scoring = manifest.scoring
        out = score_spec(cand, scoring.attempts, None).files.out("score")
        try:
            entry = self.adapter.record(cand.key, out, scoring.checkpoint, scoring.sha256, scoring.step)
        except (LeaderboardError, FileNotFoundError, UntrustedFile) as exc:
            scoring.status, scoring.failure = "failed", str(exc)
            cand.trace().log("daemon", "leaderboard-refused", reason=str(exc))
            return f"{cand.key} leaderboard result refused: {exc}"
        atomic_write_text(cand.tree.leaderboard_score(cand.round, cand.index), LeaderboardScore(
            cand.key, scoring.checkpoint, scoring.sha256, entry.step, entry.score, dict(entry.per_domain)).to_json())
        scoring.status = "scored"
        manifest.measured.leaderboard = entry.score
        manifest.measured.leaderboard_per_domain = dict(entry.per_domain)
        cand.trace().log("daemon", "leaderboard-scored", score=entry.score, step=entry.step,
                         attempt=scoring.attempts, wall_s=round(sum(s.wall_s for s in outcome.stages), 1))
        return f"{cand.key} scored on the leaderboard: {entry.score:.3f} (attempt {scoring.attempts})"
