"""The rolling search policy: the only thing the meta step may rewrite between rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hpc_aevo.search.axes import AXES
from hpc_aevo.state.records import Record
from hpc_aevo.state.typed import SchemaError


@dataclass
class DeadEnd:
    """A registered "Don't waste budget on" entry: a mutation signature that did not pay."""

    axis: str
    change: str  # mutation signature, e.g. "data.mixture.sequence:up"
    round: int  # the round whose evidence registered it
    reason: str


@dataclass
class EvidenceRule:
    """What counts as evidence for promotion; changed by the meta step when the proxy decouples."""

    promote_on: Literal["leaderboard", "leaderboard_transfer"] = "leaderboard"
    downweighted_domains: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Policy(Record):
    """Policy for one round: standing recipe, axes, dead ends, noise band and promotion threshold.

    `round` is the round this policy governs; policy r+1 is written by the meta step of round r.
    """

    SCHEMA = "hpc_aevo.policy"
    VERSION = 1

    round: int
    standing_recipe: dict[str, Any]
    standing_source: str  # "substrate" or "r001/cand-02": where the standing recipe came from
    active_axes: list[str]
    retired_axes: list[str] = field(default_factory=list)
    dead_ends: list[DeadEnd] = field(default_factory=list)
    noise_band: float = 0.02  # leaderboard score band that anchor (seed) noise can explain
    dev_noise_band: float = 0.02  # the same band on the dev score
    promotion_threshold: float = 0.02  # minimum leaderboard gain over the anchor to promote
    evidence: EvidenceRule = field(default_factory=EvidenceRule)
    plateau_rounds: int = 0  # consecutive rounds without a leaderboard gain
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for i, axis in enumerate(self.active_axes + self.retired_axes):
            if axis not in AXES:
                raise SchemaError("active_axes" if i < len(self.active_axes) else "retired_axes",
                                  "axis names from " + ", ".join(AXES), axis)
        if not self.active_axes:
            raise SchemaError("active_axes", "at least one axis", self.active_axes)
        for name in ("noise_band", "dev_noise_band", "promotion_threshold"):
            if getattr(self, name) < 0:
                raise SchemaError(name, "a non-negative number", getattr(self, name))

    def dead_end_signatures(self) -> set[str]:
        return {d.change for d in self.dead_ends}


def assign_axes(policy: Policy, workers: int, round: int) -> list[str]:
    """The axis of each of `workers` workers: round-robin over the active axes, rotated by the round so
    that with fewer workers than axes every axis still gets its turn."""
    axes = policy.active_axes
    return [axes[(round + i) % len(axes)] for i in range(workers)]
