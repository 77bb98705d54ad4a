"""The compute ledger: GPU-hours and CPU-hours per task, candidate, round and campaign.

Each finished attempt adds one entry per scheduler task. On SLURM the numbers come from sacct
(elapsed x allocated GPUs, elapsed x allocated CPUs: what the cluster charges, whether used or
not); the local backend has no allocation, so its entry is the CPU time the job's processes used.
The daemon reads the budget from here before every submission, and `status` shows it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from hpc_aevo.state.records import Record, RecordError
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.typed import SchemaError, from_data, to_data


@dataclass
class TaskCharge:
    key: str  # "r000/cand-01"
    attempt: int
    stage: str  # "train", "eval", or "job" (local: both stages in one process)
    job_id: str | None
    state: str  # the task's end state (sacct's, or the outcome's)
    elapsed_s: float
    cpus: int
    gpus: int
    cpu_hours: float
    gpu_hours: float


@dataclass
class Ledger(Record):
    SCHEMA = "hpc_aevo.ledger"
    VERSION = 1

    CHECK_ON_SAVE = False  # rewritten whole on most polls (512 candidates: 1,024 charges); add() checks each

    charges: dict[str, TaskCharge] = field(default_factory=dict)  # "r000/cand-01#1/train" -> charge

    def add(self, charge: TaskCharge) -> None:
        try:
            from_data(TaskCharge, to_data(charge))
        except SchemaError as exc:
            raise RecordError(f"refusing to charge {charge.key}#{charge.attempt}: {exc}") from None
        self.charges[f"{charge.key}#{charge.attempt}/{charge.stage}"] = charge

    def totals(self) -> tuple[float, float]:
        """(CPU-hours, GPU-hours) of the whole campaign."""
        return (sum(c.cpu_hours for c in self.charges.values()), sum(c.gpu_hours for c in self.charges.values()))

    def summary(self) -> dict:
        """Per campaign, per round and per candidate: CPU-hours, GPU-hours and tasks charged."""
        rounds: dict[str, dict] = defaultdict(lambda: {"cpu_hours": 0.0, "gpu_hours": 0.0, "candidates": {}})
        for charge in self.charges.values():
            rnd, cand = charge.key.split("/")
            entry = rounds[rnd]
            entry["cpu_hours"] += charge.cpu_hours
            entry["gpu_hours"] += charge.gpu_hours
            per = entry["candidates"].setdefault(cand, {"cpu_hours": 0.0, "gpu_hours": 0.0, "tasks": []})
            per["cpu_hours"] += charge.cpu_hours
            per["gpu_hours"] += charge.gpu_hours
            per["tasks"].append(f"{charge.stage}#{charge.attempt} {charge.job_id or '-'} {charge.state} "
                                f"{charge.elapsed_s:.0f}s x {charge.cpus} CPU {charge.gpus} GPU")
        cpu, gpu = self.totals()
        return {"cpu_hours": round(cpu, 4), "gpu_hours": round(gpu, 4),
                "rounds": {r: {**v, "cpu_hours": round(v["cpu_hours"], 4), "gpu_hours": round(v["gpu_hours"], 4),
                               "candidates": {c: {**x, "cpu_hours": round(x["cpu_hours"], 4),
                                                  "gpu_hours": round(x["gpu_hours"], 4)}
                                              for c, x in sorted(v["candidates"].items())}}
                           for r, v in sorted(rounds.items())}}


def record_charges(tree: StateTree, charges: list[TaskCharge]) -> None:
    """Add charges to the campaign's ledger in one locked, atomic rewrite."""
    if charges:
        with Ledger.locked_update(tree.compute_ledger, Ledger()) as ledger:
            for charge in charges:
                ledger.add(charge)


def load_ledger(tree: StateTree) -> Ledger:
    return Ledger.load_or_none(tree.compute_ledger) or Ledger()
