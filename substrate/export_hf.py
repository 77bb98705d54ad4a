"""A trained checkpoint as a Hugging Face directory that transformers and vLLM load.

    python export_hf.py --checkpoint DIR/export/ckpt-000500.safetensors --recipe recipe.yaml --out HF_DIR

The model is built from the recipe and the exported weights loaded into it as the evaluator does
(pickle-free, checked). Its own script, not a subcommand of hf_checkpoint.py: building the model
needs model.py, which imports hf_checkpoint.py for `model.init_from`; the conversion module stays
free of the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluate import load_export, recipe_model
from model import export_model, init_parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an export/ckpt-*.safetensors train.py wrote")
    parser.add_argument("--recipe", type=Path, required=True, help="the recipe it was trained with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    init_parallel(seed=0)
    try:
        _, cfg, model = recipe_model(args.recipe)
        load_export(model, args.checkpoint)
        print(export_model(model, cfg, args.out))
    except ValueError as error:
        sys.exit(f"export_hf.py: {error}")


if __name__ == "__main__":
    main()
