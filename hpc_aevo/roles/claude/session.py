"""One agent session over claude-agent-sdk: run it, trace every tool call and denial, account its cost.

Why one runner for all roles: workers, the collector and the meta differ only in their prompt,
tools and confinement (`SessionSpec`); how a session is started (an isolated CLI home, limits from
the campaign YAML), how its tool calls and denials reach the trace, and how its tokens, cost and
wall time are recorded (`AgentSession`) must be the same for all of them. A session that errors,
hits its turn cap or runs out of budget returns a record saying so; it never raises into the round.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hpc_aevo.roles.claude import reaper
from hpc_aevo.sandbox import bwrap, pids
from hpc_aevo.state.records import Record, now_iso
from hpc_aevo.state.trace import Trace

# The CLI talks only to the Messages API: no telemetry, update checks or error reports from a login node.
QUIET_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
             "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1"}

# How the CLI answers a tool call it refused, and which layer refused it.
CLI_DENIALS = {"Permission to use": "permission-rule", "denied by your permission settings": "permission-rule",
               "No such tool available": "not-offered"}
TOOL_REFUSAL = "refused"  # how this package's own tools begin an answer that refuses the call
# What a command the OS sandbox stopped prints (read-only mounts, hidden paths, no network).
OS_DENIALS = re.compile("|".join((
    "Read-only file system", "Permission denied", "Operation not permitted", "No such file or directory",
    "No such process", "Network is unreachable", "Connection refused", "Temporary failure in name resolution",
    "Host name lookup failure", "Name or service not known")))

# The credentials a session may use, in order: each is sent as both X-Api-Key and Bearer by apiKeyHelper.
CREDENTIALS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
# Refused: the CLI reads it from its environment only, and would hand it to every Bash command.
OAUTH_TOKEN = "CLAUDE_CODE_OAUTH_TOKEN"
_api_key: str | None = None  # the credential, once take_api_key() moved it out of the environment


def take_api_key() -> None:
    """Move every Anthropic credential out of this process's environment: the jobs the daemon starts run
    code a worker may have written and inherit the environment; sessions still get the key (through
    apiKeyHelper, which the CLI runs itself, so neither its Bash nor its tools see it)."""
    global _api_key
    found = [os.environ.pop(name, None) for name in CREDENTIALS]
    os.environ.pop(OAUTH_TOKEN, None)
    _api_key = next((key for key in found if key), None) or _api_key


Guard = Callable[[str, dict[str, Any]], "str | None"]  # (tool name, tool input) -> denial reason or None


@dataclass
class Limits:
    """The campaign's agent limits for one session (agents.* of the campaign YAML)."""

    model: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    max_wall_s: float | None = None  # the session and everything it started are killed after this
    max_processes: int | None = None  # the session's cap on processes and threads (a pids cgroup, where one can be made)


@dataclass
class AgentSession(Record):
    """What one agent session did and cost: written when it ends, read by `status` and the round budget."""

    SCHEMA = "hpc_aevo.agent_session"
    VERSION = 1

    role: str  # "worker", "debug", "collector", "meta"
    round: int
    who: str  # "cand-03", "collector", "meta"
    session_id: str | None
    model: str | None
    started_at: str
    wall_s: float
    outcome: str  # the SDK result subtype ("success", "error_max_turns", ...), "error_max_wall_time" or "crashed"
    is_error: bool
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    denials: int = 0
    message: str = ""
    result_seen: bool = False  # the CLI's result message arrived (its numbers are the CLI's own)

    @property
    def ok(self) -> bool:
        return not self.is_error and self.outcome == "success"


@dataclass
class SessionSpec:
    """Everything that makes a session one role's: prompt, tools, confinement, where it writes."""

    role: str
    round: int
    who: str
    prompt: str
    system_prompt: str
    cwd: Path
    home: Path  # the CLI's HOME and config dir (its transcripts: a debug turn resumes from them)
    record_path: Path
    trace: Trace
    limits: Limits
    tools: list[str] = field(default_factory=list)  # built-in tools offered
    allow: list[str] = field(default_factory=list)  # permission allow rules (everything else: denied, dontAsk)
    deny: list[str] = field(default_factory=list)
    sandbox: dict[str, Any] | None = None  # the CLI's OS sandbox settings for Bash
    mcp_server: Any = None  # an SDK MCP server config (create_sdk_mcp_server)
    mcp_name: str = "hpc"
    guard: Guard | None = None  # PreToolUse check: defence in depth behind the permission rules
    resume: str | None = None  # session id to resume (the debug turn)


