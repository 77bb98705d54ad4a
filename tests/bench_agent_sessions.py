"""Wall time of agent sessions of every role against the loopback model stub (the real CLI, scripted turns).

    PYTHONPATH=. python tests/bench_agent_sessions.py [--repeat 3] [--out logs/agents-sessions.json]

Prints one line per role (median and max wall seconds, turns, tool calls) and writes the same as JSON.
The stub answers instantly, so this is the CLI's and the SDK's own overhead per session plus the
tools' work (the worker's smoke test trains 2 CPU steps under bubblewrap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_scripts import collector, good_worker, lawful_meta  # noqa: E402
from model_stub import ModelStub, text  # noqa: E402
from test_agents_roles import dev_only_round  # noqa: E402
from tiny_campaign import REPO, write_campaign  # noqa: E402

from hpc_aevo.roles.claude.backend import ClaudeRoles  # noqa: E402
from hpc_aevo.roles.claude.session import AgentSession  # noqa: E402
from hpc_aevo.campaign.config import load_campaign  # noqa: E402
from hpc_aevo.search.constitution import constitution_hash  # noqa: E402
from hpc_aevo.loop.daemon import Daemon  # noqa: E402
from hpc_aevo.search.decide import decide  # noqa: E402
from hpc_aevo.search.policy import Policy  # noqa: E402


def one_round(root: Path, stub: ModelStub) -> list[AgentSession]:
    path = write_campaign(root, workers=2, agents={"backend": "claude"})
    daemon = Daemon(load_campaign(path), print_line=lambda line: None)
    record = daemon.prepare()
    policy = Policy.load(daemon.tree.policy(0))
    daemon.phase_fork(0, policy, record)
    stub.add("r000/cand-01", good_worker(daemon.tree.sandbox(0, 1)))  # with a 2-step smoke test
    stub.add("r000/cand-02", [[text("nothing to change")]])  # the smallest session: one turn
    daemon.phase_propose(0, policy, record)
    previous, evidence, ctx = dev_only_round()
    roles = ClaudeRoles(daemon.campaign, daemon.tree)
    stub.add("collect r002", collector())
    roles.prose(evidence)
    stub.add("meta r002", lawful_meta())
    decide(previous, evidence, [], ctx, roles.propose_policy(previous, evidence, [], ctx,
                                                            constitution_hash(daemon.campaign.paths.constitution)))
    return [AgentSession.load(p) for r in (0, 2) for p in sorted((daemon.tree.round_dir(r) / "agents").glob("*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "agents-sessions.json")
    args = parser.parse_args()
    sessions: list[AgentSession] = []
    with ModelStub() as stub:
        os.environ.update({**stub.env(), "CLAUDE_CODE_MAX_RETRIES": "0"})
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                sessions += one_round(Path(tmp), stub)
    kinds = {"worker + smoke test (5 turns)": lambda s: s.who == "cand-01", "worker, 1 turn": lambda s: s.who == "cand-02",
             "collector (2 turns)": lambda s: s.role == "collector", "meta (2 turns)": lambda s: s.role == "meta"}
    rows = []
    for kind, match in kinds.items():
        picked = [s for s in sessions if match(s)]
        walls = [s.wall_s for s in picked]
        rows.append({"session": kind, "n": len(picked), "median_wall_s": round(statistics.median(walls), 2),
                     "max_wall_s": round(max(walls), 2), "turns": picked[0].turns, "tool_calls": picked[0].tool_calls,
                     "ok": all(s.ok for s in picked)})
        print(f"{kind:<32} n={len(picked)}  median {rows[-1]['median_wall_s']:.2f}s  max {rows[-1]['max_wall_s']:.2f}s  "
              f"turns {rows[-1]['turns']}  tool calls {rows[-1]['tool_calls']}  ok {rows[-1]['ok']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
