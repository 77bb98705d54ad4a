"""Score every exported checkpoint on the dev split, per domain, and pick one by the recipe's rule.

    python evaluate.py --checkpoints DIR --recipe recipe.yaml --out eval.json [--engine E]
    python evaluate.py --checkpoint DIR/export/ckpt-000500.safetensors --sha256 HEX --recipe recipe.yaml \
        --split-file heldout.jsonl --out score.json [--engine E]
    python evaluate.py --checkpoint DIR/export/ckpt-000500.safetensors --sha256 HEX --recipe recipe.yaml \
        --prompts-file prompts.jsonl --predictions predictions.json [--engine E]
    python evaluate.py --base-recipe recipe.yaml --split-file heldout.jsonl --out base.json

The third form answers a prompts file without scoring (the toolkit's jsonl leaderboard scores the
answers by its own rule). The fourth scores the recipe's model before any training (an `init_from` model's pretrained
weights): the baseline a post-training campaign is measured against.

What a training job wrote is the candidate's, so it is read as data only: the evaluator loads the
pickle-free `export/ckpt-<step:06d>.safetensors` files (safe_weights.py) and nothing else, builds the
model and the tokenizer from the recipe (checked against the contract's keys and limits), never from
a checkpoint, and takes a checkpoint's step from its file name. Each file is read once, hashed, and
the bytes hashed are the bytes scored; eval.json names the selected file and its sha256, and the
second form refuses a file whose sha256 is not the one given.

The evaluator writes the scores itself (agents never write a measured number). Scoring is exact
match of the greedy answer. The second form scores one checkpoint on a given JSONL split: the
toolkit's leaderboard adapter uses it on the held-out split, which no sandbox can see. The answers
come from an engine (engines.py: megatron, transformers or vLLM; `auto` picks by model and
hardware); whichever generates, the decoding and scoring here are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

import data
import safe_weights
from engines import ENGINES, open_engine
from model import build_model, checked_model_config, init_parallel, use_tokenizer
from tokenizer import decode, encode

SELECTION_RULES = ("best_dev", "last", "best_min_domain")
MAX_ANSWER_TOKENS = 9
RECIPE_BYTES = 1 << 20


def answers(engine, prompts: list[str], batch: int = 250) -> list[str]:
    """The engine's greedy answers to `prompts`, decoded, in order."""
    outputs = []
    for start in range(0, len(prompts), batch):
        outputs += [decode(out) for out in engine.generate([encode(p) for p in prompts[start : start + batch]],
                                                           MAX_ANSWER_TOKENS)]
    return outputs


def score(engine, rows: list[dict], batch: int = 250) -> tuple[float, dict[str, float], dict[str, int]]:
    """Exact-match accuracy overall and per domain of the engine's greedy answers."""
    hits: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for row, output in zip(rows, answers(engine, [r["prompt"] for r in rows], batch)):
        counts[row["domain"]] += 1
        hits[row["domain"]] += output == row["answer"]
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


def recipe_model(recipe_path: Path, before_training: bool = False):
    """(recipe, model config, model in eval mode) from the recipe alone, its tokenizer active; the model
    `before_training` is the recipe seed's init with an `init_from` model's pretrained weights."""
    recipe = yaml.safe_load(safe_weights.read_regular(recipe_path, RECIPE_BYTES).decode())
    if not isinstance(recipe, dict):
        raise ValueError(f"{recipe_path}: expected a YAML mapping")
    cfg = checked_model_config(recipe.get("model"), recipe_path.absolute().parent)
    use_tokenizer(cfg)
    if before_training:
        torch.manual_seed(int(recipe["seed"]))
    return recipe, cfg, build_model(cfg, load_pretrained=before_training).eval()


def load_export(model, path: Path, dir_fd: int | None = None, sha256: str | None = None) -> str:
    """Read the export file once, hash it and load those very bytes into `model` (only if their hash is
    `sha256`, when given): a file swapped after hashing is never scored under the old hash."""
    blob = safe_weights.read_regular(path, safe_weights.max_bytes(model), dir_fd)
    digest = hashlib.sha256(blob).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise safe_weights.ExportError(f"{path}: sha256 is {digest}, expected {sha256} (--sha256)")
    safe_weights.load_into(model, blob, path)
    return digest


