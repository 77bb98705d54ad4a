"""The Claude worker: a fresh, memory-free session per candidate that edits its sandbox along its axis.

Its world is the sandbox (see confine.py). Besides the file tools (and Bash where the OS sandbox
holds) it gets three in-process tools for what a worker legitimately needs: a smoke test of its
recipe (a few CPU steps under bubblewrap), its own candidate's job logs and trace, and recording the
proposal fields an agent may write. Measured fields are not among them: the tool rejects any other
key. When the candidate's job fails, the same session is resumed with the log (the debug turn).
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.jobs.spec import log_tail
from hpc_aevo.loop.fork import load_recipe, recipe_diff
from hpc_aevo.roles.claude.session import AgentSession, SessionSpec, tool_result
from hpc_aevo.roles.claude.spend import RoundSpend, limits_for
from hpc_aevo.roles.interface import WorkerFailed, WorkerResult, WorkerTask
from hpc_aevo.roles.scripted.worker import ScriptedWorker
from hpc_aevo.sandbox import bwrap, pids
from hpc_aevo.sandbox.agents import Confinement
from hpc_aevo.search.axes import AXES, signature
from hpc_aevo.search.constitution import SEED_KEY
from hpc_aevo.state.contract import RECIPE_FILE, TRAIN_SCRIPT
from hpc_aevo.state.manifest import Proposal
from hpc_aevo.state.records import atomic_write_text, read_jsonl
from hpc_aevo.state.tree import CandidateRef, StateTree, attempt_logs, attempt_outcomes
from hpc_aevo.state.typed import to_data
from hpc_aevo.state.untrusted import UntrustedFile

PACKAGE_DIR = Path(__file__).resolve().parents[2]
MUNGE_DIR = Path("/etc/munge")
SERVER = "hpc"
PROPOSAL_FIELDS = ("hypothesis", "axis", "rationale", "expected_effect", "failure_modes")
SMOKE_STEPS = 2
AGENT_CONFIG = (".claude", ".mcp.json")  # a session's own configuration, in its working directory
SMOKE_TIMEOUT_S = 300
# The smoke test runs the worker's code: it may use this much memory (address space) and write files this big
# (its output is such a file; the tool reads only its tail), and no core dumps.
SMOKE_LIMITS = {resource.RLIMIT_AS: 16 << 30, resource.RLIMIT_FSIZE: 1 << 30, resource.RLIMIT_CORE: 0,
                resource.RLIMIT_CPU: 2 * SMOKE_TIMEOUT_S}


def _smoke_limits() -> None:
    """In the smoke test's process before it execs bubblewrap: the limits every process inside inherits."""
    for limit, value in SMOKE_LIMITS.items():
        resource.setrlimit(limit, (value, value))


def mutation_signature(diff: dict[str, list[Any]]) -> str | None:
    """A stable name for an agent's edit, in the dead-end registry's terms: numbers move up or down,
    switches go on or off, other settings are named by their new value; several keys join with '+'."""
    parts = []
    for key, (old, new) in sorted(diff.items()):
        if key == SEED_KEY:
            continue
        if isinstance(new, bool) or isinstance(old, bool):
            direction = "on" if new else "off"
        elif isinstance(old, (int, float)) and isinstance(new, (int, float)):
            direction = "up" if new > old else "down"
        else:
            direction = str(new)
        parts.append(signature(key, direction))
    return "+".join(parts) or None


