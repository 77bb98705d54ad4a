"""The `claude` agent backend: workers, collector and meta as Claude Code sessions (claude-agent-sdk).

Each role is a session of the real Claude Code CLI bundled in the SDK wheel (session.py), confined
by the tools, permission rules and OS sandbox it is given (confine.py), with in-process MCP tools
for what the role may do. Costs and tokens of every session are records under the round
(spend.py). Nothing here is imported unless a campaign sets `agents.backend: claude`.
"""

from __future__ import annotations

from ..config import Campaign, ConfigError
from ..state import StateTree
from .session import session_env_ok


def _check(campaign: Campaign | None, tree: StateTree | None) -> None:
    if campaign is None or tree is None:
        raise ConfigError("agents.backend", "scripted, or claude with a campaign: the claude backend needs the "
                                            "campaign and its state tree", "claude")
    why = session_env_ok()
    if why:
        raise ConfigError("agents.backend", f"scripted, or claude on a host where it can run ({why})", "claude",
                          str(campaign.source))


def claude_worker(campaign: Campaign | None, tree: StateTree | None):
    _check(campaign, tree)
    from .worker import ClaudeWorker

    return ClaudeWorker(campaign, tree)
