"""`python -m hpc_aevo.bench train|pack|noise`: the training benchmarks and the false-promotion rate (hpc_aevo/tools/bench.py)."""

import sys

from hpc_aevo.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
