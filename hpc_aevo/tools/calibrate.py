"""Calibrate a substrate: the seed-noise band of its recipe and how far one-axis variants move it.

    python -m hpc_aevo.tools.calibrate [--substrate substrate] [--seeds 3] [--variant-seeds 1]
                                 [--out logs/calibration.json] [--jobs 2]
                                 [--policy policy/initial.yaml] [--start KEY=VALUE ...]
                                 [--operators AXIS|SIGNATURE[*STRIDE] ...]

A campaign can only promote what beats seed noise, and it can only find gains if the recipe's axes
move the score at all. So before a substrate is trusted, this trains and evaluates its recipe with
several seeds (the band: 2 x the sample std of dev and of the held-out score) and a set of one-axis
variants (pooling their replicates into a second noise estimate), and flags the variants whose dev
moves beyond the wider band. It goes through the campaign's own path: the substrate is installed
read-only into a scratch state tree, every candidate trains and is evaluated from that frozen copy,
and the held-out score comes from the `heldout-puzzles` adapter.

The start is the substrate's recipe, or a campaign's round-0 standing recipe (`--policy`), with `--start`
overrides; the variants are a fixed set of one-axis probes, or the scripted workers' own operators
(`--operators`), so the sweep measures exactly the moves a campaign's workers can make from that start.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

import yaml

from hpc_aevo.campaign.config import MAX_HELDOUT_PER_DOMAIN, read_initial_policy
from hpc_aevo.loop.install import install_substrate
from hpc_aevo.roles.scripted.worker import OPERATORS, operators
from hpc_aevo.scoring.leaderboard import HELDOUT_PER_DOMAIN, HeldoutPuzzles
from hpc_aevo.scoring.results import EvalResult, selected_file
from hpc_aevo.search.decoupling import sample_std
from hpc_aevo.state.contract import SCORE_RESULT
from hpc_aevo.state.records import atomic_write_text
from hpc_aevo.state.tree import StateTree

DEFAULT = "default"
TRAP_DOMAIN = "sequence"  # the reference substrate's planted proxy trap (see substrate/README.md)


def variants(recipe: dict) -> dict[str, dict[str, Any]]:
    """One-axis variants of `recipe`, as dotted-key overrides, one per axis the campaign explores."""
    lr, steps = float(recipe["optim"]["lr"]), int(recipe["optim"]["steps"])
    return {
        "lr x3": {"optim.lr": lr * 3},
        "lr x0.3": {"optim.lr": lr * 0.3},
        "steps x0.5": {"optim.steps": steps // 2},
        "hidden 64": {"model.hidden": 64},
        "layers 1": {"model.layers": 1},
        f"{TRAP_DOMAIN} x6 (trap)": {f"data.mixture.{TRAP_DOMAIN}": 6 * float(recipe["data"]["mixture"][TRAP_DOMAIN])},
        "dedupe": {"data.filter.dedupe": True},
    }


def operator_variants(recipe: dict, names: list[str]) -> dict[str, dict[str, Any]]:
    """The scripted workers' operators as variants of `recipe`: each name is an axis (all its operators that
    change the recipe, one edit each) or one operator's signature, optionally `*STRIDE` edits of it
    ("optim.lr:up*2"). A variant is named by its signature and holds the keys the edit changed."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        signature, _, stride = name.partition("*")
        axis_ops = operators(signature, recipe) if signature in OPERATORS else None
        ops = axis_ops if axis_ops is not None else [
            op for axis in OPERATORS for op in operators(axis, recipe) if op.signature == signature]
        if not ops:
            raise ValueError(f"--operators {name}: neither an axis ({', '.join(OPERATORS)}) nor an operator's "
                             "signature on this recipe")
        for op in ops:
            overrides = flat_diff(recipe, op.apply(recipe, int(stride or 1)))
            if overrides:
                out[f"{op.signature}*{stride}" if stride else op.signature] = overrides
    return out


