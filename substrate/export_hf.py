"""A trained checkpoint as a Hugging Face directory that transformers and vLLM load.

    python export_hf.py --checkpoint DIR/ckpt-000500.pt --out HF_DIR

Its own script, not a subcommand of hf_checkpoint.py: building the model needs model.py, which
imports hf_checkpoint.py for `model.init_from`; the conversion module stays free of the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model import export_checkpoint, init_parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a ckpt-*.pt that train.py wrote")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    init_parallel(seed=0)
    print(export_checkpoint(args.checkpoint, args.out))


if __name__ == "__main__":
    main()
