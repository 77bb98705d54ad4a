"""The Claude meta: the frozen constitution as its system prompt, proposing through a checking tool.

The constitution file is read once per session, its bytes hash-checked against the hash recorded
when the campaign started, and given as the system prompt; the session has no file tools, so it has
no handle on the constitution or anything else. Its one tool, `propose_policy`, runs the
constitution checks of hpc_aevo.constitution on a proposal and returns the violations, at most
MAX_PROPOSALS times. The daemon then replays the proposals through `meta.decide`, which checks them
again (the tool's verdict is advice, the code's is law), records every rejection and, if none
passes, keeps the previous policy plus the mandatory updates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.roles.claude.session import AgentSession, SessionSpec, tool_result
from hpc_aevo.roles.claude.spend import RoundSpend, agent_home, limits_for
from hpc_aevo.search.constitution import CheckContext, ConstitutionChanged, Violation, check_policy
from hpc_aevo.search.decide import Proposer, as_policy, mandatory_update
from hpc_aevo.search.evidence import RoundEvidence, render_markdown
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import StateTree

SERVER = "meta"
MAX_PROPOSALS = 3
PROPOSER = "claude-meta"


@dataclass
class MetaTools:
    previous: Policy
    full_history: list[RoundEvidence]
    ctx: CheckContext
    trace: Trace
    proposals: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    accepted: bool = False

    def propose(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.accepted or len(self.proposals) >= MAX_PROPOSALS:
            why = "a proposal was already accepted" if self.accepted else f"{MAX_PROPOSALS} proposals already made"
            return tool_result(f"refused: {why}; the round's policy is decided from them", error=True)
        policy_doc, changes = args.get("policy"), args.get("changes") or []
        if isinstance(policy_doc, str):
            try:
                policy_doc = json.loads(policy_doc)
            except json.JSONDecodeError as exc:
                policy_doc = {"unparsable": str(exc)}
        self.proposals.append((policy_doc, [str(c) for c in changes]))
        policy, violations = as_policy(policy_doc)
        if policy is not None:
            violations = check_policy(self.previous, policy, self.full_history, self.ctx)
        self.accepted = not violations
        self.trace.log("agent:meta", "policy-proposal", attempt=len(self.proposals), accepted=self.accepted,
                       violations=[f"{v.rule}: {v.message}" for v in violations], changes=changes)
        if self.accepted:
            return tool_result("accepted: the policy satisfies the constitution")
        left = MAX_PROPOSALS - len(self.proposals)
        return tool_result("rejected:\n" + "\n".join(f"{v.rule}: {v.message}" for v in violations)
                       + f"\n{left} proposal(s) left", error=True)

    def server(self):
        from claude_agent_sdk import create_sdk_mcp_server, tool

        @tool("propose_policy", "Propose the next round's policy (the full policy JSON, schema hpc_aevo.policy) and the "
                                "list of changes; returns the constitution's violations, or accepted.",
              {"type": "object", "properties": {"policy": {"type": "object"},
                                                "changes": {"type": "array", "items": {"type": "string"}}},
               "required": ["policy", "changes"]})
        async def propose_policy(args: dict[str, Any]) -> dict[str, Any]:
            return self.propose(args)

        return create_sdk_mcp_server(SERVER, tools=[propose_policy])


def _prompt(previous: Policy, evidence: RoundEvidence, mandatory: Policy, forced: list[str]) -> str:
    return f"""Meta step after round {evidence.round} (meta r{evidence.round:03d}).

The round's evidence:

{render_markdown(evidence)}

The policy that governed round {previous.round}:
```json
{previous.to_json()}```

The mandatory update (what the evidence forces; no promotion) — a valid starting point:
```json
{mandatory.to_json()}```
Its changes: {json.dumps(forced)}

Propose the policy of round {previous.round + 1} with the propose_policy tool (at most {MAX_PROPOSALS} proposals).
"""


class ClaudeMeta:
    def __init__(self, campaign: Campaign, tree: StateTree):
        self.campaign, self.tree = campaign, tree

    def constitution(self, expected_sha256: str) -> str:
        """The constitution text, from bytes whose hash is the campaign's recorded one."""
        raw = self.campaign.paths.constitution.read_bytes()
        if hashlib.sha256(raw).hexdigest() != expected_sha256:
            raise ConstitutionChanged(f"{self.campaign.paths.constitution} differs from the constitution recorded "
                                      "when the campaign started")
        return raw.decode("utf-8")

    def proposer(self, previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence],
                 ctx: CheckContext, trace: Trace, constitution_sha256: str) -> tuple[Proposer, int, AgentSession]:
        """Run the session; return a proposer that replays its proposals for `meta.decide`, their count,
        and the session record."""
        tools = MetaTools(previous, [*history, evidence], ctx, trace)
        mandatory, forced = mandatory_update(previous, evidence, history)
        rnd = evidence.round
        spend = RoundSpend(self.tree, rnd)
        spec = SessionSpec(
            role="meta", round=rnd, who="meta", prompt=_prompt(previous, evidence, mandatory, forced),
            system_prompt=self.constitution(constitution_sha256), cwd=agent_home(spend, "meta"), home=agent_home(spend, "meta"),
            record_path=spend.new_record_path("meta", "meta"), trace=trace,
            limits=limits_for(self.campaign.agents, spend), tools=[], allow=[f"mcp__{SERVER}__propose_policy"],
            mcp_server=tools.server(), mcp_name=SERVER)
        session = spend.run(spec, self.campaign.agents)
        proposals = list(tools.proposals)

        def replay(_previous: Policy, _evidence: RoundEvidence, _history: list[RoundEvidence],
                   _recipes: dict[str, dict[str, Any]], _feedback: list[Violation]) -> tuple[Any, list[str]]:
            return proposals.pop(0)

        return replay, len(tools.proposals), session
