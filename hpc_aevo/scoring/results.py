"""Measure: turn what the jobs wrote into the manifests' measured numbers, and score the leaderboard.

Only this module writes `Measured`: its inputs are the evaluation job's own eval.json, the
trainer's train_summary.json and the leaderboard adapter's scores, never an agent's text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardError
from hpc_aevo.state.contract import TRAIN_SUMMARY
from hpc_aevo.state.manifest import CandidateManifest, CheckpointScore
from hpc_aevo.state.records import Record, RecordError
from hpc_aevo.state.trace import Trace


@dataclass
class EvalResult(Record):
    """The evaluator's eval.json (the substrate writes it; the toolkit validates it)."""

    SCHEMA = "hpc_aevo.eval_result"
    VERSION = 1

    split: str
    selection_rule: str
    selected_step: int
    examples_per_domain: dict[str, int]
    checkpoints: list[CheckpointScore]
    wall_s: float = 0.0

    def selected(self) -> CheckpointScore:
        return next(c for c in self.checkpoints if c.step == self.selected_step)


def record_evaluation(manifest: CandidateManifest, eval_path: Path, checkpoints_dir: Path, trace: Trace) -> EvalResult | None:
    """Fill the manifest's dev numbers from the evaluator's record; a missing or bad record fails the candidate."""
    try:
        result = EvalResult.load(eval_path)
        chosen = result.selected()
    except (FileNotFoundError, RecordError, StopIteration) as exc:
        manifest.status, manifest.failure = "failed", f"evaluation record unusable: {exc}"
        trace.log("daemon", "evaluation-invalid", error=str(exc))
        return None
    summary_path = checkpoints_dir / TRAIN_SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    m = manifest.measured
    m.train_steps = int(summary.get("steps", 0))
    m.final_loss = summary.get("final_loss")
    m.train_wall_s = summary.get("wall_s")
    m.eval_wall_s = result.wall_s
    m.checkpoints = result.checkpoints
    m.selected_step = result.selected_step
    m.dev, m.dev_per_domain = chosen.dev, dict(chosen.per_domain)
    manifest.status = "evaluated"
    trace.log("daemon", "evaluated", dev=chosen.dev, selected_step=chosen.step, rule=result.selection_rule)
    return result


def leaderboard_order(manifests: list[CandidateManifest]) -> list[CandidateManifest]:
    """Who gets the round's submissions: anchors first (they measure the band), then by dev score."""
    evaluated = [m for m in manifests if m.status == "evaluated"]
    return sorted(evaluated, key=lambda m: (m.role != "anchor", -(m.measured.dev or 0.0), m.candidate))


def checkpoint_of_step(checkpoints_dir: Path, step: int) -> Path:
    """The trainer's checkpoint of `step`: a `ckpt-<step>.pt` file, or a distributed `ckpt-<step>/` directory."""
    single = checkpoints_dir / f"ckpt-{step:06d}.pt"
    return single if single.exists() or not (checkpoints_dir / f"ckpt-{step:06d}").is_dir() else single.with_suffix("")


def submit_to_leaderboard(adapter: HeldoutPuzzles, ref: str, manifest: CandidateManifest, checkpoints_dir: Path,
                          out: Path, trace: Trace) -> None:
    checkpoint = checkpoint_of_step(checkpoints_dir, manifest.measured.selected_step)
    try:
        submission = adapter.submit(ref, checkpoint, out)
    except LeaderboardError as exc:
        trace.log("daemon", "leaderboard-refused", reason=str(exc))
        return
    manifest.measured.leaderboard = submission.score
    manifest.measured.leaderboard_per_domain = dict(submission.per_domain)
    trace.log("daemon", "leaderboard-scored", score=submission.score, step=submission.step)


