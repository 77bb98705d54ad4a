"""`python -m hpc_aevo.status CAMPAIGN.yaml [--json] [--watch [SECONDS]]`: what the campaign has done, from its files.

Read-only and safe to run while the daemon works: it reads files only and never asks the scheduler.
`--json` prints one stable document (schema "hpc_aevo.status", version 1): per round the policy that
governed it, every candidate with its axis, mutation, status, dev and leaderboard scores, the live
progress of every running task (step of total, last loss, tokens/s, ETA, from the job's metric lines),
the calibration verdict and the meta decision with the numbers behind it. `--watch` redraws the
text view in place every few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.spec import JobOutcome
from hpc_aevo.loop.daemon import PHASES, RoundState
from hpc_aevo.report.progress import TaskProgress, describe, task_progress
from hpc_aevo.roles.claude.spend import RoundSpend
from hpc_aevo.scoring.leaderboard import LeaderboardLedger
from hpc_aevo.search.constitution import PolicyDecision
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.ledger import Ledger
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.records import R, RecordError
from hpc_aevo.state.tree import CandidateRef, StateTree, attempt_outcomes
from hpc_aevo.state.typed import to_data

SCHEMA, VERSION = "hpc_aevo.status", 1


def _agents(tree: StateTree, rnd: int) -> dict[str, Any]:
    """The round's agent sessions (claude backend): their count, tokens, cost and wall time, and each one."""
    sessions = RoundSpend(tree, rnd).sessions()
    return {"sessions": len(sessions), "cost_usd": round(sum(s.cost_usd for s in sessions), 6),
            "input_tokens": sum(s.input_tokens for s in sessions), "output_tokens": sum(s.output_tokens for s in sessions),
            "wall_s": round(sum(s.wall_s for s in sessions), 3),
            "each": [{"who": s.who, "role": s.role, "outcome": s.outcome, "turns": s.turns, "cost_usd": s.cost_usd,
                      "input_tokens": s.input_tokens, "output_tokens": s.output_tokens, "wall_s": s.wall_s,
                      "tool_calls": s.tool_calls, "denials": s.denials} for s in sessions]}


def unconfined_stages(tree: StateTree, rnd: int, c: int) -> list[str]:
    """The candidate's job stages that ran without bubblewrap, as their outcome records say ("cand-01#1 train"),
    its leaderboard scoring's included."""
    found = []
    for path in attempt_outcomes(tree.jobs(rnd, c)) + attempt_outcomes(tree.score_jobs(rnd, c)):
        outcome = JobOutcome.load_or_none(path)
        if outcome is not None:
            found += [f"{CandidateRef(rnd, c).name}#{outcome.attempt} {stage.stage}"
                      for stage in outcome.stages if not stage.confined]
    return sorted(set(found))  # a slurm attempt's train stage is in both its train and its final outcome


def unconfined_stage_runs(tree: StateTree, rnd: int, c: int) -> int:
    """How many of the candidate's job stages ran without bubblewrap (their outcome records say so)."""
    return len(unconfined_stages(tree, rnd, c))


def _readable(cls: type[R], path: Path, cannot: list[str]) -> R | None:
    """The record at `path` (None when absent); a damaged one is named in `cannot` and the rest is still shown."""
    try:
        return cls.load_or_none(path)
    except RecordError as exc:
        cannot.append(f"unreadable, not shown: {exc}")
        return None


# The record a finished phase leaves, that status shows: without it the phase's numbers cannot be shown.
PHASE_RECORDS = {"collect": ("evidence", StateTree.evidence_json), "meta": ("decision", StateTree.decision)}


def _missing(tree: StateTree, rnd: int, state: RoundState | None, evidence: RoundEvidence | None,
             count: int) -> list[str]:
    """What a round's own records say should be there and is not: a forked candidate (one below the highest
    present, one its evidence names, or, in a round still running, one the campaign's count implies), a
    finished phase's record. Finished rounds are not held to today's count: it may change between rounds."""
    if state is None:
        return []
    lines = []
    if "fork" in state.phases:
        present = {CandidateRef.named(rnd, p.parent.name).index for p in tree.candidate_manifests(rnd)}
        expected = set(range(max(present, default=-1) + 1)) | set(range(0 if "meta" in state.phases else count))
        expected |= {CandidateRef.named(rnd, c.name).index for c in (evidence.candidates if evidence else [])}
        for c in sorted(expected - present):
            where = "its manifest.json" if tree.candidate_dir(rnd, c).is_dir() else "its directory"
            lines.append(f"{CandidateRef(rnd, c).key}: {where} is missing, though the round forked it; it is not "
                         "shown (README: damaged state)")
    for phase, (what, path_of) in PHASE_RECORDS.items():
        if phase in state.phases and not path_of(tree, rnd).exists():
            lines.append(f"r{rnd:03d}: the {what} record {path_of(tree, rnd)} is missing though {phase} is done; "
                         f"its {what} is not shown")
    return lines


