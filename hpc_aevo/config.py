"""`python -m hpc_aevo.config CAMPAIGN.yaml`: check a campaign file (hpc_aevo/cli/check.py)."""

import sys

from hpc_aevo.cli.check import check_campaign_main

if __name__ == "__main__":
    sys.exit(check_campaign_main())
