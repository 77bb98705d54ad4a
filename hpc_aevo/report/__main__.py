"""`python -m hpc_aevo.report CAMPAIGN.yaml`: write the campaign's report (hpc_aevo/cli/report.py)."""

import sys

from hpc_aevo.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
