"""torch.distributed and megatron's parallel state, from whatever launched this process.

One trainer runs as a single process (CI, a laptop), under torchrun, or as the tasks of one SLURM
job step (srun, one task per GPU or per CPU slot); this module turns each launcher's environment
into the same rendezvous, so train.py never cares which:

- torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are already set;
- SLURM: SLURM_PROCID, SLURM_STEP_NUM_TASKS (srun's; else SLURM_NTASKS), SLURM_LOCALID; MASTER_ADDR is the first host of
  `scontrol show hostnames $SLURM_JOB_NODELIST` and MASTER_PORT derives from SLURM_JOB_ID
  (both only where not already set), so every task of the step finds the same address;
- otherwise (or a world of one): one process, an in-memory store, no port to race for.

gloo on CPU, NCCL on CUDA. Megatron's parallel state then splits the world into tensor-parallel
groups of `tp` consecutive ranks and data-parallel groups across them; a mixture-of-experts model
with `ep` > 1 also splits its experts over expert-parallel groups of `ep` data-parallel ranks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

PORT_BASE, PORT_SPAN = 20_000, 20_000


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    launcher: str  # torchrun | slurm | single


def first_host(nodelist: str, env: dict) -> str:
    """The first host of a SLURM node list (`n[01-04]` style): what every task agrees on as master."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True,
                         env={**os.environ, **env})
    return out.stdout.split()[0]


def launch_from_env(env: os._Environ | dict = os.environ) -> Launch:
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                      env.get("MASTER_ADDR"), int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None, "torchrun")
    # srun's SLURM_STEP_NUM_TASKS counts the processes of this step, the ones that rendezvous; SLURM_NTASKS
    # counts the allocation's tasks (an `srun -n 2` inside a 4-task job would wait for 4 with it).
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1)))
    if "SLURM_PROCID" in env and ntasks > 1:
        addr = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"], env)
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else PORT_BASE + int(env["SLURM_JOB_ID"]) % PORT_SPAN
        return Launch(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), addr, port, "slurm")
    return Launch(0, 1, 0, None, None, "single")


def init(tp: int = 1, ep: int = 1) -> Launch:
    """Join the process group (once) and set up megatron's TP x DP (and expert-parallel) groups; returns
    this process's launch."""
    launch = launch_from_env()
    if launch.world_size % tp:
        raise ValueError(f"recipe parallel.tensor: {tp} does not divide the world size {launch.world_size}")
    if (launch.world_size // tp) % ep:
        raise ValueError(f"recipe parallel.expert: {ep} does not divide the data-parallel size "
                         f"{launch.world_size // tp} (world size {launch.world_size} / parallel.tensor {tp})")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if launch.world_size == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            os.environ.update(MASTER_ADDR=launch.master_addr or "127.0.0.1", MASTER_PORT=str(launch.master_port or 29500))
            dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=ep)
    if launch.world_size > 1:
        _host_group()  # every rank creates its groups in the same order: here, not at the first any_rank
    return launch


def dp_rank() -> int:
    return parallel_state.get_data_parallel_rank()


def dp_size() -> int:
    return parallel_state.get_data_parallel_world_size()


def holds_first_replica() -> bool:
    """Whether this rank holds part of the first model replica: with expert parallelism its experts span
    several data-parallel ranks (the first expert-data-parallel replica), else data-parallel rank 0."""
    if parallel_state.get_expert_model_parallel_world_size() > 1:
        return parallel_state.get_expert_data_parallel_rank() == 0
    return dp_rank() == 0


def is_main() -> bool:
    return dist.get_rank() == 0


def is_expert_parallel(param) -> bool:
    """megatron's mark of a weight that only this rank's expert-parallel group holds (an expert's)."""
    return not getattr(param, "allreduce", True)


