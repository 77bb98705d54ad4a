"""`python -m hpc_aevo.round CAMPAIGN.yaml [--rounds N]`: run (or resume) a campaign.

One progress line per phase of every round. Killed at any moment, the same command continues
from the state tree, redoing nothing that finished and running no candidate twice.
"""

from __future__ import annotations

import argparse
import sys
import time

from .config import ConfigError, load_campaign, load_initial_policy
from .daemon import CampaignStopped, Daemon
from .launch import BudgetExhausted
from .state import CampaignBusy, DaemonLock, StateTree
from .substrate import SubstrateTampered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.round", description=__doc__.splitlines()[0])
    parser.add_argument("campaign", help="the campaign YAML")
    parser.add_argument("--rounds", type=int, default=None, help="run the first N rounds (default: the YAML's rounds)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        campaign = load_campaign(args.campaign)
        load_initial_policy(campaign)
        if args.rounds is not None and args.rounds < 1:
            raise ConfigError("--rounds", "an integer >= 1", args.rounds)
        with DaemonLock(StateTree(campaign.paths.state_root)):
            Daemon(campaign, print_line=lambda line: print(line, flush=True)).run(args.rounds)
    except (ConfigError, CampaignBusy, CampaignStopped, BudgetExhausted, SubstrateTampered) as exc:
        print(f"hpc_aevo.round: {exc}", file=sys.stderr)
        return 2
    print(f"[{campaign.name}] campaign done in {time.time() - started:.1f}s; "
          f"status: python -m hpc_aevo.status {args.campaign}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
