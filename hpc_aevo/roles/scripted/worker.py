"""The scripted worker: the offline backend's mutator, one operator on the candidate's axis.

It chooses the operator and its stride from the campaign's earlier evidence (search.py), is
deterministic per (round, candidate, seed) and that evidence, never repeats a registered dead end,
and writes only its sandbox.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from hpc_aevo.loop.fork import load_recipe, recipe_diff
from hpc_aevo.roles.interface import WorkerResult, WorkerTask
from hpc_aevo.roles.scripted.search import Choice, choose
from hpc_aevo.search.axes import AXES, has_key, mixture_key, signature
from hpc_aevo.search.constitution import SEED_KEY
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.contract import RECIPE_FILE
from hpc_aevo.state.manifest import Proposal
from hpc_aevo.state.records import atomic_write_text
from hpc_aevo.state.tree import StateTree

ACTOR = "scripted-worker"
ANCHOR_HYPOTHESIS = "anchor: standing recipe with a fresh seed measures seed noise"
NO_EFFECT = "none beyond seed noise"
SCHEDULES = ("cosine", "linear", "constant")  # the reference substrate's optim.schedule values
SELECTION_RULES = ("best_dev", "last", "best_min_domain")  # and its checkpoints.selection rules

Recipe = dict[str, Any]


def _get(recipe: Recipe, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node[part]
    return node


def _set(recipe: Recipe, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = recipe
    for part in parents:
        node = node[part]
    node[leaf] = value


@dataclass(frozen=True)
class Operator:
    """One mutation an axis offers: the key it is named by, the edit, and why it might pay."""

    key: str
    direction: str
    edit: Callable[[Recipe], None]  # changes a recipe in place
    why: str
    needs: str = ""  # the recipe key that must exist for the operator to apply (default: `key` itself)

    @property
    def signature(self) -> str:
        return signature(self.key, self.direction)

    def apply(self, recipe: Recipe, stride: int = 1) -> Recipe:
        """The recipe after `stride` edits (a setting's edit repeats to the same value; a number's bounds hold)."""
        mutated = copy.deepcopy(recipe)
        for _ in range(stride):
            self.edit(mutated)
        return mutated


def _setting(key: str, value: Any, why: str, direction: str | None = None) -> Operator:
    """An operator that sets `key` to a fixed value (named by the value unless `direction` is given)."""
    return Operator(key, direction or str(value), lambda recipe: _set(recipe, key, value), why)


def _numeric(key: str, direction: str, change: Callable[[float], float], lo: float, hi: float, why: str,
             then: Callable[[Recipe, Any], None] | None = None) -> Operator:
    """An operator that moves a number, keeping ints int; `then(recipe, old)` fixes the keys that depend
    on it. A bound in [lo, hi] stops a move but never reverses it: a value already past it stays."""

    def edit(recipe: Recipe) -> None:
        old = _get(recipe, key)
        new = change(old)
        new = min(new, max(hi, old)) if new > old else max(new, min(lo, old))
        _set(recipe, key, round(new) if isinstance(old, int) else float(f"{new:.4g}"))
        if then is not None:
            then(recipe, old)

    return Operator(key, direction, edit, why)


def _keep_checkpoint_count(recipe: Recipe, old_steps: int) -> None:
    """Scale checkpoints.every with optim.steps so the run still saves as many checkpoints."""
    if has_key(recipe, "checkpoints.every"):
        count = max(1, round(old_steps / _get(recipe, "checkpoints.every")))
        _set(recipe, "checkpoints.every", max(1, _get(recipe, "optim.steps") // count))


def _fit_heads(recipe: Recipe, _old_hidden: int) -> None:
    """Attention heads must divide the width: keep the largest head count that does, up to the current one."""
    if has_key(recipe, "model.heads"):
        hidden, heads = _get(recipe, "model.hidden"), _get(recipe, "model.heads")
        _set(recipe, "model.heads", max(h for h in range(1, heads + 1) if hidden % h == 0))


def _mixture(recipe: Recipe) -> list[Operator]:
    domains = list(_get(recipe, "data.mixture")) if has_key(recipe, "data.mixture") else []
    return [op for d in domains for op in (
        _numeric(mixture_key(d), "up", lambda w: w * 3, 0.01, 100.0,
                 f"more weight on {d} buys more practice on the domain where the leaderboard has headroom"),
        _numeric(mixture_key(d), "down", lambda w: w / 3, 0.01, 100.0,
                 f"less weight on {d} frees training examples for the other domains"),
    )]


def _filtering(_recipe: Recipe) -> list[Operator]:
    return [
        _setting("data.filter.dedupe", True, "dropping duplicate prompts spends the steps on new examples", "on"),
        _setting("data.filter.max_answer_chars", 6,
                 "dropping examples with answers over 6 characters focuses training on answers the model can learn",
                 "<=6"),
        _numeric("data.train_examples", "up", lambda n: n * 1.5, 1000, 24000,
                 "a larger training set repeats each example less and so overfits less"),
        _numeric("data.train_examples", "down", lambda n: n * 0.5, 1000, 24000,
                 "a smaller training set is seen more often, which may help a short run converge"),
    ]


def _schedule(recipe: Recipe) -> list[Operator]:
    steps = _get(recipe, "optim.steps") if has_key(recipe, "optim.steps") else 0
    return [
        _numeric("optim.lr", "up", lambda lr: lr * 2, 1e-4, 2e-2,
                 "a larger learning rate gets further within the step budget"),
        _numeric("optim.lr", "down", lambda lr: lr * 0.5, 1e-4, 2e-2, "a smaller learning rate makes steadier updates"),
        *(_setting("optim.schedule", s, f"a {s} decay shapes the late learning rate differently") for s in SCHEDULES),
        _numeric("optim.warmup_steps", "up", lambda w: w * 3, 0, steps // 2,
                 "a longer warmup avoids early instability at the peak learning rate"),
    ]


def _budget(_recipe: Recipe) -> list[Operator]:
    return [
        _numeric("optim.steps", "up", lambda n: n * 1.5, 100, 900, "more steps fit the training set further",
                 _keep_checkpoint_count),
        _numeric("optim.steps", "down", lambda n: n * 0.6, 100, 900, "fewer steps stop before overfitting",
                 _keep_checkpoint_count),
        _numeric("optim.batch_size", "up", lambda b: b * 2, 8, 64, "larger batches give smoother gradients"),
        _numeric("optim.batch_size", "down", lambda b: b * 0.5, 8, 64, "smaller batches add regularising gradient noise"),
    ]


def _capacity(_recipe: Recipe) -> list[Operator]:
    return [
        _numeric("model.hidden", "up", lambda h: h + 64, 64, 192, "a wider model has room for the harder domains",
                 _fit_heads),
        _numeric("model.hidden", "down", lambda h: h - 32, 64, 192, "a narrower model overfits less", _fit_heads),
        _numeric("model.layers", "up", lambda n: n + 1, 1, 4, "a deeper model can compose multi-step puzzle rules"),
        _numeric("model.layers", "down", lambda n: n - 1, 1, 4, "a shallower model is easier to optimise in a short run"),
    ]


def _router(recipe: Recipe) -> list[Operator]:
    """The router's knobs of a mixture of experts; a knob with a default may be absent from the recipe, so
    these need `model.moe` only. Each keeps the section valid (substrate/moe.py's rules)."""
    if not has_key(recipe, "model.moe"):
        return []
    section = _get(recipe, "model.moe")
    experts, balancing = int(section.get("experts", 2)), section.get("balancing", "aux_loss")
    ops = [_numeric("model.moe.top_k", "up", lambda k: k * 2, 2, experts,
                    "more experts per token raise the active capacity at the same parameter count"),
           _numeric("model.moe.top_k", "down", lambda k: k // 2, 2, experts,
                    "fewer experts per token specialise them and cost fewer FLOPs")]
    if balancing != "bias":  # megatron drops tokens with aux-loss or no balancing only
        ops.append(_setting("model.moe.capacity_factor", 1.25, "a capacity of 1.25x the even share drops the "
                            "overflow of hot experts, which forces balance", "capped"))
    if section.get("capacity_factor") is not None:
        ops.append(_setting("model.moe.capacity_factor", None, "dropless routing keeps every token's chosen experts",
                            "dropless"))
    if balancing == "aux_loss":
        coeff = float(section.get("aux_loss_coeff", 0.01))
        ops += [_setting("model.moe.aux_loss_coeff", float(f"{min(coeff * 3, 0.3):.4g}"),
                         "a heavier balancing loss keeps the router from collapsing onto few experts", "up"),
                _setting("model.moe.aux_loss_coeff", float(f"{coeff / 3:.4g}"),
                         "a lighter balancing loss lets the router specialise experts by domain", "down")]
    return [replace(op, needs="model.moe") for op in ops]


_SELECTION_WHY = {
    "best_dev": "shipping the best-dev checkpoint keeps the strongest measured model",
    "last": "shipping the last checkpoint stops selecting on dev noise",
    "best_min_domain": "shipping the checkpoint with the best weakest domain protects every leaderboard domain",
}


def _selection(_recipe: Recipe) -> list[Operator]:
    return [_setting("checkpoints.selection", rule, _SELECTION_WHY[rule]) for rule in SELECTION_RULES]


OPERATORS: dict[str, Callable[[Recipe], list[Operator]]] = {
    "mixture": _mixture,
    "filtering": _filtering,
    "schedule": _schedule,
    "budget": _budget,
    "capacity": _capacity,
    "selection": _selection,
    "router": _router,
}


def operators(axis: str, recipe: Recipe) -> list[Operator]:
    """The operators `axis` offers on `recipe`: those whose key the recipe has, in a stable order."""
    if axis not in OPERATORS:
        raise ValueError(f"no operators for axis {axis!r}; axes: {', '.join(OPERATORS)}")
    return [op for op in OPERATORS[axis](recipe) if has_key(recipe, op.needs or op.key)]


def _open_operators(axis: str, recipe: Recipe, policy: Policy) -> tuple[list[Operator], dict[str, list[str]]]:
    """The operators a worker may choose, and the skipped ones' signatures by reason."""
    dead = policy.dead_end_signatures()
    blocked = {signature(mixture_key(d), "up") for d in policy.evidence.downweighted_domains}
    skipped: dict[str, list[str]] = {"dead end": [], "up-weights a down-weighted domain": [], "no change": []}
    open_ops = []
    for op in operators(axis, recipe):
        if op.signature in dead:
            skipped["dead end"].append(op.signature)
        elif op.signature in blocked:
            skipped["up-weights a down-weighted domain"].append(op.signature)
        elif op.apply(recipe) == recipe:
            skipped["no change"].append(op.signature)
        else:
            open_ops.append(op)
    return open_ops, {reason: sigs for reason, sigs in skipped.items() if sigs}


def _changes(diff: dict[str, list[Any]]) -> str:
    return "; ".join(f"{key} {old} -> {new}" for key, (old, new) in sorted(diff.items()) if key != SEED_KEY)


def _skipped_text(skipped: dict[str, list[str]]) -> str:
    return "; ".join(f"{reason}: {', '.join(sigs)}" for reason, sigs in skipped.items()) or "none"


def _rationale(task: WorkerTask, skipped: dict[str, list[str]]) -> str:
    policy, axis = task.policy, AXES[str(task.axis)]
    note = f" Evidence rule: {policy.evidence.note}." if policy.evidence.note else ""
    return (f"Policy round {policy.round} assigns {task.name} the {axis.name} axis ({axis.category}: "
            f"{axis.description}) on the standing recipe from {policy.standing_source}. Skipped operators: "
            f"{_skipped_text(skipped)}.{note}")


def _search_text(choice: Choice) -> str:
    arms = ", ".join(f"{a.signature} {a.mean:+.4f} ± {a.sd:.4f} (n {a.n:g})" for a in choice.arms)
    return (f"Chosen by Thompson sampling over the open operators, told {choice.observations} measured candidates "
            f"(posterior leaderboard gain: {arms}); stride {choice.stride}.")


class ScriptedWorker:
    """The offline worker: one open operator of the assigned axis, chosen from the campaign's evidence so far
    (none without a state tree), applied to the sandbox recipe."""

    def __init__(self, tree: StateTree | None = None):
        self.tree = tree

    def _history(self, rnd: int) -> list[RoundEvidence]:
        """The evidence of every round before `rnd` (written once per round, so a restart reads the same)."""
        if self.tree is None:
            return []
        paths = [self.tree.evidence_json(r) for r in range(rnd)]
        return [RoundEvidence.load(p) for p in paths if p.exists()]

    def propose(self, task: WorkerTask) -> WorkerResult:
        path = Path(task.sandbox) / RECIPE_FILE
        before = load_recipe(task.sandbox)
        task.trace.log(ACTOR, "read-recipe", path=str(path), role=task.role, axis=task.axis)
        if task.role == "anchor":
            op, stride, proposal = None, 1, Proposal(
                hypothesis=ANCHOR_HYPOTHESIS, expected_effect=NO_EFFECT,
                rationale=(f"{task.name} anchors round {task.round}: the standing recipe from "
                           f"{task.policy.standing_source}, seed {task.seed}; the anchors' spread sets the noise band "
                           f"(now {task.policy.noise_band:.3f})"))
            task.trace.log(ACTOR, "mutation", signature=None, reason="anchor")
        else:
            op, stride, proposal = self._choose(task, before)
        after = op.apply(before, stride) if op else copy.deepcopy(before)
        after[SEED_KEY] = task.seed
        atomic_write_text(path, yaml.safe_dump(after, sort_keys=False))
        task.trace.log(ACTOR, "wrote-recipe", path=str(path), diff=recipe_diff(before, after))
        return WorkerResult(op.signature if op else None, proposal)

    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        """The scripted mutator has no debugging skill: the retry runs the same sandbox."""
        return None

    def _choose(self, task: WorkerTask, recipe: Recipe) -> tuple[Operator | None, int, Proposal]:
        if task.axis not in AXES:
            raise ValueError(f"{task.name}: a worker needs an axis from {', '.join(AXES)} (got {task.axis!r})")
        candidates, skipped = _open_operators(task.axis, recipe, task.policy)
        rationale = _rationale(task, skipped)
        if not candidates:
            task.trace.log(ACTOR, "mutation", signature=None, skipped=skipped)
            return None, 1, Proposal(
                hypothesis=(f"no mutation: every {task.axis} operator is a dead end, blocked or without effect "
                            f"({_skipped_text(skipped)}); the standing recipe runs with seed {task.seed}"),
                rationale=rationale, expected_effect=NO_EFFECT)
        rng = random.Random(f"{task.round}:{task.candidate}:{task.seed}")
        choice = choose([c.signature for c in candidates], self._history(task.round), task.policy, rng)
        op = next(c for c in candidates if c.signature == choice.signature)
        task.trace.log(ACTOR, "mutation", signature=op.signature, stride=choice.stride,
                       open=[c.signature for c in candidates], skipped=skipped,
                       posterior={a.signature: [a.n, a.mean, a.sd, a.draw] for a in choice.arms})
        return op, choice.stride, Proposal(
            hypothesis=f"{op.why} ({_changes(recipe_diff(recipe, op.apply(recipe, choice.stride)))})",
            rationale=f"{rationale} {_search_text(choice)}",
            expected_effect=(f"raise the leaderboard score (and dev) above the anchors by more than the noise band "
                             f"{task.policy.noise_band:.3f}"))
