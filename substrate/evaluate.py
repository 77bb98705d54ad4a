"""Score every saved checkpoint on the dev split, per domain, and pick one by the recipe's rule.

    python evaluate.py --checkpoints DIR --recipe recipe.yaml --out eval.json [--engine E]
    python evaluate.py --checkpoint FILE --split-file heldout.jsonl --out score.json [--engine E]
    python evaluate.py --base-recipe recipe.yaml --split-file heldout.jsonl --out base.json

The third form scores the recipe's model before any training (an `init_from` model's pretrained
weights): the baseline a post-training campaign is measured against.

The evaluator writes the scores itself (agents never write a measured number). Scoring is exact
match of the greedy answer. The second form scores one checkpoint on a given JSONL split: the
toolkit's leaderboard adapter uses it on the held-out split, which no sandbox can see. The answers
come from an engine (engines.py: megatron, transformers or vLLM; `auto` picks by model and
hardware); whichever generates, the decoding and scoring here are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

import data
from checkpoint import paths as checkpoint_paths
from engines import ENGINES, open_engine
from model import build_model, init_parallel
from tokenizer import decode, encode

SELECTION_RULES = ("best_dev", "last", "best_min_domain")
MAX_ANSWER_TOKENS = 9


def score(engine, rows: list[dict], batch: int = 250) -> tuple[float, dict[str, float], dict[str, int]]:
    """Exact-match accuracy overall and per domain of the engine's greedy answers."""
    hits: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        outputs = engine.generate([encode(r["prompt"]) for r in chunk], MAX_ANSWER_TOKENS)
        for row, out in zip(chunk, outputs):
            counts[row["domain"]] += 1
            hits[row["domain"]] += decode(out) == row["answer"]
    per_domain = {d: hits[d] / counts[d] for d in sorted(counts)}
    return sum(hits.values()) / sum(counts.values()), per_domain, dict(sorted(counts.items()))


def select(checkpoints: list[dict], rule: str) -> int:
    if rule == "last":
        return checkpoints[-1]["step"]
    if rule == "best_dev":
        return max(checkpoints, key=lambda c: (c["dev"], c["step"]))["step"]
    if rule == "best_min_domain":
        return max(checkpoints, key=lambda c: (min(c["per_domain"].values()), c["dev"], c["step"]))["step"]
    raise ValueError(f"recipe checkpoints.selection: expected one of {SELECTION_RULES} (got {rule!r})")


def write_json(path: Path, body: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def evaluate_checkpoints(directory: Path, recipe: dict, out: Path, engine: str = "auto") -> dict:
    started = time.time()
    rows = data.dev_split().to_list()
    results, examples = [], {}
    for path in checkpoint_paths(directory):
        with open_engine(engine, path) as (generator, state):
            dev, per_domain, examples = score(generator, rows)
        results.append({"step": state["step"], "dev": dev, "per_domain": per_domain})
        print(json.dumps({"checkpoint": path.name, "dev": dev}), flush=True)
    if not results:
        raise SystemExit(f"evaluate: no checkpoints in {directory}")
    rule = recipe["checkpoints"]["selection"]
    body = {"schema": "hpc_aevo.eval_result", "version": 1, "split": "dev", "selection_rule": rule,
            "selected_step": select(results, rule), "examples_per_domain": examples,
            "checkpoints": results, "wall_s": time.time() - started}
    write_json(out, body)
    return body


def evaluate_split(checkpoint: Path, split_file: Path, out: Path, engine: str = "auto") -> dict:
    rows = [json.loads(line) for line in split_file.read_text().splitlines() if line.strip()]
    with open_engine(engine, checkpoint) as (generator, state):
        overall, per_domain, examples = score(generator, rows)
    body = {"schema": "hpc_aevo.split_score", "version": 1, "checkpoint": str(checkpoint), "step": state["step"],
            "score": overall, "per_domain": per_domain, "examples_per_domain": examples}
    write_json(out, body)
    return body


def base_checkpoint(recipe: dict, directory: Path) -> Path:
    """The recipe's model before training (pretrained weights, or the seed's random init) as step 0."""
    torch.manual_seed(int(recipe["seed"]))
    path = Path(directory) / "ckpt-000000.pt"
    torch.save({"step": 0, "model": build_model(recipe["model"]).state_dict(), "model_config": recipe["model"]}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--recipe", type=Path, default=Path("recipe.yaml"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--split-file", type=Path)
    parser.add_argument("--base-recipe", type=Path, help="score this recipe's model before training")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="who generates the answers (auto: vLLM on a GPU, transformers on CPU, megatron for the GPT)")
    args = parser.parse_args()
    init_parallel(seed=0)
    torch.manual_seed(0)
    if args.base_recipe and args.split_file:
        with tempfile.TemporaryDirectory(prefix="base-") as tmp:
            base = base_checkpoint(yaml.safe_load(args.base_recipe.read_text()), Path(tmp))
            evaluate_split(base, args.split_file, args.out, args.engine)
    elif args.checkpoint and args.split_file:
        evaluate_split(args.checkpoint, args.split_file, args.out, args.engine)
    elif args.checkpoints:
        evaluate_checkpoints(args.checkpoints, yaml.safe_load(args.recipe.read_text()), args.out, args.engine)
    else:
        parser.error("give --checkpoints DIR, or --checkpoint FILE or --base-recipe RECIPE with --split-file")


if __name__ == "__main__":
    data.datasets.disable_progress_bars()
    main()