def all_reduce_gradients(params) -> None:
    """Sum the gradients over the data-parallel group, in one flat buffer (one collective per step);
    expert-parallel weights over the expert-data-parallel group, the ranks that hold the same experts.

    Each rank's loss is already divided by the global count of loss tokens, so the sum is exactly
    the single-process gradient of the whole global batch."""
    params = [p for p in params if p.grad is not None]
    for group, size, mine in (
        (parallel_state.get_data_parallel_group, dp_size(), [p for p in params if not is_expert_parallel(p)]),
        (parallel_state.get_expert_data_parallel_group, parallel_state.get_expert_data_parallel_world_size(),
         [p for p in params if is_expert_parallel(p)]),
    ):
        if size == 1 or not mine:
            continue
        grads = [p.grad for p in mine]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group())
        for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Clip by the norm of the whole model's gradient: tensor-parallel shards summed over their TP
    group, experts over their expert-parallel group, replicated parameters counted once (torch's
    clip_grad_norm_ on one rank sees only its shards). Returns the norm as a device tensor (no host sync)."""
    params = [p for p in params if p.grad is not None]
    ep = parallel_state.get_expert_model_parallel_world_size()
    if parallel_state.get_tensor_model_parallel_world_size() == 1 and ep == 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    experts = [p for p in params if is_expert_parallel(p)]
    dense = [p for p in params if not is_expert_parallel(p)]
    sharded = [p for p in dense if getattr(p, "tensor_model_parallel", False)]
    replicated = [p for p in dense if not getattr(p, "tensor_model_parallel", False)]
    square = lambda group: sum((p.grad.detach().float() ** 2).sum() for p in group)  # noqa: E731
    total = torch.zeros((), device=_device()) + square(sharded)
    dist.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
    if ep > 1:  # (MoE runs with parallel.tensor 1: an expert is whole on its rank)
        expert_total = torch.zeros((), device=_device()) + square(experts)
        dist.all_reduce(expert_total, group=parallel_state.get_expert_model_parallel_group())
        total = total + expert_total
    norm = (total + square(replicated)).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.to(p.grad.dtype))
    return norm


def sum_over_dp(values: torch.Tensor) -> list[float]:
    """Each value summed over the data-parallel ranks, on the host: one collective and one sync for all."""
    values = values.double()
    if dp_size() > 1:
        dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
    return values.tolist()


def from_rank0(values: list[float]) -> list[float]:
    """Rank 0's values on every rank (timings, which differ a little per rank, in a state all ranks save)."""
    if dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.broadcast(t, src=0)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a signal delivered to one task stops them all together).
    Asked every step, so it goes over a host (gloo) group: an NCCL flag would sync the GPU each step."""
    if dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(t.item())


_HOST_GROUP = None


def _host_group():
    """The whole world over gloo, for small host-side collectives (the default group itself on CPU)."""
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _HOST_GROUP


def gather_rank_info(tokens: int, useful_tokens: int) -> list[dict]:
    """[{rank, host, tokens, useful_tokens}] for every rank of the world (the same list on every rank):
    input tokens this rank trained on, and those of them that are not padding."""
    mine = {"rank": dist.get_rank(), "host": socket.gethostname(), "tokens": int(tokens),
            "useful_tokens": int(useful_tokens)}
    if dist.get_world_size() == 1:
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


@contextlib.contextmanager
def cuda_answers_cpu():
    """megatron-core asks `torch.cuda.current_device()` for the device of a few tensors it allocates (the
    dist_checkpointing saver's status tensor, a router's expert-bias buffers) and calls
    `torch.cuda.synchronize()`; on a CPU-only torch both raise. Answer with the CPU there."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.current_device, torch.cuda.synchronize
    torch.cuda.current_device, torch.cuda.synchronize = (lambda: "cpu"), (lambda *args, **kwargs: None)
    try:
        yield
    finally:
        torch.cuda.current_device, torch.cuda.synchronize = saved


def cpu_is_the_current_device() -> None:
    """For the whole process on a CPU-only torch: megatron's sequence-parallel gathers and reduce-scatters
    (the allgather token dispatcher's under expert parallelism) allocate on `torch.cuda.current_device()`,
    in the forward and in the backward, where that call can only raise. It answers the CPU instead."""
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"


def barrier() -> None:
    if dist.get_world_size() > 1:
        dist.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
