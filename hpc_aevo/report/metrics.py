"""The training metrics a job prints: the trainer's JSON lines in its stage log, read as untrusted.

Why from the log: the trainer already prints one JSON line per `logging.every` steps (step, loss, lr,
loop_s; grad_norm, tokens or tokens_per_s if a trainer adds them), and the job appends its stdout to
`jobs/attempt-N.train.log`. Reading those lines keeps the trainer free of any TensorBoard or tracking
dependency and needs no scheduler call. The candidate's code wrote them, so each file goes through
`state/untrusted.py` (regular file, inside its directory, size-capped) and each line is checked for
types and finite numbers; anything else on a line is skipped, never trusted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.state.contract import MAX_RECIPE_BYTES, RECIPE_FILE
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.untrusted import KIB, MIB, UntrustedFile, read_bytes, read_tail, read_yaml_mapping

LOG_LIMIT = 64 * MIB  # a whole train log, for the TensorBoard run
TAIL_LIMIT = 64 * KIB  # the newest lines of a running task's log, for status


@dataclass
class MetricPoint:
    step: int
    loss: float
    lr: float | None = None
    loop_s: float | None = None  # training-loop seconds so far (the trainer's own clock, resumes included)
    grad_norm: float | None = None
    tokens_per_s: float | None = None  # printed, or derived from loop_s and the recipe's tokens per step


@dataclass
class RecipeShape:
    """What progress needs from the candidate's recipe: how many steps, and how many tokens a step."""

    total_steps: int | None = None
    tokens_per_step: int | None = None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_metric_lines(text: str) -> list[MetricPoint]:
    """Every line that is a JSON object with an integer `step` and a finite `loss`, in order."""
    points = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line, parse_constant=lambda name: None)  # NaN and Infinity read as missing
        except ValueError:
            continue
        if not isinstance(entry, dict) or isinstance(entry.get("step"), bool) or not isinstance(entry.get("step"), int):
            continue
        loss = _number(entry.get("loss"))
        if loss is None:
            continue
        points.append(MetricPoint(step=entry["step"], loss=loss, lr=_number(entry.get("lr")),
                                  loop_s=_number(entry.get("loop_s")), grad_norm=_number(entry.get("grad_norm")),
                                  tokens_per_s=_number(entry.get("tokens_per_s"))))
    return points


def recipe_shape(tree: StateTree, rnd: int, c: int) -> RecipeShape:
    """optim.steps and optim.batch_size x (model.seq_len - 1) from the sandbox recipe; None where unreadable."""
    sandbox = tree.sandbox(rnd, c)
    try:
        recipe = read_yaml_mapping(sandbox / RECIPE_FILE, sandbox, MAX_RECIPE_BYTES)
    except (FileNotFoundError, UntrustedFile):
        return RecipeShape()
    optim, model = recipe.get("optim"), recipe.get("model")
    optim, model = (optim if isinstance(optim, dict) else {}), (model if isinstance(model, dict) else {})
    ints = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
            for v in (optim.get("steps"), optim.get("batch_size"), model.get("seq_len"))]
    steps, batch, seq_len = ints
    return RecipeShape(steps, batch * (seq_len - 1) if batch and seq_len and seq_len > 1 else None)


def with_throughput(points: list[MetricPoint], tokens_per_step: int | None) -> list[MetricPoint]:
    """Fill tokens/s between consecutive lines where the trainer did not print it (a resume restarts the pairs)."""
    for before, after in zip(points, points[1:]):
        if after.tokens_per_s is not None or tokens_per_step is None or before.loop_s is None or after.loop_s is None:
            continue
        steps, seconds = after.step - before.step, after.loop_s - before.loop_s
        if steps > 0 and seconds > 0:
            after.tokens_per_s = steps * tokens_per_step / seconds
    return points


def candidate_metrics(tree: StateTree, rnd: int, c: int, attempts: int) -> list[MetricPoint]:
    """The candidate's training curve over all its attempts, a later attempt's line replacing an earlier one's
    at the same step (a retry that trains again, or a resume that repeats steps); unreadable logs are skipped."""
    by_step: dict[int, MetricPoint] = {}
    shape = recipe_shape(tree, rnd, c)
    for n in range(1, attempts + 1):
        log = tree.attempt(rnd, c, n).log("train")
        try:
            text = read_bytes(log, log.parent, LOG_LIMIT).decode("utf-8", errors="replace")
        except (FileNotFoundError, UntrustedFile):
            continue
        for point in with_throughput(parse_metric_lines(text), shape.tokens_per_step):
            by_step[point.step] = point
    return [by_step[s] for s in sorted(by_step)]


def latest_metrics(log: Path, tokens_per_step: int | None) -> list[MetricPoint]:
    """The metric lines in the newest part of a running task's log (its first line may be cut: skipped)."""
    try:
        text = read_tail(log, log.parent, TAIL_LIMIT).decode("utf-8", errors="replace")
    except (FileNotFoundError, UntrustedFile):
        return []
    return with_throughput(parse_metric_lines(text), tokens_per_step)