def _round(tree: StateTree, rnd: int, count: int) -> dict[str, Any]:
    cannot: list[str] = []
    state = _readable(RoundState, tree.round_state(rnd), cannot)
    policy = _readable(Policy, tree.policy(rnd), cannot)
    evidence = _readable(RoundEvidence, tree.evidence_json(rnd), cannot)
    decision = _readable(PolicyDecision, tree.decision(rnd), cannot)
    cannot += _missing(tree, rnd, state, evidence, count)
    candidates, unconfined, progress = [], [], []
    for path in tree.candidate_manifests(rnd):
        m = _readable(CandidateManifest, path, cannot)
        if m is None:
            continue
        unconfined += unconfined_stages(tree, rnd, m.candidate)
        running = task_progress(tree, m)
        if running is not None:
            progress.append(to_data(running))
        candidates.append({
            "name": m.name, "role": m.role, "axis": m.axis, "mutation": m.mutation, "status": m.status,
            "attempts": m.attempts, "seed": m.seed, "dev": m.measured.dev, "leaderboard": m.measured.leaderboard,
            "selected_step": m.measured.selected_step, "dev_per_domain": m.measured.dev_per_domain,
            "leaderboard_per_domain": m.measured.leaderboard_per_domain, "failure": m.failure,
            "hypothesis": m.proposal.hypothesis,
        })
    return {
        "round": rnd,
        "phases_done": [p for p in PHASES if state and p in state.phases],
        "complete": bool(state and state.complete()),
        "policy": None if policy is None else {
            "standing_source": policy.standing_source, "active_axes": policy.active_axes,
            "retired_axes": policy.retired_axes, "noise_band": policy.noise_band,
            "promotion_threshold": policy.promotion_threshold, "dead_ends": to_data(policy.dead_ends),
            "evidence": to_data(policy.evidence),
        },
        "candidates": candidates,
        "progress": progress,
        "unconfined_stage_runs": len(unconfined),
        "unconfined": unconfined,
        "cannot_show": cannot,
        "agents": _agents(tree, rnd),
        "calibration": None if evidence is None else {
            "spearman": evidence.calibration.spearman, "decoupled": evidence.calibration.decoupled,
            "suspect_domains": evidence.calibration.suspect_domains,
            "flags": [f.message for f in evidence.calibration.flags],
        },
        "decision": None if decision is None else {
            "accepted": decision.accepted, "fallback_used": decision.fallback_used,
            "promotion": to_data(decision.promotion), "changes": decision.changes,
            "rejected_proposals": to_data(decision.rejected_proposals), "violations": to_data(decision.violations),
        },
    }


def status_document(campaign_path: str) -> dict[str, Any]:
    campaign = load_campaign(campaign_path)
    tree = StateTree(campaign.paths.state_root)
    cannot: list[str] = []
    ran = tree.campaign_record.exists()
    if not ran:
        cannot.append(f"campaign {campaign.name} never ran: {tree.campaign_record} is missing; start it with "
                      f"python -m hpc_aevo.round {campaign.source}")
    ledger = _readable(LeaderboardLedger, tree.leaderboard_ledger, cannot)
    compute = (_readable(Ledger, tree.compute_ledger, cannot) or Ledger()).summary()
    return {
        "schema": SCHEMA, "version": VERSION, "campaign": campaign.name, "state_root": str(tree.root),
        "ran": ran, "cannot_show": cannot,
        "rounds_planned": campaign.rounds,
        "compute": {"cpu_hours_used": compute["cpu_hours"], "cpu_hours_budget": campaign.budget.cpu_hours,
                    "gpu_hours_used": compute["gpu_hours"], "gpu_hours_budget": campaign.budget.gpu_hours,
                    "backend": campaign.scheduler.backend},
        "ledger": compute["rounds"],
        "leaderboard": {"quota": campaign.leaderboard.quota, "used": len(ledger.submissions) if ledger else 0},
        "rounds": [_round(tree, r, campaign.candidates) for r in tree.rounds()],
    }


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _budget(cap: float | None) -> str:
    return "no budget cap" if cap is None else f"budget {cap:g}"


def _ledger_lines(ledger: dict[str, Any]) -> list[str]:
    """The compute ledger: per round and per candidate CPU-/GPU-hours, and each task's charge."""
    lines = []
    for rnd, entry in ledger.items():
        lines.append(f"  ledger {rnd}: {entry['cpu_hours']:.4f} CPU-h, {entry['gpu_hours']:.4f} GPU-h")
        for cand, charge in entry["candidates"].items():
            lines.append(f"    {cand}: {charge['cpu_hours']:.4f} CPU-h, {charge['gpu_hours']:.4f} GPU-h  "
                         + "; ".join(charge["tasks"]))
    return lines


