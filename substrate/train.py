"""Train the tiny GPT on the recipe's data mixture; resumable from its last checkpoint.

    python train.py --recipe recipe.yaml --out CHECKPOINT_DIR [--max-steps N]
    torchrun --nproc_per_node N train.py ...   |   srun python train.py ...

Writes a checkpoint (ckpt-<step>.pt, or a distributed ckpt-<step>/, see checkpoint.py) every
`checkpoints.every` steps and at the end, with its pickle-free export (export/ckpt-<step>.safetensors,
see safe_weights.py: the only thing the evaluator reads), one JSON line of metrics per log interval
on stdout, and train_summary.json when done. Under torchrun or srun (see distributed.py) every rank trains
its slice of each global batch and the gradients are summed, so the loss curve is the
single-process one; rank 0 writes the logs and the summary. Started again on the same directory,
it resumes from the newest checkpoint: same data order, optimizer and RNG state, so the loss
curve continues as if never interrupted. SIGTERM or SIGUSR2 (a scheduler's timeout warning) on
any rank saves a checkpoint at the next step boundary and exits with code 3 (requeue me).
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

import checkpoint as checkpoints
import data
import distributed
import layers
import moe
import packing
import safe_weights
from model import build_model, checked_model_config, forward, init_parallel, resolve_config, use_tokenizer
import tokenizer

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


def log(entry: dict) -> None:
    """One JSON line on stdout, from rank 0 only (the other ranks hold the same numbers)."""
    if distributed.is_main():
        print(json.dumps(entry), flush=True)


def export(out: Path, step: int, model) -> None:
    """The pickle-free copy of checkpoint `step` that the evaluator reads (every rank calls): the first
    model replica's tensor- and expert-parallel ranks gather its shards, and rank 0 writes them."""
    if distributed.holds_first_replica():
        state = safe_weights.full_state(model)
        if distributed.is_main():
            safe_weights.write(out, step, state)
    distributed.barrier()


