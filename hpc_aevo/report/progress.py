"""How far each running task is: step of total, last loss, tokens/s and an ETA, from the job's own files.

Why from files only: `status` must be safe to run every few seconds on a login node while hundreds of
tasks run, so it never asks the scheduler. A task's attempt files say where it is (no claim yet: queued;
a claim: started; an eval log or eval claim: evaluating; an outcome: ended, the daemon has yet to
notice), and the newest metric lines of its train log say how far training got. The ETA covers the
training steps left, at the pace of the trainer's own loop clock over the lines read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from hpc_aevo.report.metrics import latest_metrics, recipe_shape
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.tree import CandidateRef, StateTree

Stage = Literal["queued", "train", "eval", "ended"]


@dataclass
class TaskProgress:
    candidate: str  # "r001/cand-02"
    attempt: int
    stage: Stage
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None  # seconds of training left, at the recent pace
    log_age_s: float | None = None  # since the train log last grew (a stuck task stops growing it)


def _stage(tree: StateTree, rnd: int, c: int, attempt: int) -> Stage:
    files = tree.attempt(rnd, c, attempt)
    if files.outcome().exists():
        return "ended"
    if files.claim("eval").exists() or files.log("eval").exists():
        return "eval"
    return "train" if files.claim().exists() else "queued"


def task_progress(tree: StateTree, manifest: CandidateManifest) -> TaskProgress | None:
    """The progress of a submitted candidate's latest attempt; None for one not submitted (or already past it)."""
    if manifest.status != "submitted" or manifest.attempts < 1:
        return None
    rnd, c, attempt = manifest.round, manifest.candidate, manifest.attempts
    shape = recipe_shape(tree, rnd, c)
    progress = TaskProgress(CandidateRef(rnd, c).key, attempt, _stage(tree, rnd, c, attempt), total=shape.total_steps)
    log = tree.attempt(rnd, c, attempt).log("train")
    points = latest_metrics(log, shape.tokens_per_step)
    if not points:
        return progress
    last = points[-1]
    progress.step, progress.loss, progress.tokens_per_s = last.step, last.loss, last.tokens_per_s
    progress.log_age_s = max(0.0, time.time() - log.lstat().st_mtime)
    first = points[0] if len(points) > 1 else None
    if first is not None and first.loop_s is not None and last.loop_s is not None and last.step > first.step:
        per_step = (last.loop_s - first.loop_s) / (last.step - first.step)
    else:
        per_step = last.loop_s / last.step if last.loop_s is not None and last.step > 0 else None
    if per_step is not None and shape.total_steps is not None and progress.stage == "train":
        progress.eta_s = max(0, shape.total_steps - last.step) * per_step
    return progress


def duration(seconds: float | None) -> str:
    """A duration for people: 45s, 12m05s, 3h20m."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(p: TaskProgress) -> str:
    """One line: 'r001/cand-02 #1 train step 75/100 (75%), loss 1.250, 64 tok/s, ETA 13s'."""
    head = f"{p.candidate} #{p.attempt} {p.stage}"
    if p.stage == "queued":
        return f"{head} (waiting for the scheduler to start it)"
    if p.step is None:
        return f"{head}, no metric line yet"
    total = f"/{p.total} ({100 * p.step // p.total}%)" if p.total else ""
    parts = [f"{head} step {p.step}{total}", f"loss {p.loss:.3f}"]
    if p.tokens_per_s is not None:
        parts.append(f"{p.tokens_per_s:,.0f} tok/s")
    if p.stage == "train":
        parts.append(f"ETA {duration(p.eta_s)}")
    if p.log_age_s is not None and p.log_age_s >= 60:
        parts.append(f"last line {duration(p.log_age_s)} ago")
    return ", ".join(parts)


def stage_progress(tree: StateTree, manifests: list[CandidateManifest], stage: str, elapsed_s: float) -> str:
    """The daemon's one line while a long stage runs: 'train 6m05s: 2 training (cand-01 75/100 loss 1.250,
    cand-03 40/100 loss 1.310; ETA 3m10s), 1 evaluating, 1 queued, 3 done, 1 failed'."""
    counts: dict[str, int] = {}
    training, etas = [], []
    for m in manifests:
        if stage == "score":
            what = "done" if m.measured.leaderboard is not None else (
                {"submitted": "scoring", "failed": "failed"}.get(m.scoring.status, "") if m.scoring else "")
        elif m.status == "failed":
            what = "failed"
        elif m.status in ("trained", "evaluated"):
            what = "done"
        elif m.status == "proposed":
            what = "waiting"  # for a free slot (max_parallel) or a retry's submission
        elif (p := task_progress(tree, m)) is None:
            what = ""
        else:
            what = {"queued": "queued", "train": "training", "eval": "evaluating", "ended": "ending"}[p.stage]
            if p.stage == "train" and p.step is not None:
                training.append(f"{m.name} {p.step}/{p.total or '?'} loss {p.loss:.3f}")
                etas += [p.eta_s] if p.eta_s is not None else []
        if what:
            counts[what] = counts.get(what, 0) + 1
    parts = []
    for what in ("training", "evaluating", "scoring", "ending", "queued", "waiting", "done", "failed"):
        if what not in counts:
            continue
        detail = "; ".join(filter(None, [", ".join(training), f"ETA {duration(max(etas))}" if etas else ""]))
        parts.append(f"{counts[what]} {what}" + (f" ({detail})" if what == "training" and detail else ""))
    return f"{stage} {duration(elapsed_s)}: {', '.join(parts) or 'nothing in flight'}"
