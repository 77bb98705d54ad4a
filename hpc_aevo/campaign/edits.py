"""Steering a running campaign by editing its YAML: which keys an edit may change, and when.

The daemon re-reads the campaign file at every phase boundary (`Daemon.steer`). An edit of a key that
defines the campaign (its name, state tree, substrate, policy files, how the leaderboard scores, the
backend) is refused in one line and the daemon carries on with the values it has; a restart would read
the file anew, and the daemon's own checks say there what may not change. The candidate counts take
effect at the next round (a forked round expects the candidates it forked); everything else (budget,
quota, retries, scheduler settings, rounds, the agents' limits) applies to what is submitted next.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.state.typed import to_data

FIXED = ("name", "state_root", "substrate", "policy", "seed", "agents.backend", "scheduler.backend",
         "scheduler.profile", "scheduler.confine_jobs", "leaderboard.adapter", "leaderboard.heldout",
         "leaderboard.rule", "leaderboard.tolerance", "leaderboard.pattern", "leaderboard.command")
BETWEEN_ROUNDS = ("anchors", "workers_per_round")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: data}


def _keys(campaign: Campaign) -> dict[str, Any]:
    """The campaign's keys as the file sets them (dotted), without what loading adds (paths, hash)."""
    return _flat({f.name: to_data(getattr(campaign, f.name)) for f in dataclasses.fields(campaign) if f.init})


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass
class Edit:
    """The keys an edit of the campaign file changes, old and new value each."""

    changes: dict[str, tuple[Any, Any]]

    @classmethod
    def between(cls, old: Campaign, new: Campaign) -> "Edit":
        before, after = _keys(old), _keys(new)
        return cls({k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())
                    if before.get(k) != after.get(k)})

    @property
    def fixed(self) -> list[str]:
        return [k for k in self.changes if _under(k, FIXED)]

    @property
    def waiting(self) -> list[str]:
        """Keys that take effect only when the next round starts."""
        return [k for k in self.changes if _under(k, BETWEEN_ROUNDS)]

    def describe(self, keys: list[str] | None = None) -> str:
        return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changes.items()
                         if keys is None or k in keys)


def applicable(old: Campaign, new: Campaign, round_start: bool) -> Campaign:
    """`new`, but with the values of `old` for the keys that must wait for the next round (when not at one)."""
    if round_start:
        return new
    merged = dataclasses.replace(new, **{k: getattr(old, k) for k in BETWEEN_ROUNDS})
    merged.source, merged.sha256, merged.paths = new.source, new.sha256, new.paths  # not init fields
    return merged
