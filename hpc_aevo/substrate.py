"""`python -m hpc_aevo.substrate check DIR`: check a substrate against the contract (hpc_aevo/cli/substrate.py)."""

import sys

from hpc_aevo.cli.substrate import main

if __name__ == "__main__":
    sys.exit(main())
