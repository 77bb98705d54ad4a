"""Choose the campaign's roles backend in one place: `agents.backend` names it."""

from __future__ import annotations

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.roles.interface import Roles
from hpc_aevo.roles.scripted.roles import ScriptedRoles
from hpc_aevo.state.tree import StateTree

BACKENDS = ("scripted", "claude")


def make_roles(backend: str, campaign: Campaign | None = None, tree: StateTree | None = None) -> Roles:
    """The roles of `backend`; the claude backend needs the campaign (limits, protected paths) and its tree."""
    if backend not in BACKENDS:
        raise ConfigError("agents.backend", f"one of {', '.join(BACKENDS)} (unknown agents.backend)", backend)
    if backend == "scripted":
        return ScriptedRoles(tree)
    from hpc_aevo.roles.claude.backend import claude_roles  # the agents extra: claude-agent-sdk

    return claude_roles(campaign, tree)
