"""`python -m hpc_aevo.bench train|pack|noise|search`: the training benchmarks, the false-promotion rate and the
search against Optuna and random search (hpc_aevo/tools/bench.py)."""

import sys

from hpc_aevo.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