def flat_diff(before: dict, after: dict, prefix: str = "") -> dict[str, Any]:
    """The dotted keys whose value differs between two recipes of the same shape, with the new value."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict) and isinstance(before.get(key), dict):
            out.update(flat_diff(before[key], value, f"{prefix}{key}."))
        elif before.get(key) != value:
            out[f"{prefix}{key}"] = value
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with a YAML value ("optim.lr=2.5e-4"), for --start."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (got {text!r})")
    return key, yaml.safe_load(value)


def apply_overrides(recipe: dict, overrides: dict[str, Any]) -> dict:
    """A copy of `recipe` with each dotted key ("optim.lr") set; every key must already exist."""
    out = copy.deepcopy(recipe)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node[key]
        if leaf not in node:
            raise KeyError(f"recipe has no key {dotted!r}")
        node[leaf] = value
    return out


def _run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run one substrate command with its output in `log`; its wall seconds, or an error with the log's tail."""
    started = time.time()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    return time.time() - started


def run_candidate(substrate: Path, recipe: dict, workdir: Path, leaderboard: HeldoutPuzzles, name: str) -> dict:
    """Train and evaluate one recipe as a campaign candidate would be: dev scores and the held-out score."""
    workdir.mkdir(parents=True)
    recipe_file, ckpts, eval_file = workdir / "recipe.yaml", workdir / "checkpoints", workdir / "eval.json"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    python = sys.executable
    train_s = _run([python, "train.py", "--recipe", str(recipe_file), "--out", str(ckpts)], substrate,
                   workdir / "train.log")
    eval_s = _run([python, "evaluate.py", "--checkpoints", str(ckpts), "--recipe", str(recipe_file),
                   "--out", str(eval_file)], substrate, workdir / "evaluate.log")
    result = EvalResult.load(eval_file)
    chosen = result.selected()
    selected = result.selected_checkpoint
    checkpoint = selected_file(ckpts, selected)
    scored = workdir / "heldout"
    scored.mkdir()
    heldout_s = _run([python, "evaluate.py", "--checkpoint", str(checkpoint), "--sha256", selected.sha256, "--recipe",
                      str(recipe_file), "--split-file", str(leaderboard.split_file), "--out", str(scored / SCORE_RESULT)],
                     substrate, workdir / "heldout.log")
    board = leaderboard.record(name, scored, str(checkpoint.relative_to(ckpts)), selected.sha256, selected.step)
    return {"selected_step": chosen.step, "dev": chosen.dev, "dev_per_domain": dict(chosen.per_domain),
            "heldout": board.score, "heldout_per_domain": board.per_domain,
            "train_s": train_s, "eval_s": eval_s, "heldout_s": heldout_s,
            "final_loss": json.loads((ckpts / "train_summary.json").read_text())["final_loss"]}


def band(values: list[float]) -> dict:
    """Mean, sample std and the noise band (2 x std) of seed replicates."""
    std = sample_std(values)
    return {"mean": fmean(values), "std": std, "band": None if std is None else 2 * std, "n": len(values)}