def train(recipe: dict, out: Path, max_steps: int | None = None, base: Path = Path(".")) -> dict:
    """Train the recipe into `out`; `base` is the recipe's directory (a relative model.init_from is in it)."""
    preemption = Preemption()  # first, so a signal during setup still ends in a checkpoint and exit 3
    seed, optim = int(recipe["seed"]), recipe["optim"]
    model_cfg = checked_model_config(recipe["model"], base)
    tp, fmt = int(recipe.get("parallel", {}).get("tensor", 1)), checkpoints.fmt_of(recipe)
    ep = recipe.get("parallel", {}).get("expert", 1)
    if type(ep) is not int or ep < 1:
        raise ValueError(f"recipe parallel.expert: expected an integer from 1 (got {ep!r})")
    for key, size, what in (("tensor", tp, "tensor"), ("expert", ep, "expert")):
        if size > 1 and fmt != "dist":
            raise ValueError(f"recipe checkpoints.format: {what} parallelism (parallel.{key} {size}) needs dist "
                             f"(got {fmt!r})")
    if tp > 1 and resolve_config(model_cfg).get("moe"):
        raise ValueError(f"recipe parallel.tensor: a mixture of experts trains with 1 (got {tp}): megatron trains "
                         "its MoE under tensor parallelism with sequence parallelism only, which this trainer does "
                         "not run (an MoE builds, imports and exports under tensor parallelism)")
    launch = init_parallel(seed, tp, ep)
    use_tokenizer(model_cfg)
    choice = layers.choose(model_cfg)  # before the data: a precision this machine cannot run fails at once
    pack = bool(recipe["data"].get("pack", False))
    if pack and choice.backend == "te":
        # TE's fused attention ignores megatron's explicit mask; packed rows there need THD cu_seqlens (not built yet).
        raise layers.LayerSpecError("recipe data.pack: packing runs on megatron's local spec only (CPU) for now; "
                                    "set it false on a Transformer Engine GPU")
    examples = data.mixture_dataset(recipe["data"], seed)
    rows = data.tokenize(examples, int(model_cfg["seq_len"]), pack=pack).with_format("torch")
    ids_all, mask_all = rows["ids"][:], rows["loss_mask"][:].float()
    segments_all = rows["segments"][:] if pack else None
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = build_model(model_cfg).to(device)
    experts = moe.routers(model)
    if experts:
        moe.set_aux_loss_scale(distributed.dp_size())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(optim["lr"]), weight_decay=float(optim.get("weight_decay", 0.0)), betas=(0.9, 0.95),
        fused=device.type == "cuda",  # one kernel for all parameters on the GPU; the CPU keeps the default loop
    )
    out.mkdir(parents=True, exist_ok=True)
    step, history, losses, earlier_wall, earlier_loop, earlier_cpu, tokens, useful = 0, [], [], 0.0, 0.0, 0.0, 0, 0
    earlier_saving = 0.0
    load: list[list[float]] = []  # a mixture of experts' load at the last log line (none yet)
    existing = checkpoints.paths(out)
    if existing:
        state = checkpoints.load(existing[-1], model, optimizer)
        torch.set_rng_state(state["rng"])
        step, history, losses, earlier_wall = state["step"], state["history"], state["losses"], state["wall_s"]
        earlier_loop, earlier_cpu = state.get("loop_s", 0.0), state.get("loop_cpu_s", 0.0)
        earlier_saving = state.get("checkpoint_s", 0.0)
        saved = next((r for r in state.get("ranks", []) if r["rank"] == launch.rank), {})
        tokens, useful = saved.get("tokens", 0), saved.get("useful_tokens", 0)
        log({"event": "resumed", "step": step, "checkpoint": existing[-1].name})
        if distributed.any_rank(not (out / safe_weights.EXPORT_DIR / safe_weights.export_name(step)).is_file()):
            export(out, step, model)  # a kill between the save and its export
    total = int(optim["steps"]) if max_steps is None else min(int(optim["steps"]), max_steps)
    every, batch_size = int(recipe["checkpoints"]["every"]), int(optim["batch_size"])
    log_every = int(recipe.get("logging", {}).get("every", 25))
    if batch_size < distributed.dp_size():
        raise ValueError(f"recipe optim.batch_size: {batch_size} rows cannot be split over {distributed.dp_size()} data-parallel ranks")
    started = time.time()
    loop_s = loop_cpu_s = 0.0  # wall and CPU time in training steps (this run), for throughput on busy machines
    saving_s = 0.0  # wall time in checkpoint saves (this run): what checkpointing costs on top of the loop
    pending: list[torch.Tensor] = []  # this rank's losses of the steps not yet logged, still on the device

    def flush_losses() -> None:
        """The pending steps' global losses into `losses`: one collective and one device sync for all of
        them, at log and checkpoint steps only, so the GPU never waits for the host in between."""
        if pending:
            losses.extend(distributed.sum_over_dp(torch.stack(pending)))
            pending.clear()

    def checkpoint() -> None:
        """Save, then drop earlier off-schedule (preemption) checkpoints: a requeued run ends with
        the same checkpoint set as an uninterrupted one, so the evaluator compares like with like."""
        nonlocal saving_s
        saving_started = time.time()
        wall_s, total_loop_s, total_cpu_s, total_saving_s = distributed.from_rank0(
            [earlier_wall + time.time() - started, earlier_loop + loop_s, earlier_cpu + loop_cpu_s,
             earlier_saving + saving_s])
        checkpoints.save(out, step, model, optimizer, {
            "step": step, "rng": torch.get_rng_state(), "history": history, "losses": losses,
            "model_config": model_cfg, "wall_s": wall_s, "loop_s": total_loop_s, "loop_cpu_s": total_cpu_s,
            "checkpoint_s": total_saving_s, "ranks": distributed.gather_rank_info(tokens, useful),
        }, fmt)
        export(out, step, model)
        if distributed.is_main():
            for path in checkpoints.paths(out):
                if checkpoints.step_of(path) < step and checkpoints.step_of(path) % every:
                    checkpoints.remove(path)
            kept = {checkpoints.step_of(path) for path in checkpoints.paths(out)}
            for path in (out / safe_weights.EXPORT_DIR).glob("ckpt-*.safetensors"):
                if safe_weights.step_of(path.name) not in kept:
                    path.unlink()
        distributed.barrier()
        saving_s += time.time() - saving_started

    model.train()
    while step < total:
        step_started, step_cpu = time.time(), time.process_time()
        idx = batch_indices(step, batch_size, len(ids_all), seed)
        # Normalise by the loss tokens of the whole global batch: the ranks' gradients then sum to
        # the single-process gradient, whatever the split.
        global_loss_tokens = mask_all[idx][:, 1:].sum()
        mine = torch.tensor_split(idx, distributed.dp_size())[distributed.dp_rank()]
        ids_cpu = ids_all[mine]
        ids, mask = ids_cpu.to(device, non_blocking=True), mask_all[mine].to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, optim)
        if pack:  # each example attends only to itself, with its own positions
            segments = segments_all[mine][:, :-1].to(device)
            token_loss = model(ids[:, :-1], packing.positions(segments), packing.attention_mask(segments),
                               labels=ids[:, 1:])
        else:
            token_loss = forward(model, ids[:, :-1], labels=ids[:, 1:])
        loss = (token_loss * mask[:, 1:]).sum() / global_loss_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(model.parameters())
        distributed.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        if experts:
            moe.update_expert_bias(model)
        step += 1
        tokens += ids_cpu[:, :-1].numel()
        useful += int((ids_cpu[:, :-1] != tokenizer.active().pad).sum())  # counted on the host copy: no device sync
        pending.append(loss.detach())
        # The ranks' agreed answer, kept apart from the flag: a signal landing after this point (during
        # the save below) sets one rank's flag only, and is acted on at the next step's agreement.
        preempted = distributed.any_rank(preemption.requested)
        logs = step % log_every == 0 or step == total
        saves = step % every == 0 or step == total or preempted
        if logs or saves:
            flush_losses()  # inside the timed step: the device work of the steps before is waited for here
        loop_s += time.time() - step_started
        loop_cpu_s += time.process_time() - step_cpu
        if logs:
            entry = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_at(step - 1, optim),
                     "loop_s": earlier_loop + loop_s}
            if experts and (aux := moe.aux_loss(model)) is not None:  # the ranks' mean, all layers'
                entry["aux_loss"] = distributed.sum_over_dp(torch.tensor([aux]))[0] / distributed.dp_size()
            if experts:  # each expert's share of the tokens routed since the last line (all data-parallel ranks)
                load = moe.expert_load(model, distributed.sum_over_dp)
            history.append(entry)
            losses = []
            log(entry)
        if saves:
            checkpoint()
        if preempted:
            log({"event": "preempted", "step": step})
            sys.exit(EXIT_PREEMPTED)
    summary = {"steps": step, "final_loss": history[-1]["loss"] if history else None,
               "wall_s": earlier_wall + time.time() - started, "loop_s": earlier_loop + loop_s,
               "loop_cpu_s": earlier_cpu + loop_cpu_s, "checkpoint_s": earlier_saving + saving_s,
               "examples": len(examples), "rows": len(ids_all),
               "packed": pack, "history": history, "world_size": launch.world_size,
               "ranks": distributed.gather_rank_info(tokens, useful)}
    if experts:  # the router as training ended: the last logging interval's load
        summary["expert_load"] = load
    if distributed.is_main():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipe.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (smoke tests)")
    args = parser.parse_args()
    try:
        train(yaml.safe_load(args.recipe.read_text()), args.out, args.max_steps, args.recipe.absolute().parent)
    except ValueError as error:  # a recipe the trainer refuses (layers.LayerSpecError among them): one line
        if not str(error).startswith("recipe "):
            raise  # anything else keeps its traceback
        sys.exit(f"train.py: {args.recipe}: {error}")


if __name__ == "__main__":
    data.datasets.disable_progress_bars()
    main()