@dataclass
class WorkerTools:
    """The in-process tools of one worker session and what they recorded."""

    task: WorkerTask
    confinement: Confinement
    jobs_dir: Path
    proposal: dict[str, Any] | None = None
    smoke_runs: list[dict[str, Any]] = field(default_factory=list)

    def server(self):
        from claude_agent_sdk import create_sdk_mcp_server, tool

        @tool("smoke_test", f"Train your sandbox recipe for a few CPU steps (default {SMOKE_STEPS}, at most 10) "
                            "and return the log tail; nothing is measured or recorded as a score.",
              {"type": "object", "properties": {"steps": {"type": "integer", "minimum": 1, "maximum": 10}}})
        async def smoke_test(args: dict[str, Any]) -> dict[str, Any]:
            return self.smoke_test(int(args.get("steps") or SMOKE_STEPS))

        @tool("job_logs", "Your own candidate's job logs (tails) and its trace, for debugging a failed job.",
              {"type": "object", "properties": {}})
        async def job_logs(_args: dict[str, Any]) -> dict[str, Any]:
            return tool_result(self.job_logs())

        @tool("record_proposal", "Record your proposal: hypothesis, axis (your assigned axis), rationale, "
                                 "expected_effect, failure_modes (list). Scores are measured by the evaluation, not you.",
              {"type": "object", "properties": {
                  "hypothesis": {"type": "string"}, "axis": {"type": "string"}, "rationale": {"type": "string"},
                  "expected_effect": {"type": "string"}, "failure_modes": {"type": "array", "items": {"type": "string"}}},
               "required": ["hypothesis", "axis", "rationale", "expected_effect"]})
        async def record_proposal(args: dict[str, Any]) -> dict[str, Any]:
            return self.record_proposal(args)

        return create_sdk_mcp_server(SERVER, tools=[smoke_test, job_logs, record_proposal])

    @staticmethod
    def names() -> list[str]:
        return [f"mcp__{SERVER}__{n}" for n in ("smoke_test", "job_logs", "record_proposal")]

    def smoke_test(self, steps: int) -> dict[str, Any]:
        if not self.confinement.bash:
            return tool_result("refused: smoke test unavailable, no OS sandbox (bubblewrap) on this host to run sandbox code in",
                           error=True)
        out = self.confinement.sandbox / ".smoke"
        cap = pids.Cap.create(f"smoke-{uuid.uuid4().hex}", self.confinement.max_processes)
        if cap.why:
            self.task.trace.log("daemon", "smoke-test-unlimited", reason=cap.why)
        argv = cap.argv(self.confinement.bwrap_argv([sys.executable, TRAIN_SCRIPT, "--recipe", RECIPE_FILE, "--out",
                                                     str(out), "--max-steps", str(min(max(steps, 1), 10))]))
        with tempfile.TemporaryFile() as log:  # not a pipe: output without end must not fill the daemon's memory
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=bwrap.scrubbed_env(),
                                       preexec_fn=_smoke_limits)
            try:
                code, note = process.wait(timeout=SMOKE_TIMEOUT_S), ""
            except subprocess.TimeoutExpired:
                process.kill()  # bubblewrap's --die-with-parent takes everything inside with it
                code, note = process.wait(), f"timed out after {SMOKE_TIMEOUT_S}s\n"
            finally:
                cap.close()
                subprocess.run(["rm", "-rf", str(out), *self._planted_agent_config()], check=False)
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = note + log.read().decode(errors="replace")
        tail = "\n".join(text.splitlines()[-25:])
        self.smoke_runs.append({"steps": steps, "returncode": code})
        self.task.trace.log("agent:worker", "smoke-test", steps=steps, returncode=code, log_tail=tail[-1500:])
        return tool_result(f"exit code {code}\n{tail}", error=code != 0)

    def _planted_agent_config(self) -> list[str]:
        """Agent configuration the worker's code wrote into its sandbox, which its Write tool may not: the
        next session there (the debug turn) must not find it; removed, and traced."""
        planted = [str(self.confinement.sandbox / name) for name in AGENT_CONFIG
                   if os.path.lexists(self.confinement.sandbox / name)]
        if planted:
            self.task.trace.log("daemon", "agent-config-removed", paths=planted)
        return planted

    def job_logs(self) -> str:
        parts = []
        for log in attempt_logs(self.jobs_dir):
            parts.append(f"== {log.name} (tail)\n{log_tail(log, 40)}")
        for outcome in attempt_outcomes(self.jobs_dir):
            parts.append(f"== {outcome.name}\n{outcome.read_text()}")
        events = [e for e in read_jsonl(self.task.trace.path) if e.get("actor") == "daemon"][-30:]
        parts.append("== trace (daemon events)\n" + "\n".join(json.dumps(e, sort_keys=True) for e in events))
        return "\n\n".join(parts)

    def record_proposal(self, args: dict[str, Any]) -> dict[str, Any]:
        extra = sorted(set(args) - set(PROPOSAL_FIELDS))
        if extra:
            self.task.trace.log("agent:worker", "proposal-refused", fields=extra)
            return tool_result(f"refused: {', '.join(extra)} not writable by a worker; only {', '.join(PROPOSAL_FIELDS)} "
                           "(measured numbers come from the evaluation and the daemon)", error=True)
        if args.get("axis") != self.task.axis:
            return tool_result(f"refused: axis must be your assigned axis {self.task.axis!r}, not {args.get('axis')!r}",
                           error=True)
        modes = args.get("failure_modes") or []
        if not all(isinstance(args.get(k), str) and args[k].strip() for k in ("hypothesis", "rationale", "expected_effect")) \
                or not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            return tool_result("refused: hypothesis, rationale and expected_effect must be non-empty text, "
                           "failure_modes a list of text", error=True)
        self.proposal = dict(args)
        self.task.trace.log("agent:worker", "proposal-recorded", **{k: args.get(k) for k in PROPOSAL_FIELDS})
        return tool_result("recorded")