def pooled_std(groups: list[list[float]]) -> float | None:
    """The within-group std pooled over every group with replicates (more degrees of freedom than one group)."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if not dof:
        return None
    return (sum((len(g) - 1) * sample_std(g) ** 2 for g in groups if len(g) > 1) / dof) ** 0.5


def summarize(runs: list[dict], default_recipe: dict) -> dict:
    """The seed band of the default and, per variant, its mean scores, deltas and whether dev moved beyond the band.

    A few default seeds can understate the noise, so replicated variants give a second estimate (the pooled
    within-variant std); a variant is flagged only when its dev moves beyond the wider of the two bands.
    """
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    defaults = by_variant[DEFAULT]
    seed_band = {"dev": band([r["dev"] for r in defaults]), "heldout": band([r["heldout"] for r in defaults])}
    for score in ("dev", "heldout"):
        pooled = pooled_std([[r[score] for r in group] for group in by_variant.values()])
        seed_band[score]["pooled_std"] = pooled
        seed_band[score]["flag_band"] = max(seed_band[score]["band"] or 0.0, 2 * (pooled or 0.0))
    dev_band = seed_band["dev"]["flag_band"]
    rows = []
    for name, group in by_variant.items():
        dev, heldout = fmean(r["dev"] for r in group), fmean(r["heldout"] for r in group)
        delta = dev - seed_band["dev"]["mean"]
        rows.append({
            "variant": name, "overrides": group[0]["overrides"], "seeds": [r["seed"] for r in group],
            "dev": dev, "delta_dev": delta, "heldout": heldout,
            "delta_heldout": heldout - seed_band["heldout"]["mean"],
            "dev_trap_domain": fmean(r["dev_per_domain"][TRAP_DOMAIN] for r in group),
            "heldout_trap_domain": fmean(r["heldout_per_domain"][TRAP_DOMAIN] for r in group),
            "wall_s": fmean(r["train_s"] + r["eval_s"] + r["heldout_s"] for r in group),
            "moves_dev": name != DEFAULT and abs(delta) > dev_band,
        })
    moved = [r["variant"] for r in rows if r["moves_dev"]]
    return {"default_recipe": default_recipe, "seed_band": seed_band, "variants": rows, "moves_dev": moved}


def render(summary: dict) -> str:
    """The calibration table, in Markdown."""
    lines = [
        f"{name} over {b['n']} default seeds: {b['mean']:.3f} ± {b['std'] or 0:.3f} (band 2σ {b['band'] or 0:.3f}); "
        f"pooled over replicated variants σ {b['pooled_std'] or 0:.3f}; flag band {b['flag_band']:.3f}"
        for name, b in (("dev", summary["seed_band"]["dev"]), ("held-out", summary["seed_band"]["heldout"]))
    ]
    lines += [
        "",
        f"| variant | seeds | dev | Δdev | held-out | Δheld-out | dev {TRAP_DOMAIN} | held-out {TRAP_DOMAIN} | wall s "
        "| dev beyond band |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["variants"]:
        lines.append(
            f"| {r['variant']} | {len(r['seeds'])} | {r['dev']:.3f} | {r['delta_dev']:+.3f} | {r['heldout']:.3f} | "
            f"{r['delta_heldout']:+.3f} | {r['dev_trap_domain']:.2f} | {r['heldout_trap_domain']:.2f} | "
            f"{r['wall_s']:.0f} | {'yes' if r['moves_dev'] else ''} |"
        )
    return "\n".join(lines)


def scratch_campaign(substrate: Path, scratch: Path, quota: int,
                     per_domain: int = HELDOUT_PER_DOMAIN) -> tuple[StateTree, str, HeldoutPuzzles]:
    """A scratch state tree as a campaign has it: the substrate installed read-only and hashed, the
    held-out split (`per_domain` puzzles a domain) written by the leaderboard adapter. Returns the tree, the
    substrate hash, the adapter."""
    tree = StateTree(scratch / "state")
    manifest = install_substrate(substrate, tree.default_dir, tree.substrate_manifest)
    leaderboard = HeldoutPuzzles(tree, quota=quota, seed=0, per_domain=per_domain)
    leaderboard.prepare()
    return tree, manifest.tree_sha256, leaderboard


def start_recipe(substrate: Path, policy: Path | None, start: list[tuple[str, Any]]) -> dict:
    """The recipe the sweep starts from: the policy's standing recipe (or the substrate's), with `start` set."""
    recipe = (read_initial_policy(policy, substrate).standing_recipe if policy is not None
              else yaml.safe_load((substrate / "recipe.yaml").read_text()))
    return apply_overrides(recipe, dict(start))


def calibrate(substrate: Path, recipe: dict, probes: dict[str, dict[str, Any]], seeds: int, variant_seeds: int,
              jobs: int, scratch: Path, write: Callable[[dict], None], per_domain: int = HELDOUT_PER_DOMAIN) -> dict:
    """Run `recipe` with `seeds` seeds and every probe with `variant_seeds`, `jobs` at a time. `write` gets the
    record after every finished run (`complete` false until the last), so a sweep stopped early keeps what it
    measured."""
    base_seed = int(recipe["seed"])
    plan = [(DEFAULT, {}, base_seed + i) for i in range(seeds)]
    plan += [(name, o, base_seed + i) for name, o in probes.items() for i in range(variant_seeds)]
    tree, substrate_sha256, leaderboard = scratch_campaign(substrate, scratch, len(plan), per_domain)

    def one(index: int) -> dict:
        name, overrides, seed = plan[index]
        candidate = apply_overrides(recipe, {**overrides, "seed": seed})
        result = run_candidate(tree.default_dir, candidate, scratch / "runs" / f"{index:03d}", leaderboard,
                               f"{name}/seed-{seed}")
        print(json.dumps({"variant": name, "seed": seed, "dev": result["dev"], "heldout": result["heldout"],
                          "wall_s": round(result["train_s"] + result["eval_s"] + result["heldout_s"], 1)}), flush=True)
        return {"variant": name, "seed": seed, "overrides": overrides, **result}

    done: dict[int, dict] = {}
    body: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, i): i for i in range(len(plan))}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            runs = [done[i] for i in sorted(done)]
            if any(r["variant"] == DEFAULT for r in runs):
                body = {"schema": "hpc_aevo.calibration", "version": 1, "substrate": str(substrate),
                        "substrate_sha256": substrate_sha256, "complete": len(runs) == len(plan),
                        "heldout_per_domain": per_domain,
                        **summarize(runs, recipe), "runs": runs}
                write(body)
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--substrate", type=Path, default=Path("substrate"))
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default recipe (the noise band)")
    parser.add_argument("--variant-seeds", type=int, default=1, help="seeds per one-axis variant")
    parser.add_argument("--out", type=Path, default=Path("logs/calibration.json"))
    parser.add_argument("--jobs", type=int, default=2, help="candidates trained at once (one core each)")
    parser.add_argument("--policy", type=Path, help="start from this initial policy's standing recipe "
                                                    "(default: the substrate's recipe.yaml)")
    parser.add_argument("--start", type=parse_assignment, nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted recipe keys set on the start (YAML values)")
    parser.add_argument("--operators", nargs="+", metavar="AXIS|SIGNATURE[*STRIDE]",
                        help="probe the scripted workers' operators (default: the fixed one-axis variants)")
    parser.add_argument("--heldout-per-domain", type=int, default=HELDOUT_PER_DOMAIN, metavar="N",
                        help="puzzles per domain in the held-out split (a campaign's leaderboard.examples_per_domain)")
    args = parser.parse_args(argv)
    if not 10 <= args.heldout_per_domain <= MAX_HELDOUT_PER_DOMAIN:
        parser.error(f"--heldout-per-domain must be between 10 and {MAX_HELDOUT_PER_DOMAIN}")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 to measure a noise band")
    substrate = args.substrate.resolve()
    try:
        recipe = start_recipe(substrate, args.policy, args.start)
        probes = operator_variants(recipe, args.operators) if args.operators else variants(recipe)
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    started = time.time()

    def write(body: dict) -> None:
        body.update(command=shlex.join([sys.executable, "-m", "hpc_aevo.tools.calibrate", *(argv or sys.argv[1:])]),
                    machine=f"{platform.machine()}, {os.cpu_count()} cores, {args.jobs} candidates at once, "
                            f"{os.environ.get('SUBSTRATE_THREADS', '1')} thread each",
                    date=date.today().isoformat(), wall_s=time.time() - started)
        atomic_write_text(args.out, json.dumps(body, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="hpc-aevo-calibrate-") as scratch:
        body = calibrate(substrate, recipe, probes, args.seeds, args.variant_seeds, args.jobs, Path(scratch), write,
                         args.heldout_per_domain)
    print(render(body))
    print(f"\nwrote {args.out} ({body['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
