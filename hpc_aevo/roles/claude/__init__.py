"""The `claude` roles backend: workers, collector and meta as Claude Code sessions (claude-agent-sdk).

Each role is a session of the real Claude Code CLI bundled in the SDK wheel (session.py), confined
by the tools, permission rules and OS sandbox it is given (hpc_aevo/sandbox/agents.py), with
in-process MCP tools for what the role may do. Costs and tokens of every session are records under
the round (spend.py). Nothing here is imported unless a campaign sets `agents.backend: claude`.
"""