def evaluate_checkpoints(directory: Path, recipe_path: Path, out: Path, engine: str = "auto") -> dict:
    started = time.time()
    recipe, cfg, model = recipe_model(recipe_path)
    dir_fd, paths = safe_weights.exports(directory)
    rows = data.dev_split().to_list()
    results, files, examples = [], {}, {}
    try:
        for path in paths:
            step = safe_weights.step_of(path.name)
            files[step] = {"path": f"{safe_weights.EXPORT_DIR}/{path.name}", "sha256": load_export(model, path, dir_fd),
                           "step": step}
            with open_engine(engine, model, cfg) as generator:
                dev, per_domain, examples = score(generator, rows)
            results.append({"step": step, "dev": dev, "per_domain": per_domain})
            print(json.dumps({"checkpoint": path.name, "dev": dev}), flush=True)
    finally:
        os.close(dir_fd)
    if not results:
        raise safe_weights.ExportError(f"{directory / safe_weights.EXPORT_DIR}: no ckpt-<step:06d>.safetensors")
    rule = recipe["checkpoints"]["selection"]
    selected = select(results, rule)
    body = {"schema": "hpc_aevo.eval_result", "version": 2, "split": "dev", "selection_rule": rule,
            "selected_step": selected, "selected_checkpoint": files[selected], "examples_per_domain": examples,
            "checkpoints": results, "wall_s": time.time() - started}
    write_json(out, body)
    return body


def score_split(model, cfg: dict, split_file: Path, out: Path, engine: str, checkpoint: Path | None,
                sha256: str | None, step: int) -> dict:
    rows = [json.loads(line) for line in split_file.read_text().splitlines() if line.strip()]
    with open_engine(engine, model, cfg) as generator:
        overall, per_domain, examples = score(generator, rows)
    body = {"schema": "hpc_aevo.split_score", "version": 2, "checkpoint": checkpoint and str(checkpoint),
            "checkpoint_sha256": sha256, "step": step, "score": overall, "per_domain": per_domain,
            "examples_per_domain": examples}
    write_json(out, body)
    return body


def evaluate_split(checkpoint: Path, sha256: str, recipe_path: Path, split_file: Path, out: Path,
                   engine: str = "auto") -> dict:
    """Score one export file on a split, only if its bytes have the sha256 the caller was told."""
    step = safe_weights.step_of(checkpoint.name)
    _, cfg, model = recipe_model(recipe_path)
    digest = load_export(model, checkpoint, sha256=sha256)
    return score_split(model, cfg, split_file, out, engine, checkpoint, digest, step)


def predict_split(checkpoint: Path, sha256: str, recipe_path: Path, prompts_file: Path, out: Path,
                  engine: str = "auto") -> dict:
    """Answer every prompt of a JSONL file with one export (only if its bytes have `sha256`); the caller
    scores the answers (the toolkit's jsonl leaderboard keeps them from this process)."""
    step = safe_weights.step_of(checkpoint.name)
    _, cfg, model = recipe_model(recipe_path)
    digest = load_export(model, checkpoint, sha256=sha256)
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines() if line.strip()]
    with open_engine(engine, model, cfg) as generator:
        outputs = answers(generator, prompts)
    body = {"schema": "hpc_aevo.predictions", "version": 1, "checkpoint_sha256": digest, "step": step,
            "outputs": outputs}
    write_json(out, body)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, help="a training output directory: scores its export/*.safetensors")
    parser.add_argument("--recipe", type=Path, help="the candidate's recipe: the model and tokenizer come from it")
    parser.add_argument("--checkpoint", type=Path, help="one export/ckpt-<step:06d>.safetensors")
    parser.add_argument("--sha256", help="with --checkpoint: the sha256 the file must have")
    parser.add_argument("--split-file", type=Path)
    parser.add_argument("--base-recipe", type=Path, help="score this recipe's model before training")
    parser.add_argument("--prompts-file", type=Path, help="with --checkpoint: a JSONL of prompts to answer")
    parser.add_argument("--predictions", type=Path, help="with --prompts-file: where the answers go")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="who generates the answers (auto: vLLM on a GPU, transformers on CPU, megatron for the GPT)")
    args = parser.parse_args()
    init_parallel(seed=0)
    torch.manual_seed(0)
    try:
        if args.base_recipe and args.split_file and args.out:
            _, cfg, model = recipe_model(args.base_recipe, before_training=True)
            score_split(model, cfg, args.split_file, args.out, args.engine, None, None, 0)
        elif args.checkpoint and args.prompts_file and args.predictions and args.recipe and args.sha256:
            predict_split(args.checkpoint, args.sha256, args.recipe, args.prompts_file, args.predictions, args.engine)
        elif args.checkpoint and args.split_file and args.recipe and args.sha256 and args.out:
            evaluate_split(args.checkpoint, args.sha256, args.recipe, args.split_file, args.out, args.engine)
        elif args.checkpoints and args.recipe and args.out:
            evaluate_checkpoints(args.checkpoints, args.recipe, args.out, args.engine)
        else:
            parser.error("give --checkpoints DIR --recipe RECIPE --out OUT, or --checkpoint FILE --sha256 HEX --recipe "
                         "RECIPE --split-file SPLIT --out OUT (or --prompts-file PROMPTS --predictions OUT), or "
                         "--base-recipe RECIPE --split-file SPLIT --out OUT")
    except (ValueError, yaml.YAMLError) as error:  # a refused checkpoint or recipe: one line, no traceback
        sys.exit(f"evaluate: {' '.join(str(error).split())}")


if __name__ == "__main__":
    data.datasets.disable_progress_bars()
    main()
