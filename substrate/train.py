"""Train the tiny GPT on the recipe's data mixture; resumable from its last checkpoint.

    python train.py --recipe recipe.yaml --out CHECKPOINT_DIR [--max-steps N]

Writes ckpt-<step>.pt every `checkpoints.every` steps and at the end, one JSON line of metrics
per log interval on stdout, and train_summary.json when done. Started again on the same
directory, it resumes from the newest checkpoint: same data order, optimizer and RNG state, so
the loss curve continues as if never interrupted. SIGTERM or SIGUSR2 (a scheduler's timeout
warning) saves a checkpoint at the next step boundary and exits with code 3 (requeue me).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
import yaml

import data
from model import build_model, checkpoint_paths, forward, init_parallel, save_checkpoint, use_tokenizer

EXIT_PREEMPTED = 3


def lr_at(step: int, optim: dict) -> float:
    """Linear warmup, then the recipe's decay (cosine, linear or constant) to 10% of the peak."""
    peak, warmup, total = float(optim["lr"]), int(optim.get("warmup_steps", 0)), int(optim["steps"])
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    schedule = optim.get("schedule", "cosine")
    if schedule == "constant":
        return peak
    if schedule == "linear":
        return peak * (1.0 - 0.9 * progress)
    if schedule == "cosine":
        return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"recipe optim.schedule: expected cosine, linear or constant (got {schedule!r})")


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows for `step`: a fresh permutation per epoch, a pure function of (seed, epoch) so resume is exact."""
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size]


class Preemption:
    """Turns SIGTERM/SIGUSR2 into a flag the loop checks at step boundaries."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def _step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def train(recipe: dict, out: Path, max_steps: int | None = None) -> dict:
    preemption = Preemption()  # first, so a signal during setup still ends in a checkpoint and exit 3
    seed, optim, model_cfg = int(recipe["seed"]), recipe["optim"], recipe["model"]
    init_parallel(seed)
    use_tokenizer(model_cfg)
    rows = data.tokenize(data.mixture_dataset(recipe["data"], seed), int(model_cfg["seq_len"])).with_format("torch")
    ids_all, mask_all = rows["ids"][:], rows["loss_mask"][:].float()
    model = build_model(model_cfg)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(optim["lr"]), weight_decay=float(optim.get("weight_decay", 0.0)), betas=(0.9, 0.95)
    )
    out.mkdir(parents=True, exist_ok=True)
    step, history, losses, earlier_wall = 0, [], [], 0.0
    existing = checkpoint_paths(out)
    if existing:
        state = torch.load(existing[-1], map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, history, losses, earlier_wall = state["step"], state["history"], state["losses"], state["wall_s"]
        print(json.dumps({"event": "resumed", "step": step, "checkpoint": existing[-1].name}), flush=True)
    total = int(optim["steps"]) if max_steps is None else min(int(optim["steps"]), max_steps)
    every, batch_size = int(recipe["checkpoints"]["every"]), int(optim["batch_size"])
    started = time.time()

    def checkpoint() -> None:
        """Save, then drop earlier off-schedule (preemption) checkpoints: a requeued run ends with
        the same checkpoint set as an uninterrupted one, so the evaluator compares like with like."""
        save_checkpoint(out / f"ckpt-{step:06d}.pt", {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "history": history, "losses": losses, "model_config": model_cfg,
            "wall_s": earlier_wall + time.time() - started,
        })
        for path in checkpoint_paths(out):
            if _step_of(path) < step and _step_of(path) % every:
                path.unlink()

    model.train()
    while step < total:
        idx = batch_indices(step, batch_size, len(ids_all), seed)
        ids, mask = ids_all[idx], mask_all[idx]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, optim)
        token_loss = forward(model, ids[:, :-1], labels=ids[:, 1:])
        loss = (token_loss * mask[:, 1:]).sum() / mask[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if step % 25 == 0 or step == total:
            entry = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_at(step - 1, optim)}
            history.append(entry)
            losses = []
            print(json.dumps(entry), flush=True)
        if step % every == 0 or step == total or preemption.requested:
            checkpoint()
        if preemption.requested:
            print(json.dumps({"event": "preempted", "step": step}), flush=True)
            sys.exit(EXIT_PREEMPTED)
    summary = {"steps": step, "final_loss": history[-1]["loss"] if history else None,
               "wall_s": earlier_wall + time.time() - started, "examples": len(ids_all), "history": history}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipe.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    args = parser.parse_args()
    train(yaml.safe_load(args.recipe.read_text()), args.out, args.max_steps)


if __name__ == "__main__":
    data.datasets.disable_progress_bars()
    main()
