"""`python -m hpc_aevo.bench train|pack`: the training benchmarks (hpc_aevo/tools/bench.py)."""

import sys

from hpc_aevo.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
