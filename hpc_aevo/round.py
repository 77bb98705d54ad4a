"""`python -m hpc_aevo.round CAMPAIGN.yaml`: run or resume a campaign (hpc_aevo/cli/round.py)."""

import sys

from hpc_aevo.cli.round import main

if __name__ == "__main__":
    sys.exit(main())
