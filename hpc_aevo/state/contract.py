"""The file names a substrate promises the toolkit (substrate/README.md is the contract in prose).

A substrate directory holds its recipe, its trainer and its evaluator; the trainer writes a summary
beside its checkpoints and the evaluator one record of dev scores. These names are fixed for every
substrate, the reference one and a user's, so the toolkit names them here once; and how a recipe's keys
are named (dotted paths, "optim.lr").
"""

from typing import Any

RECIPE_FILE = "recipe.yaml"  # the one file a worker's mutation is recorded against
MAX_RECIPE_BYTES = 256 * 1024  # a recipe is a few hundred bytes; the toolkit reads no more than this
TRAIN_SCRIPT = "train.py"  # run in the sandbox: python train.py --recipe recipe.yaml --out CHECKPOINTS
EVALUATOR = "evaluate.py"  # run from the frozen default/ only, never a sandbox's copy
REQUIRED_FILES = (RECIPE_FILE, TRAIN_SCRIPT, EVALUATOR)
TRAIN_SUMMARY = "train_summary.json"  # the trainer's summary, beside its checkpoints
EVAL_RESULT = "eval.json"  # the evaluator's record of the dev split
SCORE_RESULT = "score.json"  # the evaluator's record of one checkpoint scored on a split (the leaderboard's)
PREDICTIONS = "predictions.json"  # the evaluator's answers to a prompts file (the jsonl leaderboard's score job)

_REQUIRED = object()  # recipe_value's default: a missing key is a KeyError


def recipe_value(recipe: dict[str, Any], dotted: str, default: Any = _REQUIRED) -> Any:
    """The value at a dotted key of a recipe ("optim.lr"); `default` where a part of the path is missing."""
    node: Any = recipe
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _REQUIRED:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node
