"""The catalogue of mutation axes and the categories the constitution rotates between.

An axis is a direction a worker may explore (the data mixture, the schedule, ...). Axes belong
to categories; when the leaderboard plateaus, the meta step must rotate to other categories.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    name: str
    category: str
    description: str


AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis("mixture", "data", "re-weight the per-domain mixture of the constructed training set"),
        Axis("filtering", "data", "filter the constructed training examples (length, difficulty)"),
        Axis("schedule", "optimization", "learning rate, warmup and decay schedule"),
        Axis("budget", "optimization", "training steps and batch size"),
        Axis("capacity", "architecture", "model width and depth"),
        Axis("selection", "selection", "the rule that picks the checkpoint to ship"),
    )
}

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(a.category for a in AXES.values()))


def category_of(axis: str) -> str:
    return AXES[axis].category


def categories_of(axes: list[str]) -> set[str]:
    return {category_of(a) for a in axes}