def tool_result(text: str, error: bool = False) -> dict[str, Any]:
    """An in-process MCP tool's answer; a refusal starts with TOOL_REFUSAL and is traced as a denial."""
    return {"content": [{"type": "text", "text": text}], **({"is_error": True} if error else {})}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(c.get("text", c)) if isinstance(c, dict) else str(c) for c in content)
    return "" if content is None else str(content)


def _short(value: Any, limit: int = 600) -> Any:
    text = value if isinstance(value, str) else repr(value)
    return value if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def keys_dir() -> Path:
    """One private parent of every session's key file (0700, per uid), hidden from the OS sandbox as a
    whole: a key file left behind by a session killed with the daemon stays hidden from later sessions."""
    path = Path(tempfile.gettempdir()) / f"hpc-agent-keys-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _settings(spec: SessionSpec, secrets: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The CLI's flag settings and the environment entries they need.

    The API key does not reach the CLI through its environment, which Bash would inherit: it is
    written to a file in `secrets` (hidden from the OS sandbox) that the CLI reads through apiKeyHelper.
    """
    settings: dict[str, Any] = {"permissions": {"allow": spec.allow, "deny": spec.deny, "defaultMode": "dontAsk"}}
    env: dict[str, str] = {}
    if spec.sandbox is not None:
        settings["sandbox"] = copy.deepcopy(spec.sandbox)
        settings["sandbox"].setdefault("filesystem", {}).setdefault("denyRead", []).append(str(keys_dir()))
        # Inside `powerless`, the /proc Bash sees is that layer's: its own pids, the kernel's knobs read-only.
        # A fresh one cannot be mounted beneath those read-only knobs, and would make them writable again.
        settings["sandbox"]["enableWeakerNestedSandbox"] = powerless_here()
    key = next((os.environ[name] for name in CREDENTIALS if os.environ.get(name)), None) or _api_key
    if key:
        keyfile = secrets / "api-key"
        keyfile.touch(mode=0o600)
        keyfile.write_text(key)
        settings["apiKeyHelper"] = f"cat {shlex.quote(str(keyfile))}"
        env.update({name: "" for name in (*CREDENTIALS, OAUTH_TOKEN)})
    return settings, env


def _bundled_cli() -> Path:
    import claude_agent_sdk

    return Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


@functools.lru_cache(maxsize=1)
def powerless_here() -> bool:
    """Whether sessions run their CLI under `bwrap.powerless` here: bubblewrap with user namespaces, and the
    CLI the SDK bundles (the one the launcher runs)."""
    return _bundled_cli().is_file() and bwrap.available("--unshare-user", "--uid", str(os.getuid() or bwrap.NOBODY),
                                                        "--unshare-ipc")


def _cli(spec: SessionSpec, scratch: str, cap: pids.Cap) -> str | None:
    """A launcher that runs the bundled CLI in the session's pids cgroup and under `bwrap.powerless`, as far
    as this host has them (None: the SDK runs the CLI itself)."""
    bundled = [str(_bundled_cli())]
    argv = cap.argv(bwrap.powerless(bundled, spec.cwd) if powerless_here() else bundled)
    if argv == bundled or not os.path.isfile(bundled[0]):
        return None
    launcher = Path(scratch) / "claude"
    launcher.write_text(f"#!/bin/sh\nexec {shlex.join(argv)} \"$@\"\n")
    launcher.chmod(0o700)
    return str(launcher)


def _options(spec: SessionSpec, hook_denied: dict[str, str], scratch: str, secrets: str, marker: str, cap: pids.Cap):
    import json

    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher

    async def pre_tool_use(data: dict[str, Any], tool_use_id: str | None, _ctx: Any) -> dict[str, Any]:
        reason = spec.guard(data["tool_name"], data.get("tool_input") or {}) if spec.guard else None
        if reason is None:
            return {}
        hook_denied[tool_use_id or data.get("tool_use_id", "")] = reason
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                       "permissionDecisionReason": reason}}

    home = spec.home.resolve()
    (home / "config").mkdir(parents=True, exist_ok=True)
    settings, key_env = _settings(spec, Path(secrets))
    env = {**QUIET_ENV, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / "config"),
           "TMPDIR": scratch, "CLAUDE_CODE_TMPDIR": scratch, reaper.MARKER: marker, **key_env}
    return ClaudeAgentOptions(
        tools=spec.tools, allowed_tools=[], disallowed_tools=spec.deny, system_prompt=spec.system_prompt,
        mcp_servers={spec.mcp_name: spec.mcp_server} if spec.mcp_server else {}, strict_mcp_config=True,
        permission_mode="dontAsk", max_turns=spec.limits.max_turns, max_budget_usd=spec.limits.max_budget_usd,
        model=spec.limits.model, cwd=str(spec.cwd), settings=json.dumps(settings), setting_sources=[],
        env=env, resume=spec.resume, verbatim_prompts=True, cli_path=_cli(spec, scratch, cap),
        hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[pre_tool_use], on_failure="block")]})


def _log_result(trace: Trace, actor: str, block: Any, tool: str | None, hook_denied: dict[str, str],
                record: AgentSession, denied: set[str]) -> None:
    """One tool result into the trace: a denial (by the PreToolUse guard or a CLI permission rule) with
    its reason, an error (e.g. the OS sandbox refusing a write), or the result's head."""
    content = _text(block.content)
    if block.tool_use_id in hook_denied:
        event, layer, detail = "tool-denied", "hook", hook_denied[block.tool_use_id]
    elif block.is_error and any(marker in content for marker in CLI_DENIALS):
        layer = next(layer for marker, layer in CLI_DENIALS.items() if marker in content)
        event, detail = "tool-denied", content
    elif block.is_error and (tool or "").startswith("mcp__") and content.startswith(TOOL_REFUSAL):
        event, layer, detail = "tool-denied", "tool", content
    elif tool == "Bash" and block.is_error and OS_DENIALS.search(content):  # a command that succeeded was not denied
        event, layer, detail = "tool-denied", "os-sandbox", content
    else:
        event, layer, detail = ("tool-error" if block.is_error else "tool-result"), None, content
    if event == "tool-denied":
        record.denials += 1
        denied.add(block.tool_use_id)
    trace.log(actor, event, tool=tool, id=block.tool_use_id, **({"layer": layer} if layer else {}),
              **({"reason": _short(detail)} if event == "tool-denied" else {"output": _short(detail, 400)}))


