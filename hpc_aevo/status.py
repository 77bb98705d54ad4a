"""`python -m hpc_aevo.status CAMPAIGN.yaml`: what the campaign did (hpc_aevo/cli/status.py)."""

import sys

from hpc_aevo.cli.status import main

if __name__ == "__main__":
    sys.exit(main())
