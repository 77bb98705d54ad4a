"""One rank of the tensor-parallel import/export check, under `torchrun --nproc-per-node 2`.

    python -m torch.distributed.run --nproc-per-node 2 tests/tp_hf_worker.py HF_DIR OUT_DIR

Imports HF_DIR (a Llama, Mixtral, Qwen3-MoE or Qwen2-MoE) into a TP=2 megatron model (each rank its shard),
runs a forward pass on every rank, exports back to OUT_DIR/export and writes OUT_DIR/rank<r>.pt with the
logits and the shard.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hf_llama_fixtures import SMALL  # also puts the substrate on sys.path

from megatron.core import parallel_state  # noqa: E402

import hf_checkpoint  # noqa: E402
from model import build_model, forward, init_parallel, resolve_config  # noqa: E402


def main() -> None:
    hf_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.distributed.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    init_parallel(seed=0)
    cfg = {"init_from": str(hf_dir), "seq_len": 32}
    model = build_model(cfg).eval()
    ids = torch.arange(24).remainder(SMALL["vocab_size"]).view(2, 12)
    with torch.no_grad():
        logits = forward(model, ids)
    hf_checkpoint.export_hf(model, resolve_config(cfg), out / "export", eos=1)
    rank = torch.distributed.get_rank()
    torch.save({"logits": logits, "shard": hf_checkpoint.weights(model.state_dict())}, out / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
