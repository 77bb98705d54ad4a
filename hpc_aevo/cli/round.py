"""`python -m hpc_aevo.round CAMPAIGN.yaml [--rounds N]`: run (or resume) a campaign.

One progress line per phase of every round. Killed at any moment, the same command continues
from the state tree, redoing nothing that finished and running no candidate twice.
`--dry-run` prints what the next round would submit (on SLURM: the train and eval sbatch scripts
with the dependency between them, then the score array that follows the dev evaluation) and writes
and submits nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpc_aevo.campaign.config import Campaign, load_campaign, load_initial_policy
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.backends import make_scheduler
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.launcher import BudgetExhausted
from hpc_aevo.jobs.preflight import Cluster, Finding, campaign_findings, recipe_findings
from hpc_aevo.jobs.scheduler import SchedulerUnavailable
from hpc_aevo.loop.daemon import CampaignStopped, Daemon, RoundState
from hpc_aevo.loop.install import SubstrateTampered
from hpc_aevo.scoring.score_stage import score_spec
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.contract import RECIPE_FILE
from hpc_aevo.state.lock import CampaignBusy, DaemonLock
from hpc_aevo.state.records import RecordError
from hpc_aevo.state.tree import StateTree


def next_round(tree: StateTree) -> int:
    """The first round that has not finished (a new campaign: 0)."""
    return next((r for r in tree.rounds() if not (RoundState.load_or_none(tree.round_state(r)) or RoundState(r)).complete()),
                len(tree.rounds()))


def standing_recipe(campaign: Campaign, tree: StateTree, rnd: int) -> tuple[dict, Path, str]:
    """(round `rnd`'s standing recipe, the file it is in, its key prefix there): what the preflight checks."""
    if tree.policy(rnd).exists():
        return Policy.load(tree.policy(rnd)).standing_recipe, tree.policy(rnd), "standing_recipe."
    policy = load_initial_policy(campaign)
    if policy.standing_source == "substrate":
        return policy.standing_recipe, campaign.paths.substrate / RECIPE_FILE, ""
    return policy.standing_recipe, campaign.paths.initial_policy, "standing_recipe."


def preflight(campaign: Campaign) -> list[Finding]:
    """Everything the cluster would refuse in the next round, before anything is submitted."""
    tree, cluster = StateTree(campaign.paths.state_root), Cluster.of(campaign, make_scheduler(campaign))
    return campaign_findings(cluster) + recipe_findings(*standing_recipe(campaign, tree, next_round(tree)), cluster)


def dry_run(campaign: Campaign) -> str:
    """The next unfinished round's first submission, as the backend would send it. Needs neither the
    agents (no API key) nor the leaderboard: only the state tree and the scheduler backend."""
    tree = StateTree(campaign.paths.state_root)
    rnd, scheduler = next_round(tree), make_scheduler(campaign)
    candidates = [Candidate(rnd, c, tree) for c in range(campaign.candidates)]
    scored = [score_spec(c, 1, None) for c in candidates[: campaign.leaderboard.per_round]]
    return (f"# dry run of {campaign.name} round {rnd}: nothing is submitted\n"
            + scheduler.render([c.spec(1) for c in candidates])
            + f"\n# after the dev evaluation, the leaderboard scoring of the chosen candidates (at most "
              f"{campaign.leaderboard.per_round}; shown: the first ones)\n" + scheduler.render(scored))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.round", description=__doc__.splitlines()[0])
    parser.add_argument("campaign", help="the campaign YAML")
    parser.add_argument("--rounds", type=int, default=None, help="run the first N rounds (default: the YAML's rounds)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch scripts and dependencies the next round would submit; submit nothing")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        campaign = load_campaign(args.campaign)
        load_initial_policy(campaign)
        if args.rounds is not None and args.rounds < 1:
            raise ConfigError("--rounds", "an integer >= 1", args.rounds)
        findings = preflight(campaign)
        for finding in findings:
            print(f"hpc_aevo.round: {finding}", file=sys.stderr)
        refused = sum(f.refused for f in findings)
        if args.dry_run:
            print(dry_run(campaign))
        if refused:
            print(f"hpc_aevo.round: the preflight refused {refused} setting(s) above; nothing was submitted", file=sys.stderr)
            return 2
        if args.dry_run:
            return 0
        try:
            campaign.paths.state_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("state_root", f"a directory this user can create ({exc.strerror}: {exc.filename})",
                              source=str(campaign.source)) from None
        with DaemonLock(StateTree(campaign.paths.state_root)):
            Daemon(campaign, print_line=lambda line: print(line, flush=True)).run(args.rounds)
    except (ConfigError, CampaignBusy, CampaignStopped, BudgetExhausted, SubstrateTampered) as exc:
        print(f"hpc_aevo.round: {exc}", file=sys.stderr)
        return 2
    except RecordError as exc:  # the state tree itself is damaged: stop, change nothing
        print(f"hpc_aevo.round: damaged state, nothing changed: {exc} (README: damaged state)", file=sys.stderr)
        return 2
    except SchedulerUnavailable as exc:  # a submission or a lookup got no answer: state is on disk, retry later
        print(f"hpc_aevo.round: {exc}; nothing is lost: run the same command again once the scheduler answers",
              file=sys.stderr)
        return 75  # EX_TEMPFAIL
    tree = StateTree(campaign.paths.state_root)
    phases = sum(p.elapsed_s for r in tree.rounds() for p in (RoundState.load_or_none(tree.round_state(r))
                                                               or RoundState(r)).phases.values())
    print(f"[{campaign.name}] campaign done in {time.time() - started:.1f}s ({phases:.1f}s of phases over all its runs); "
          f"status: python -m hpc_aevo.status {args.campaign}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