def _prompt(task: WorkerTask, confinement: Confinement) -> str:
    policy, axis = task.policy, AXES[str(task.axis)]
    files = sorted(str(p.relative_to(confinement.sandbox)) for p in confinement.sandbox.rglob("*") if p.is_file())
    view = {"standing_source": policy.standing_source, "active_axes": policy.active_axes,
            "retired_axes": policy.retired_axes, "noise_band": policy.noise_band,
            "promotion_threshold": policy.promotion_threshold, "evidence_rule": to_data(policy.evidence),
            "dont_waste_budget_on": to_data(policy.dead_ends)}
    return f"""You are the worker of candidate {CandidateRef(task.round, task.candidate).key} (seed {task.seed}).

Assigned axis: {axis.name} ({axis.category}): {axis.description}. Edit only the recipe keys under
{', '.join(axis.recipe_areas)} (code changes are allowed if they serve this axis).

Your sandbox is {confinement.sandbox} (your working directory); it is all you may read or write. Files:
{chr(10).join('  ' + f for f in files)}

Rolling policy of round {policy.round} (registered dead ends must not be repeated):
{json.dumps(view, indent=2)}

Steps: read recipe.yaml, make one mutation along your axis, run the smoke_test tool, then call
record_proposal with hypothesis, axis, rationale, expected_effect and failure_modes. The daemon
trains and evaluates your sandbox; you cannot submit jobs, see scores or read other candidates.
{'Bash runs inside an OS sandbox: no network, writes only in your sandbox.' if confinement.bash else 'No shell is offered.'}
"""


def _debug_prompt(reason: str, logs: str) -> str:
    return (f"Your candidate's training job failed: {reason}\n\nLogs and trace:\n{logs}\n\nFix your sandbox so the "
            "single retry can succeed (run smoke_test to check), then call record_proposal again with the "
            "observed failure mode in failure_modes.")


