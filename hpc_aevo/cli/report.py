"""`python -m hpc_aevo.report CAMPAIGN.yaml`: write `report/` under the campaign's state root and print its path.

Read-only on everything but `report/` (and the TensorBoard runs it draws from the records), so it is
safe to run while the daemon works; the daemon itself refreshes it at the end of every round.
"""

from __future__ import annotations

import argparse
import sys

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.report.build import ReportUnavailable, write_report
from hpc_aevo.state.records import RecordError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.report", description=__doc__.splitlines()[0])
    parser.add_argument("campaign", help="the campaign YAML")
    args = parser.parse_args(argv)
    try:
        print(write_report(load_campaign(args.campaign)))
    except (ConfigError, RecordError, ReportUnavailable) as exc:
        print(f"hpc_aevo.report: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
