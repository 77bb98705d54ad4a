"""The Claude collector: one session per round that writes the prose of the five evidence sections.

Every number of the evidence is computed in code from the manifests; the collector only adds
prose. Its one tool, `write_section`, refuses prose with a number that the code-rendered section
does not already show, so the prose can quote the tables but never change or invent a number.
The session has no file tools.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.roles.claude.session import AgentSession, SessionSpec, tool_result
from hpc_aevo.roles.claude.spend import RoundSpend, agent_home, limits_for
from hpc_aevo.search.evidence import SECTIONS, RoundEvidence, render_markdown
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import StateTree

SERVER = "collector"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def section_texts(evidence: RoundEvidence) -> dict[str, str]:
    """The code-rendered text of each section (without prose), by section key."""
    bare = RoundEvidence.from_dict(json.loads(evidence.to_json()))
    bare.prose = {}
    text = render_markdown(bare)
    out = {}
    for key, title in SECTIONS.items():
        start = text.index(f"## {title}")
        end = min([text.index(f"## {t}") for t in SECTIONS.values() if text.index(f"## {t}") > start] + [len(text)])
        out[key] = text[start:end]
    return out


def _values(text: str) -> set[float]:
    return {float(n) for n in NUMBER.findall(text)}


@dataclass
class CollectorTools:
    evidence: RoundEvidence
    trace: Trace
    prose: dict[str, str] = field(default_factory=dict)

    def write(self, args: dict[str, Any]) -> dict[str, Any]:
        section, prose = args.get("section"), str(args.get("prose") or "").strip()
        texts = section_texts(self.evidence)
        if section not in texts:
            return tool_result(f"refused: section must be one of {', '.join(SECTIONS)}", error=True)
        allowed = _values(texts[section]) | _values(SECTIONS[section])
        invented = [n for n in NUMBER.findall(prose) if float(n) not in allowed]
        if invented:
            self.trace.log("agent:collector", "prose-refused", section=section, numbers=invented)
            return tool_result(f"refused: {', '.join(invented)} not in the computed section; numbers come from the "
                           "tables, prose may only quote them", error=True)
        if not prose:
            return tool_result("refused: empty prose", error=True)
        self.prose[section] = prose
        self.trace.log("agent:collector", "prose-written", section=section, chars=len(prose))
        return tool_result("written")

    def server(self):
        from claude_agent_sdk import create_sdk_mcp_server, tool

        @tool("write_section", f"Write the prose of one evidence section ({', '.join(SECTIONS)}); numbers only "
                               "as the computed section shows them.",
              {"type": "object", "properties": {"section": {"type": "string", "enum": list(SECTIONS)},
                                                "prose": {"type": "string"}}, "required": ["section", "prose"]})
        async def write_section(args: dict[str, Any]) -> dict[str, Any]:
            return self.write(args)

        return create_sdk_mcp_server(SERVER, tools=[write_section])


class ClaudeCollector:
    def __init__(self, campaign: Campaign, tree: StateTree):
        self.campaign, self.tree = campaign, tree

    def prose(self, evidence: RoundEvidence, trace: Trace) -> tuple[dict[str, str], AgentSession]:
        """The prose the session wrote, per section (possibly none), and its session record."""
        tools = CollectorTools(evidence, trace)
        spend = RoundSpend(self.tree, evidence.round)
        home = agent_home(spend, "collector")
        prompt = (f"Collector of round {evidence.round} (collect r{evidence.round:03d}). Write the prose of each of the five "
                  f"sections with write_section ({', '.join(SECTIONS)}). The computed evidence:\n\n"
                  + render_markdown(evidence))
        spec = SessionSpec(
            role="collector", round=evidence.round, who="collector", prompt=prompt,
            system_prompt="You summarise a round of an autonomous post-training campaign. Numbers are computed by "
                          "code; you write prose only.", cwd=home, home=home,
            record_path=spend.new_record_path("collector", "collector"), trace=trace,
            limits=limits_for(self.campaign.agents, spend), tools=[], allow=[f"mcp__{SERVER}__write_section"],
            mcp_server=tools.server(), mcp_name=SERVER)
        session = spend.run(spec, self.campaign.agents)
        return dict(tools.prose), session