def render(doc: dict[str, Any]) -> str:
    if not doc["ran"]:
        return "\n".join([f"campaign {doc['campaign']}  ({doc['state_root']})", *(f"  {x}" for x in doc["cannot_show"])])
    lines = [f"campaign {doc['campaign']}  ({doc['state_root']})",
             f"  compute {doc['compute']['cpu_hours_used']:.3f} CPU-h ({_budget(doc['compute']['cpu_hours_budget'])}), "
             f"{doc['compute']['gpu_hours_used']:.3f} GPU-h ({_budget(doc['compute']['gpu_hours_budget'])}); "
             f"leaderboard {doc['leaderboard']['used']}/{doc['leaderboard']['quota']} submissions"]
    lines += [f"  cannot show: {line}" for line in doc["cannot_show"]]
    lines += _ledger_lines(doc["ledger"])
    for rnd in doc["rounds"]:
        policy = rnd["policy"] or {}
        lines.append(f"\nround {rnd['round']}  [{'done' if rnd['complete'] else 'at ' + (rnd['phases_done'] or ['start'])[-1]}]"
                     f"  standing {policy.get('standing_source')}  axes {', '.join(policy.get('active_axes', []))}"
                     f"  band {policy.get('noise_band', 0):.3f}")
        lines.append(f"  {'cand':<8}{'role':<7}{'mutation':<34}{'status':<10}{'dev':>7}{'board':>7}")
        for c in rnd["candidates"]:
            lines.append(f"  {c['name']:<8}{c['role']:<7}{(c['mutation'] or '-'):<34}{c['status']:<10}"
                         f"{_score(c['dev']):>7}{_score(c['leaderboard']):>7}")
        lines.extend(f"  running: {describe(TaskProgress(**p))}" for p in rnd["progress"])
        lines += [f"  cannot show: {line}" for line in rnd["cannot_show"]]
        if rnd["unconfined"]:
            lines.append(f"  jobs: {rnd['unconfined_stage_runs']} stage run(s) UNCONFINED "
                         f"({', '.join(rnd['unconfined'])}): "
                         "no bubblewrap where they ran, or scheduler.confine_jobs off; the first line of their "
                         "jobs/attempt-N.<stage>.log says why")
        if rnd["agents"]["sessions"]:
            a = rnd["agents"]
            lines.append(f"  agents: {a['sessions']} sessions, ${a['cost_usd']:.4f}, {a['input_tokens']} in / "
                         f"{a['output_tokens']} out tokens, {a['wall_s']:.1f}s; "
                         + ", ".join(f"{s['who']} {s['role']} {s['outcome']}" for s in a["each"]))
        if rnd["calibration"]:
            cal = rnd["calibration"]
            lines.append(f"  calibration: rank corr {_score(cal['spearman'])}, decoupled {cal['decoupled']}"
                         + (f", suspect {', '.join(cal['suspect_domains'])}" if cal["suspect_domains"] else ""))
        if rnd["decision"]:
            d = rnd["decision"]
            promo = d["promotion"]
            lines.append("  decision: " + (f"promote {promo['candidate']} (+{promo['leaderboard_gain']:.3f})" if promo
                                          else "no promotion") + (" [fallback]" if d["fallback_used"] else ""))
            lines.extend(f"    - {change}" for change in d["changes"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.status", description=__doc__.splitlines()[0])
    parser.add_argument("campaign")
    parser.add_argument("--json", action="store_true", help="print the stable JSON document")
    parser.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                        help="redraw the text view in place every SECONDS (default 5) until Ctrl-C")
    args = parser.parse_args(argv)
    if args.watch is not None and (args.json or args.watch <= 0):
        parser.error("--watch takes a positive number of seconds and the text view (not --json)")
    try:
        if args.watch is None:
            doc = status_document(args.campaign)
            print(json.dumps(doc, indent=2) if args.json else render(doc))
        else:
            watch(args.campaign, args.watch)
    except (ConfigError, RecordError) as exc:
        print(f"hpc_aevo.status: {exc}", file=sys.stderr)
        return 2
    return 0


def watch(campaign_path: str, every_s: float, frames: int | None = None) -> None:
    """Redraw the status in place (cursor home, clear the screen below) until Ctrl-C, or `frames` times."""
    shown = 0
    try:
        while frames is None or shown < frames:
            text = render(status_document(campaign_path))
            sys.stdout.write("\x1b[H\x1b[J" + text + f"\n\n(refreshed {time.strftime('%H:%M:%S')}, "
                             f"every {every_s:g}s; Ctrl-C to stop)\n")
            sys.stdout.flush()
            shown += 1
            if frames is None or shown < frames:
                time.sleep(every_s)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
