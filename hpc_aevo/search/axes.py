"""The catalogue of mutation axes and the categories the constitution rotates between.

An axis is a direction a worker may explore (the data mixture, the schedule, ...). Axes belong
to categories; when the leaderboard plateaus, the meta step must rotate to other categories.
Each axis owns an area of the recipe, so the audit can tell an on-axis edit from a stray one, and a
mutation is named by a stable signature so the dead-end registry can match it across rounds. An axis
may need a part of the recipe to exist (the router's knobs need a mixture of experts, `model.moe`):
it is rotated into only where the standing recipe has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpc_aevo.state.contract import recipe_value


@dataclass(frozen=True)
class Axis:
    name: str
    category: str
    description: str
    recipe_areas: tuple[str, ...]  # dotted recipe keys (or their parents) this axis may change
    requires: str | None = None  # a dotted recipe key the axis needs to exist (None: every recipe has it)


AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis("mixture", "data", "re-weight the per-domain mixture of the constructed training set",
             ("data.mixture",)),
        Axis("filtering", "data", "filter the constructed training examples (length, difficulty)",
             ("data.filter", "data.train_examples")),
        Axis("schedule", "optimization", "learning rate, warmup and decay schedule",
             ("optim.lr", "optim.schedule", "optim.warmup_steps", "optim.weight_decay")),
        Axis("budget", "optimization", "training steps and batch size",
             ("optim.steps", "optim.batch_size", "checkpoints.every")),
        Axis("capacity", "architecture", "model width and depth", ("model.hidden", "model.layers", "model.heads")),
        Axis("selection", "selection", "the rule that picks the checkpoint to ship", ("checkpoints.selection",)),
        Axis("router", "routing", "the mixture-of-experts router: experts per token, load balancing (aux-loss "
             "weight or aux-loss-free bias), token capacity",
             ("model.moe.top_k", "model.moe.balancing", "model.moe.aux_loss_coeff", "model.moe.bias_update_rate",
              "model.moe.capacity_factor"), requires="model.moe"),
    )
}

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(a.category for a in AXES.values()))


def category_of(axis: str) -> str:
    return AXES[axis].category


def categories_of(axes: list[str]) -> set[str]:
    return {category_of(a) for a in axes}


def applies(axis: str, recipe: dict | None) -> bool:
    """Whether the axis can mutate `recipe` (its `requires` key exists there; with no recipe, only the axes
    that need nothing)."""
    need = AXES[axis].requires
    return need is None or (recipe is not None and has_key(recipe, need))


def axis_allows(axis: str | None, key: str) -> bool:
    """Whether dotted recipe `key` lies in the area of the axis named `axis` (never for an unknown axis)."""
    areas = AXES[axis].recipe_areas if axis in AXES else ()
    return any(key == area or key.startswith(area + ".") for area in areas)


def signature(key: str, direction: str) -> str:
    """A mutation's stable name, "<recipe key>:<direction>" (e.g. "optim.lr:down"): no current values,
    so the same edit has the same signature in every round."""
    return f"{key}:{direction}"


def mixture_key(domain: str) -> str:
    """The recipe key of one domain's mixture weight, e.g. "data.mixture.sequence"."""
    return f"{AXES['mixture'].recipe_areas[0]}.{domain}"


_ABSENT = object()  # has_key's answer for a path that is not there


def has_key(recipe: dict[str, Any], dotted: str) -> bool:
    """Whether the recipe has the dotted key ("optim.lr"): what an axis can mutate must be there."""
    return recipe_value(recipe, dotted, _ABSENT) is not _ABSENT
