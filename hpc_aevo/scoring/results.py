"""Measure: turn what the jobs wrote into the manifests' measured numbers.

Only this module and the score stage (`scoring/score_stage.py`) write `Measured`: their inputs are
the evaluation job's own eval.json, the trainer's train_summary.json and the leaderboard's checked
scores, never an agent's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hpc_aevo.scoring.leaderboard import LeaderboardError
from hpc_aevo.state.contract import TRAIN_SUMMARY
from hpc_aevo.state.manifest import CandidateManifest, CheckpointScore
from hpc_aevo.state.records import Record
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.untrusted import MIB, UntrustedFile, load_record, read_json, typed_fields


@dataclass
class SelectedCheckpoint:
    """The file the evaluator scored as the selected checkpoint: its path relative to the candidate's
    checkpoints directory, and the sha256 of the bytes it scored (the leaderboard scores only those)."""

    path: str
    sha256: str
    step: int


@dataclass
class EvalResult(Record):
    """The evaluator's eval.json (the substrate writes it; the toolkit validates it)."""

    SCHEMA = "hpc_aevo.eval_result"
    VERSION = 2
    OLDER_VERSIONS = (1,)  # an evaluator before selected_checkpoint: scores only, never submitted

    split: str
    selection_rule: str
    selected_step: int
    examples_per_domain: dict[str, int]
    checkpoints: list[CheckpointScore]
    wall_s: float = 0.0
    selected_checkpoint: SelectedCheckpoint | None = None

    def selected(self) -> CheckpointScore:
        return next(c for c in self.checkpoints if c.step == self.selected_step)


@dataclass
class TrainSummary:
    """What the toolkit takes from the trainer's train_summary.json (the candidate's code writes it)."""

    steps: int = 0
    final_loss: float | None = None
    wall_s: float | None = None
    expert_load: list[list[float]] = field(default_factory=list)  # a mixture of experts' router, per MoE layer


def read_eval_result(path: Path) -> EvalResult:
    """The eval stage's record, read as untrusted: the evaluator is frozen, the checkpoints it read are not."""
    return load_record(EvalResult, path, path.parent, 4 * MIB)


def read_train_summary(checkpoints_dir: Path) -> TrainSummary:
    """The trainer's summary (none: zeros), read as untrusted, with the types the manifest needs."""
    path = checkpoints_dir / TRAIN_SUMMARY
    try:
        data = read_json(path, checkpoints_dir, 4 * MIB)
    except FileNotFoundError:
        return TrainSummary()
    if not isinstance(data, dict):
        raise UntrustedFile(f"{path}: expected a JSON object (got {type(data).__name__})")
    summary = typed_fields(TrainSummary, data, path)
    for layer, shares in enumerate(summary.expert_load):
        if len(shares) < 2 or not all(0.0 <= share <= 1.0 for share in shares):
            raise UntrustedFile(f"{path}: expert_load[{layer}]: expected each expert's share of the routed tokens "
                                f"(0 to 1), at least 2 experts (got {shares[:8]!r})")
    return summary


def record_evaluation(manifest: CandidateManifest, eval_path: Path, checkpoints_dir: Path, trace: Trace) -> EvalResult | None:
    """Fill the manifest's dev numbers from the evaluator's record and the trainer's summary; a missing or
    bad one fails the candidate (with the reason in its manifest and trace), never the campaign."""
    try:
        result = read_eval_result(eval_path)
        chosen = result.selected()
        summary = read_train_summary(checkpoints_dir)
    except (FileNotFoundError, UntrustedFile, StopIteration) as exc:
        reason = f"no record of the selected step {result.selected_step}" if isinstance(exc, StopIteration) else exc
        manifest.status, manifest.failure = "failed", f"evaluation record unusable: {reason}"
        trace.log("daemon", "evaluation-invalid", error=str(reason))
        return None
    m = manifest.measured
    m.train_steps, m.final_loss, m.train_wall_s = summary.steps, summary.final_loss, summary.wall_s
    m.expert_load = summary.expert_load
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


def selected_file(checkpoints_dir: Path, selected: SelectedCheckpoint | None) -> Path:
    """The selected checkpoint's file inside the candidate's checkpoints directory, which its training
    wrote: a relative path, no '..', no symlink on the way, a regular file at the end."""
    if selected is None:
        raise LeaderboardError("eval.json names no selected_checkpoint (an evaluator before eval.json version 2): "
                               "re-evaluate the candidate to submit it")
    if not re.fullmatch(r"[0-9a-f]{64}", selected.sha256):
        raise LeaderboardError(f"eval.json selected_checkpoint.sha256: expected 64 hex digits (got {selected.sha256!r})")
    relative = PurePosixPath(selected.path)
    if relative.is_absolute() or not relative.parts or ".." in relative.parts:
        raise LeaderboardError(f"eval.json selected_checkpoint.path: expected a path inside {checkpoints_dir} "
                               f"(got {selected.path!r})")
    path = Path(checkpoints_dir)
    for part in relative.parts:
        path = path / part
        if path.is_symlink():
            raise LeaderboardError(f"{path}: is a symlink; the selected checkpoint must be a regular file")
    if not path.is_file():
        raise LeaderboardError(f"{path}: the selected checkpoint is not a regular file")
    return path