class ClaudeWorker:
    """Workers played by Claude through claude-agent-sdk and the real Claude Code CLI."""

    def __init__(self, campaign: Campaign, tree: StateTree):
        self.campaign, self.tree = campaign, tree

    def _confinement(self, task: WorkerTask) -> Confinement:
        protected = [self.tree.root, self.campaign.paths.substrate, self.campaign.paths.constitution,
                     self.campaign.source.parent, PACKAGE_DIR,  # the package holds the leaderboard adapter
                     MUNGE_DIR]  # SLURM's shared key: with it a job could be forged
        return Confinement(task.sandbox, protected, max_processes=self.campaign.agents.max_processes)

    def _spec(self, task: WorkerTask, role: str, prompt: str, tools: WorkerTools, resume: str | None) -> SessionSpec:
        conf = tools.confinement
        spend = RoundSpend(self.tree, task.round)
        return SessionSpec(
            role=role, round=task.round, who=task.name, prompt=prompt, resume=resume,
            system_prompt="You are a worker of an autonomous post-training campaign. Stay inside your sandbox.",
            cwd=conf.sandbox, home=self.tree.agent_home(task.round, task.name),
            record_path=spend.new_record_path(task.name, role), trace=task.trace,
            limits=limits_for(self.campaign.agents, spend), tools=conf.tools,
            allow=conf.allow_rules() + WorkerTools.names(), deny=conf.deny_rules(),
            sandbox=conf.sandbox_settings(), mcp_server=tools.server(), guard=conf.guard)

    def _run(self, spec: SessionSpec) -> AgentSession:
        return RoundSpend(self.tree, spec.round).run(spec, self.campaign.agents)

    def propose(self, task: WorkerTask) -> WorkerResult:
        if task.role == "anchor":  # anchors are not agents: the standing recipe with a fresh seed
            return ScriptedWorker().propose(task)
        interrupted = _unfinished_sessions(task.trace, "worker")
        if interrupted:  # the daemon died mid-session: the daemon re-forked the sandbox, the session starts over
            task.trace.log("daemon", "session-rerun", role="worker", interrupted=interrupted)
        before = load_recipe(task.sandbox)
        tools = WorkerTools(task, self._confinement(task), self.tree.jobs(task.round, task.candidate))
        session = self._run(self._spec(task, "worker", _prompt(task, tools.confinement), tools, None))
        if not session.ok:
            raise WorkerFailed(f"worker session {session.outcome}: {session.message}")
        if tools.proposal is None:
            raise WorkerFailed("worker session ended without record_proposal")
        try:
            after = _set_seed(task)
        except UntrustedFile as exc:
            raise WorkerFailed(f"the worker left no readable recipe: {exc}") from None
        return WorkerResult(mutation_signature(recipe_diff(before, after)), _proposal(tools.proposal))

    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        """Resume the worker's session with its failed job's logs; its revised proposal, if it recorded one."""
        previous = RoundSpend(self.tree, task.round).latest(task.name, "worker")
        standing = copy.deepcopy(task.policy.standing_recipe)
        tools = WorkerTools(task, self._confinement(task), self.tree.jobs(task.round, task.candidate))
        resume = previous.session_id if previous and previous.session_id else None
        session = self._run(self._spec(task, "debug", _debug_prompt(reason, tools.job_logs()), tools, resume))
        try:
            recipe = _set_seed(task)
        except UntrustedFile as exc:  # the retry's recipe guard refuses it the same way
            task.trace.log("daemon", "recipe-unreadable", reason=str(exc))
            return None
        if not session.ok or tools.proposal is None:
            return None
        return WorkerResult(mutation_signature(recipe_diff(standing, recipe)), _proposal(tools.proposal))


def _unfinished_sessions(trace, role: str) -> int:
    """Sessions of `role` the trace shows started but never ended (the daemon was killed during them)."""
    events = [e["event"] for e in read_jsonl(trace.path) if e.get("actor") == f"agent:{role}"]
    return events.count("session-start") - events.count("session-end")


def _set_seed(task: WorkerTask) -> dict[str, Any]:
    """The candidate's seed is the daemon's, whatever the agent wrote; returns the recipe as it now is."""
    recipe = load_recipe(task.sandbox)
    if recipe.get(SEED_KEY) != task.seed:
        recipe[SEED_KEY] = task.seed
        atomic_write_text(task.sandbox / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def _proposal(fields: dict[str, Any]) -> Proposal:
    return Proposal(hypothesis=fields["hypothesis"], rationale=fields["rationale"],
                    expected_effect=fields["expected_effect"],
                    observed_failure_modes=list(fields.get("failure_modes") or []))
