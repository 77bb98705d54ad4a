"""`python -m hpc_aevo.profile PROFILE.yaml`: check a cluster profile (hpc_aevo/cli/check.py)."""

import sys

from hpc_aevo.cli.check import check_profile_main

if __name__ == "__main__":
    sys.exit(check_profile_main())
