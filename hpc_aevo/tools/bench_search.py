"""Is the loop worth its budget? The campaign loop against Optuna's TPE and random search, at equal candidates.

    python -m hpc_aevo.bench search [--campaign campaigns/demo.yaml] [--seeds 3] [--rounds R] [--jobs 2]
                                    [--quick] [--out bench-search.json] [--resume]

Why: the question a team asks before spending a cluster on this is whether the loop finds better recipes
than the hyper-parameter search it already runs, for the same GPU-hours. So each method gets the same number
of trained candidates on the reference substrate, and the same scorer:
- **loop**: the campaign itself (`python -m hpc_aevo.round`, the offline scripted workers), `rounds` rounds of
  its anchors and workers; every candidate is scored on the leaderboard (quota = candidates), as in the demo;
  what it ships after a round is its standing recipe.
- **tpe** and **random**: an Optuna study (TPE sampler) and uniform draws over the same recipe space, the keys
  of the initial policy's active axes, with ranges covering what the workers' operators reach. Trial 0 is the
  standing recipe (the loop's first anchor). They see the dev score only, as a team's search would (the
  held-out split is the external target nobody tunes on); what they ship is the best dev so far.
Every candidate trains, is evaluated and scored on the held-out split the same way (calibrate.run_candidate,
with the `heldout-puzzles` adapter), with a fresh seed. The figure and the table: the held-out score of what
each method ships, against candidates spent, mean and spread over the campaign seeds.

`--resume` keeps the runs a stopped bench of the same question already wrote to `--out` (the record is written
after every run) and spends candidates only on the rest: a full run is hours of 2 cores.

`--quick` runs a tiny recipe (one layer, 24 steps) for two seeds of one round: minutes, for CI; its numbers
say that the harness works, not which method wins.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

import yaml

from hpc_aevo.campaign.config import load_campaign, load_initial_policy
from hpc_aevo.loop.fork import load_recipe
from hpc_aevo.scoring.leaderboard import HELDOUT_PER_DOMAIN
from hpc_aevo.search.constitution import PolicyDecision
from hpc_aevo.search.decoupling import sample_std
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.contract import recipe_value
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.records import atomic_write_text
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.untrusted import MIB, UntrustedFile, read_json, typed_fields
from hpc_aevo.tools.calibrate import apply_overrides, run_candidate, scratch_campaign

METHODS = ("loop", "tpe", "random")
SCHEMA, VERSION = "hpc_aevo.bench_search", 1
RECORD_LIMIT = 16 * MIB
QUICK_RECIPE = {"data.train_examples": 1000, "model.hidden": 64, "model.layers": 1, "model.heads": 4,
                "optim.steps": 24, "optim.batch_size": 16, "optim.warmup_steps": 4, "checkpoints.every": 24}


@dataclass(frozen=True)
class Param:
    """One dimension of the recipe space: a dotted recipe key and the values a search may give it."""

    key: str
    kind: str  # "log" | "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()


def search_space(recipe: dict[str, Any], axes: list[str]) -> list[Param]:
    """The keys of `axes` in `recipe`, each over a range that covers the scripted operators' reach (a few
    times up or down, a domain dropped or up-weighted) and holds the recipe's own value."""
    optim, space = recipe["optim"], []
    if "schedule" in axes:
        lr, warmup = float(optim["lr"]), int(optim["warmup_steps"])
        space += [Param("optim.lr", "log", lr / 4, lr * 4), Param("optim.warmup_steps", "int", 0, max(2 * warmup, 8)),
                  Param("optim.weight_decay", "float", 0.0, max(0.2, 2 * float(optim["weight_decay"]))),
                  Param("optim.schedule", "choice", choices=tuple(dict.fromkeys((optim["schedule"], "cosine",
                                                                                  "linear", "constant"))))]
    if "budget" in axes:
        steps, batch = int(optim["steps"]), int(optim["batch_size"])
        space += [Param("optim.steps", "int", max(1, steps // 2), steps * 2),
                  Param("optim.batch_size", "choice", choices=(batch, max(1, batch // 2), batch * 2))]
    if "mixture" in axes:
        space += [Param(f"data.mixture.{d}", "float", 0.0, max(3.0, 3 * float(w)))
                  for d, w in recipe["data"]["mixture"].items()]
    if "filtering" in axes:
        examples = int(recipe["data"]["train_examples"])
        space += [Param("data.train_examples", "int", examples // 2, examples * 2),
                  Param("data.filter.dedupe", "choice", choices=(bool(recipe["data"]["filter"]["dedupe"]),
                                                                 not recipe["data"]["filter"]["dedupe"]))]
    return space


def base_values(recipe: dict[str, Any], space: list[Param]) -> dict[str, Any]:
    return {p.key: recipe_value(recipe, p.key) for p in space}


def with_budget(overrides: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints every `optim.steps` when a search changes the steps: one checkpoint at the end, as the
    standing recipe's own steps would have."""
    return {**overrides, "checkpoints.every": overrides["optim.steps"]} if "optim.steps" in overrides else overrides


@dataclass
class Trial:
    """One trained candidate of one method's run, in the order the method spent them (None: it failed)."""

    index: int
    dev: float | None
    heldout: float | None
    wall_s: float
    shipped_heldout: float | None  # the held-out score of what the method would ship after this candidate
    overrides: dict[str, Any] = field(default_factory=dict)
    examples: int = 0  # training examples the candidate's recipe asked for (steps x batch): its compute


def examples_trained(recipe: dict[str, Any]) -> int:
    """Steps x batch size: the compute a candidate spends, in the unit every method's recipes share."""
    return int(recipe_value(recipe, "optim.steps")) * int(recipe_value(recipe, "optim.batch_size"))


@dataclass
class Run:
    method: str
    seed: int
    trials: list[Trial]
    wall_s: float  # the run's own wall time (the loop: its daemon's, agents and job overheads included)
    story: list[str] = field(default_factory=list)  # the loop: each round's promotion or none, and its flags


class Trainer:
    """Trains, evaluates and scores recipes on one scratch install of the substrate, `jobs` at a time."""

    def __init__(self, substrate: Path, scratch: Path, quota: int, jobs: int, per_domain: int):
        self.tree, _, self.leaderboard = scratch_campaign(substrate, scratch, quota, per_domain)
        self.scratch, self.jobs, self.count = scratch, jobs, 0

    def run(self, recipes: list[dict], names: list[str]) -> list[dict | None]:
        """Each recipe's scores (calibrate.run_candidate), or None where it failed: spent, with nothing to show."""
        start, self.count = self.count, self.count + len(recipes)

        def one(i: int) -> dict | None:
            try:
                return run_candidate(self.tree.default_dir, recipes[i], self.scratch / "runs" / f"{start + i:04d}",
                                     self.leaderboard, names[i])
            except RuntimeError:
                return None

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return list(pool.map(one, range(len(recipes))))


def _ship_best_dev(trials: list[Trial], result: dict | None, overrides: dict, examples: int) -> None:
    """Append a sampler's trial: it ships the best dev so far (the held-out score it never sees goes along)."""
    scored = [t for t in trials if t.dev is not None]
    best = max(scored, key=lambda t: t.dev) if scored else None
    if result is None:
        trials.append(Trial(len(trials), None, None, 0.0, best.shipped_heldout if best else None, overrides, examples))
        return
    dev, heldout = result["dev"], result["heldout"]
    shipped = heldout if best is None or dev > best.dev else best.shipped_heldout
    trials.append(Trial(len(trials), dev, heldout, result["train_s"] + result["eval_s"] + result["heldout_s"], shipped,
                        overrides, examples))


def run_sampler(method: str, recipe: dict, space: list[Param], budget: int, seed: int, trainer: Trainer) -> Run:
    """TPE or random search: trial 0 is the standing recipe, then `jobs` proposals at a time, told their dev."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed) if method == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(base_values(recipe, space))
    trials: list[Trial] = []
    started = time.time()
    while len(trials) < budget:
        asked = [study.ask() for _ in range(min(trainer.jobs, budget - len(trials)))]
        overrides = [with_budget({p.key: _suggest(t, p) for p in space}) for t in asked]
        recipes = [apply_overrides(recipe, {**o, "seed": seed * 1000 + len(trials) + i}) for i, o in enumerate(overrides)]
        results = trainer.run(recipes, [f"{method}/s{seed}/t{len(trials) + i}" for i in range(len(asked))])
        for trial, o, result, trained in zip(asked, overrides, results, recipes):
            if result is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, result["dev"])
            _ship_best_dev(trials, result, o, examples_trained(trained))
    return Run(method, seed, trials, time.time() - started)


def _suggest(trial, p: Param) -> Any:
    if p.kind == "log":
        return trial.suggest_float(p.key, p.low, p.high, log=True)
    if p.kind == "float":
        return trial.suggest_float(p.key, p.low, p.high)
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high))
    return trial.suggest_categorical(p.key, list(p.choices))


def run_loop(campaign_file: Path, initial: Policy, rounds: int, seed: int, scratch: Path) -> Run:
    """The campaign loop itself on a scratch state tree: `rounds` rounds from `initial`, every candidate scored."""
    campaign = load_campaign(campaign_file)
    per_round = campaign.anchors + campaign.workers_per_round
    root = scratch / f"loop-s{seed}"
    root.mkdir(parents=True)
    initial_file = root / "initial.yaml"
    policy = yaml.safe_load(campaign.paths.initial_policy.read_text())
    initial_file.write_text(yaml.safe_dump({**policy, "standing_recipe": initial.standing_recipe}, sort_keys=False))
    data = yaml.safe_load(campaign_file.read_text())
    data.update(state_root=str(root / "state"), substrate=str(campaign.paths.substrate), rounds=rounds, seed=seed)
    data["policy"] = {"constitution": str(campaign.paths.constitution), "initial": str(initial_file)}
    data["leaderboard"] = {**data["leaderboard"], "quota": rounds * per_round, "per_round": per_round}
    data.setdefault("budget", {})["cpu_hours"] = None
    (root / "campaign.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    started = time.time()
    with open(root / "daemon.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "hpc_aevo.round", str(root / "campaign.yaml")], stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"the loop (seed {seed}) exited {done.returncode}:\n{(root / 'daemon.log').read_text()[-2000:]}")
    tree = StateTree(root / "state")
    return Run("loop", seed, loop_trials(tree, rounds), time.time() - started, loop_story(tree, rounds))


def loop_story(tree: StateTree, rounds: int) -> list[str]:
    """A line a round: what was promoted with its gain against C2's bar (or nothing), and what was flagged, so a
    promotion can be held against the calibration sweep's measure of the same move."""
    lines = []
    for rnd in range(rounds):
        manifests = {m.name: m for m in (CandidateManifest.load(p) for p in tree.candidate_manifests(rnd))}
        decision = PolicyDecision.load(tree.decision(rnd))
        evidence = RoundEvidence.load(tree.evidence_json(rnd))
        anchor = evidence.anchors.leaderboard_mean
        tried = ", ".join(f"{m.mutation} {m.measured.leaderboard - anchor:+.3f}" for m in manifests.values()
                          if m.role == "worker" and m.measured.leaderboard is not None and anchor is not None)
        promoted = decision.promotion
        said = (f"promoted {manifests[promoted.candidate.split('/')[1]].mutation} {promoted.leaderboard_gain:+.3f} "
                f"> bar {promoted.band:.3f}" if promoted else "no promotion")
        flagged = sorted({f"{manifests[f.candidate].mutation}" for f in evidence.calibration.flags
                          if f.candidate in manifests})
        lines.append(f"r{rnd}: anchor {_score(anchor)}; {tried}; {said}"
                     + (f"; flagged {', '.join(flagged)}" if flagged else ""))
    return lines


def loop_trials(tree: StateTree, rounds: int) -> list[Trial]:
    """The loop's candidates in round order (a failed one too: it was spent). What it ships changes at a round's
    end: the standing recipe the meta step left, scored as its promoted candidate (round 0's anchor before any)."""
    trials: list[Trial] = []
    shipped = None
    for rnd in range(rounds):
        manifests = sorted((CandidateManifest.load(p) for p in tree.round_dir(rnd).glob("cand-*/manifest.json")),
                           key=lambda m: m.candidate)
        if rnd == 0:
            shipped = next((m.measured.leaderboard for m in manifests if m.role == "anchor"), None)
        standing = Policy.load(tree.policy(rnd + 1)).standing_source
        promoted = [m for m in manifests if f"r{rnd:03d}/{m.name}" == standing]
        after = promoted[0].measured.leaderboard if promoted else shipped
        for m in manifests:
            trials.append(Trial(len(trials), m.measured.dev, m.measured.leaderboard,
                                (m.measured.train_wall_s or 0.0) + (m.measured.eval_wall_s or 0.0), shipped,
                                dict(m.recipe_diff), examples_trained(load_recipe(tree.sandbox(rnd, m.candidate)))))
        trials[-1].shipped_heldout = shipped = after
    return trials


def shipped_within(trials: list[Trial], examples: float) -> float | None:
    """The held-out score of what a run ships once it has spent `examples` training examples: after its last
    trial that fits (None: not even its first one did)."""
    spent, shipped = 0, None
    for trial in trials:
        spent += trial.examples
        if spent > examples:
            break
        shipped = trial.shipped_heldout
    return shipped


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": fmean(values), "min": min(values), "max": max(values)}


def summarize(runs: list[Run], budget: int) -> dict[str, Any]:
    """Per method: the held-out score of what it ships after k candidates (mean, min, max over seeds), and at the end;
    and at equal compute: once it has spent the training examples the loop of the same seed spent (the loop's
    mean where that seed has no loop run), and against examples spent, on a common grid."""
    loops = {r.seed: sum(t.examples for t in r.trials) for r in runs if r.method == "loop"}
    compute = {r.seed: loops.get(r.seed, fmean(loops.values())) for r in runs} if loops else {}
    grid = _compute_grid(runs)
    out = {}
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        curve = []
        for k in range(1, budget + 1):
            values = [v for r in mine if (v := r.trials[min(k, len(r.trials)) - 1].shipped_heldout) is not None]
            if values:
                curve.append({"candidates": k, **_spread(values)})
        compute_curve = []
        for x in grid:
            values = [v for r in mine if (v := shipped_within(r.trials, x)) is not None]
            if len(values) == len(mine):
                compute_curve.append({"examples": x, **_spread(values)})
        at_loop = [shipped_within(r.trials, compute[r.seed]) for r in mine] if compute else []
        final = [v for r in mine if (v := r.trials[-1].shipped_heldout) is not None]
        best_seen = [max(t.heldout for t in r.trials if t.heldout is not None) for r in mine
                     if any(t.heldout is not None for t in r.trials)]
        out[method] = {"final_mean": fmean(final) if final else None, "final_std": sample_std(final), "final": final,
                       "best_heldout_seen_mean": fmean(best_seen) if best_seen else None,
                       "candidates": [len(r.trials) for r in mine], "failed": [sum(t.dev is None for t in r.trials) for r in mine],
                       "candidate_s": fmean(sum(t.wall_s for t in r.trials) for r in mine),
                       "examples": fmean(sum(t.examples for t in r.trials) for r in mine),
                       "wall_s": fmean(r.wall_s for r in mine), "curve": curve,
                       "at_loop_compute": at_loop,
                       "at_loop_compute_mean": fmean(at) if (at := [v for v in at_loop if v is not None]) else None,
                       "compute_curve": compute_curve}
    return out


def _compute_grid(runs: list[Run], points: int = 48) -> list[int]:
    """Training examples from 0 to the most any run spent, for the score-against-compute curve."""
    most = max((sum(t.examples for t in r.trials) for r in runs), default=0)
    return [round(most * i / points) for i in range(1, points + 1)] if most else []


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(summary: dict[str, Any], budget: int) -> str:
    lines = [f"| method | held-out shipped after {budget} candidates (mean ± std over seeds) | per seed | held-out shipped "
             "at the loop's compute (mean; per seed) | best held-out seen (mean) | failed | candidate wall-s (mean) | "
             "training examples (mean; × the loop's) |",
             "|---|---|---|---|---|---|---|---|"]
    loop = summary.get("loop", {}).get("examples") or None
    for method, s in summary.items():
        ratio = f"; ×{s['examples'] / loop:.2f}" if loop else ""
        spread = "(one seed)" if s["final_std"] is None else f"± {s['final_std']:.3f}"
        at_loop = (f"{_score(s['at_loop_compute_mean'])}; {', '.join(map(_score, s['at_loop_compute']))}"
                   if s.get("at_loop_compute") else "-")
        lines.append(f"| {method} | {_score(s['final_mean'])} {spread} | "
                     f"{', '.join(map(_score, s['final']))} | {at_loop} | {_score(s['best_heldout_seen_mean'])} | "
                     f"{sum(s['failed'])} | {s['candidate_s']:.0f} | {s['examples']:,.0f}{ratio} |")
    return "\n".join(lines)


def figure(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_candidates, by_compute) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for method, s in summary.items():
        for ax, curve, x in ((by_candidates, s["curve"], "candidates"), (by_compute, s.get("compute_curve", []), "examples")):
            xs = [p[x] for p in curve]
            ax.plot(xs, [p["mean"] for p in curve], marker="o", markersize=3, label=f"{method} (mean)")
            ax.fill_between(xs, [p["min"] for p in curve], [p["max"] for p in curve], alpha=0.15)
    by_candidates.set_xlabel("candidates trained")
    by_compute.set_xlabel("training examples spent (steps × batch, summed)")
    by_candidates.set_ylabel("held-out score of the shipped recipe")
    if summary.get("loop", {}).get("examples"):
        by_compute.axvline(summary["loop"]["examples"], color="grey", linestyle="--", linewidth=1)
    fig.suptitle(title)
    by_candidates.legend(title="band: min-max over seeds")
    for ax in (by_candidates, by_compute):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class ResumeError(ValueError):
    """`--resume` was given a record that is not an earlier run of the same bench; str() is one line."""


def resumed_runs(out: Path, question: dict[str, Any], seeds: int) -> tuple[list[Run], float]:
    """The runs (and wall seconds) an earlier, stopped bench wrote to `out`, if it asked the same `question`:
    the same campaign, recipe space, rounds and budget, and no seed beyond `seeds`."""
    try:
        body = read_json(out, out.resolve().parent, RECORD_LIMIT)
    except (OSError, UntrustedFile) as exc:
        raise ResumeError(f"--resume: expected a bench search record ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise ResumeError(f"--resume: {out}: expected a bench search record with its runs")
    for key, value in json.loads(json.dumps(question)).items():
        if body.get(key) != value:
            raise ResumeError(f"--resume: {out}: {key}: the record has {body.get(key)!r}, this bench asks {value!r}: "
                              "another question; give another --out")
    runs: list[Run] = []
    for i, data in enumerate(body["runs"]):
        try:
            run = typed_fields(Run, data if isinstance(data, dict) else {}, out)
        except UntrustedFile as exc:
            raise ResumeError(f"--resume: {exc} (runs[{i}])") from None
        if run.method not in METHODS or any((r.method, r.seed) == (run.method, run.seed) for r in runs):
            raise ResumeError(f"--resume: {out}: runs[{i}]: expected one run of each method and seed, "
                              f"found {run.method!r} seed {run.seed} again or unknown")
        if run.seed >= seeds:  # dropping it would lose what was measured
            raise ResumeError(f"--resume: {out}: runs[{i}]: the record has seed {run.seed}; ask --seeds "
                              f"{run.seed + 1} or more, or give another --out")
        runs.append(run)
    wall = body.get("wall_s")
    return runs, float(wall) if isinstance(wall, (int, float)) else 0.0


def bench_search(campaign_file: Path, seeds: int, rounds: int | None, jobs: int, quick: bool, out: Path, command: str,
                 say: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Run every method for `seeds` seeds at the loop's number of candidates; write `out` and its figure."""
    campaign = load_campaign(campaign_file)
    rounds = rounds or (1 if quick else campaign.rounds)
    initial = load_initial_policy(campaign)
    if quick:
        initial.standing_recipe = apply_overrides(initial.standing_recipe, QUICK_RECIPE)
        initial.standing_source = "initial-policy"
    recipe = initial.standing_recipe
    space = search_space(recipe, initial.active_axes)
    budget = rounds * (campaign.anchors + campaign.workers_per_round)
    question = {"schema": SCHEMA, "version": VERSION, "campaign": str(campaign_file), "quick": quick, "rounds": rounds,
                "candidates_per_method": budget, "space": [asdict(p) for p in space]}
    runs, earlier_s = resumed_runs(out, question, seeds) if resume and out.exists() else ([], 0.0)
    for run in runs:
        say(f"kept from {out}: {run.method} seed {run.seed} ({len(run.trials)} candidates)")
    started = time.time()

    def write() -> dict[str, Any]:
        """The record so far (`complete` false until the last run), so a run stopped early keeps what it measured."""
        summary = summarize(runs, budget)
        body = {**question, "complete": len(runs) == seeds * len(METHODS), "seeds": seeds, "summary": summary,
                "runs": [asdict(r) for r in sorted(runs, key=lambda r: (r.seed, METHODS.index(r.method)))],
                "command": command,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jobs} candidates at once",
                "date": date.today().isoformat(), "wall_s": earlier_s + time.time() - started}
        atomic_write_text(out, json.dumps(body, indent=2) + "\n")
        figure(summary, out.with_suffix(".png"), f"{campaign.name}: {seeds} seeds, {budget} candidates each"
                                                 + (" (quick)" if quick else ""))
        return body

    with tempfile.TemporaryDirectory(prefix="hpc-aevo-bench-search-", dir=os.environ.get("HPC_AEVO_BENCH_DIR")) as tmp:
        scratch = Path(tmp)
        trainer = Trainer(campaign.paths.substrate, scratch / "samplers", 2 * seeds * budget, jobs,
                          campaign.leaderboard.examples_per_domain or HELDOUT_PER_DOMAIN)
        body = write()
        for seed in range(seeds):
            for method in METHODS:
                if any((r.method, r.seed) == (method, seed) for r in runs):
                    continue
                if method == "loop":
                    run = run_loop(campaign_file, initial, rounds, seed, scratch)
                    kept = out.with_name(f"{out.stem}-loop-s{seed}.log")  # what the daemon printed, as the demo does
                    shutil.copyfile(scratch / f"loop-s{seed}" / "daemon.log", kept)
                else:
                    run = run_sampler(method, recipe, space, budget, seed, trainer)
                runs.append(run)
                say(json.dumps({"method": method, "seed": seed, "candidates": len(run.trials),
                                "shipped_heldout": run.trials[-1].shipped_heldout if run.trials else None,
                                "wall_s": round(run.wall_s)}))
                for line in run.story:
                    say(f"  {line}")
                body = write()
    summary = body["summary"]
    say(render(summary, budget))
    say(f"wrote {out} and {out.with_suffix('.png')} ({body['wall_s']:.0f} s)")
    return body