async def _drive(spec: SessionSpec, record: AgentSession, marker: str, cap: pids.Cap) -> None:
    import anyio
    from claude_agent_sdk import query

    hook_denied: dict[str, str] = {}  # tool_use_id -> reason, for calls the PreToolUse guard refused
    names: dict[str, str] = {}  # tool_use_id -> tool name
    denied: set[str] = set()  # tool_use_ids traced as denied
    # A short temp dir: the OS sandbox's bridge sockets live there, and a Unix socket path has 108 bytes at most.
    with tempfile.TemporaryDirectory(prefix="hpc-agent-") as scratch, \
            tempfile.TemporaryDirectory(dir=keys_dir()) as secrets, anyio.fail_after(spec.limits.max_wall_s):
        messages = query(prompt=spec.prompt, options=_options(spec, hook_denied, scratch, secrets, marker, cap))
        try:
            async for message in messages:
                _observe(spec, record, message, names, hook_denied, denied)
                if record.result_seen:  # the session is over: a background command must not hold the CLI open
                    break
        finally:
            await messages.aclose()  # stdin EOF, a grace period for the transcript, then SIGTERM
    if not record.result_seen:
        raise RuntimeError("the CLI ended without a result message")


def _observe(spec: SessionSpec, record: AgentSession, message: Any, names: dict[str, str],
             hook_denied: dict[str, str], denied: set[str]) -> None:
    """Trace one message of the session: tool calls, their results and denials, and the final accounting."""
    from claude_agent_sdk import AssistantMessage, ResultMessage, ToolResultBlock, ToolUseBlock, UserMessage

    actor = f"agent:{spec.role}"
    if isinstance(message, AssistantMessage):
        record.session_id = message.session_id or record.session_id
        for block in message.content:
            if isinstance(block, ToolUseBlock):
                names[block.id] = block.name
                record.tool_calls += 1
                spec.trace.log(actor, "tool-call", tool=block.name, input=_short(block.input), id=block.id)
    elif isinstance(message, UserMessage) and isinstance(message.content, list):
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                _log_result(spec.trace, actor, block, names.get(block.tool_use_id), hook_denied, record, denied)
    elif isinstance(message, ResultMessage):
        _account(record, message)  # before the SDK raises on an error result
        _log_permission_denials(spec.trace, actor, message, names, record, denied)


def _log_permission_denials(trace: Trace, actor: str, result: Any, names: dict[str, str], record: AgentSession,
                            denied: set[str]) -> None:
    """The CLI's own list of the calls its permission rules refused: each one not yet traced as a denial
    (its answer read like a plain error) is traced now, so every refusal is counted once."""
    for entry in result.permission_denials or []:
        get = entry.get if isinstance(entry, dict) else lambda key, e=entry: getattr(e, key, None)
        call = get("tool_use_id")
        if not call or call in denied:
            continue
        denied.add(call)
        record.denials += 1
        trace.log(actor, "tool-denied", tool=get("tool_name") or names.get(call), id=call, layer="permission-rule",
                  reason="refused by the permission rules (the CLI's result lists it)")


