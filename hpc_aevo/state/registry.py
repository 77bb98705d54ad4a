"""Every typed record the toolkit writes, in one list: what a reader of the state tree can meet.

Names, not imports: the records are defined beside the code that writes them, in packages that
build on this one, so the list is "module:Class" and `record_classes()` imports it when asked.
`tests/test_registry.py` holds the list against the code (every `Record` subclass is here) and
against the docs (every state-tree record is in docs/state-tree.md, every other in its page).
"""

from __future__ import annotations

import importlib

STATE_TREE_RECORDS = (  # under a campaign's state root: docs/state-tree.md
    "hpc_aevo.state.tree:CampaignRecord",
    "hpc_aevo.state.lock:DaemonInfo",
    "hpc_aevo.loop.install:SubstrateManifest",
    "hpc_aevo.state.ledger:Ledger",
    "hpc_aevo.scoring.leaderboard:LeaderboardLedger",
    "hpc_aevo.search.policy:Policy",
    "hpc_aevo.loop.daemon:RoundState",
    "hpc_aevo.search.evidence:RoundEvidence",
    "hpc_aevo.search.constitution:PolicyDecision",
    "hpc_aevo.roles.claude.session:AgentSession",
    "hpc_aevo.state.manifest:CandidateManifest",
    "hpc_aevo.scoring.results:EvalResult",
    "hpc_aevo.scoring.leaderboard:SplitScore",
    "hpc_aevo.scoring.score_stage:LeaderboardScore",
    "hpc_aevo.scoring.adapters:Predictions",
    "hpc_aevo.jobs.scheduler:Submission",
    "hpc_aevo.jobs.spec:Claim",
    "hpc_aevo.jobs.spec:JobOutcome",
    "hpc_aevo.report.story:CampaignReport",
)

BENCHMARK_RECORDS = (  # written by `python -m hpc_aevo.bench`: docs/benchmarks.md
    "hpc_aevo.tools.bench:TrainBench",
    "hpc_aevo.tools.bench:PackBench",
    "hpc_aevo.tools.bench_noise:NoiseBench",
    "hpc_aevo.tools.bench_lmeval:LmEvalBench",
)


def record_classes(names: tuple[str, ...] = STATE_TREE_RECORDS + BENCHMARK_RECORDS) -> list[type]:
    """The record classes behind `names`, imported."""
    classes = []
    for name in names:
        module, cls = name.split(":")
        classes.append(getattr(importlib.import_module(module), cls))
    return classes