def _account(record: AgentSession, result: Any) -> None:
    usage = result.usage or {}
    record.result_seen = True
    record.session_id = result.session_id
    record.outcome, record.is_error, record.turns = result.subtype, result.is_error, result.num_turns
    record.input_tokens = int(usage.get("input_tokens") or 0)
    record.output_tokens = int(usage.get("output_tokens") or 0)
    record.cache_read_tokens = int(usage.get("cache_read_input_tokens") or 0)
    record.cache_creation_tokens = int(usage.get("cache_creation_input_tokens") or 0)
    record.cost_usd = float(result.total_cost_usd or 0.0)
    record.message = _short(result.result or "; ".join(result.errors or []), 2000)


def reap_leftovers(trace: Trace) -> int:
    """Kill whatever the sessions recorded in `trace` left running (a daemon killed mid-session leaves
    the CLI and its commands behind); returns how many processes were killed."""
    markers = {e["marker"] for e in trace.events() if e.get("event") == "session-start" and e.get("marker")}
    killed = sum(reaper.reap(marker) for marker in sorted(markers))
    if killed:
        trace.log("daemon", "session-reaped", processes=killed)
    return killed


def run_session(spec: SessionSpec) -> AgentSession:
    """Run `spec` to its end, at most its wall-clock cap; every process it started is killed when it ends.
    The record (also saved at spec.record_path) says how it went."""
    reap_leftovers(spec.trace)
    record = AgentSession(role=spec.role, round=spec.round, who=spec.who, session_id=spec.resume,
                          model=spec.limits.model, started_at=now_iso(), wall_s=0.0, outcome="crashed", is_error=True)
    marker = reaper.new_marker()
    cap = pids.Cap.create(marker, spec.limits.max_processes) if spec.limits.max_processes else pids.Cap(None)
    spec.trace.log(f"agent:{spec.role}", "session-start", who=spec.who, resume=spec.resume, tools=spec.tools,
                   model=spec.limits.model, max_turns=spec.limits.max_turns, max_budget_usd=spec.limits.max_budget_usd,
                   max_wall_s=spec.limits.max_wall_s, marker=marker, record=str(spec.record_path),
                   max_processes=spec.limits.max_processes if cap.path else None, powerless=powerless_here(),
                   **({"unlimited": cap.why} if cap.why else {}))
    started = time.monotonic()
    try:
        import anyio  # with claude-agent-sdk (the agents extra)

        anyio.run(_drive, spec, record, marker, cap)
    except TimeoutError:
        record.outcome, record.is_error = "error_max_wall_time", True
        record.message = f"stopped at its wall-clock cap of {spec.limits.max_wall_s:g} s (agents.max_session_minutes)"
    except Exception as exc:  # the CLI or SDK failed: the session fails, never the campaign
        if not record.result_seen:  # an error result (max turns, budget) is also raised: keep its accounting
            record.outcome, record.is_error, record.message = "crashed", True, _short(f"{type(exc).__name__}: {exc}", 2000)
    finally:
        left = reaper.reap(marker)  # background commands, and a CLI that did not exit with its session
    record.wall_s = round(time.monotonic() - started, 3)
    record.save(spec.record_path)
    spec.trace.log(f"agent:{spec.role}", "session-end", who=spec.who, outcome=record.outcome, is_error=record.is_error,
                   session_id=record.session_id, turns=record.turns, cost_usd=record.cost_usd,
                   input_tokens=record.input_tokens, output_tokens=record.output_tokens, wall_s=record.wall_s,
                   tool_calls=record.tool_calls, denials=record.denials, message=_short(record.message, 300),
                   reaped=left)
    return record


def session_env_ok() -> str | None:
    """Why the claude backend cannot run here (None when it can): the SDK and its bundled CLI must be installed."""
    try:
        import claude_agent_sdk  # noqa: F401
    except ImportError:
        return "claude-agent-sdk is not installed (pip install '.[agents]')"
    if not (_api_key or any(os.environ.get(name) for name in CREDENTIALS)):
        if os.environ.get(OAUTH_TOKEN):
            return (f"{OAUTH_TOKEN} is not used: the CLI keeps it in its environment, which every Bash command "
                    "of a worker inherits; export ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) instead")
        return "no ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) in the environment"
    return None
