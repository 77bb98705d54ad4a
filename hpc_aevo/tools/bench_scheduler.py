"""`python -m hpc_aevo.tools.bench_scheduler`: what watching a round costs the daemon, by candidate count.

For 8, 64 and 512 trivial candidates (a train.py and an evaluate.py that do nothing) it runs the
real launcher against the real SLURM cluster (SLURM_CONF; e.g. the devcluster) and prints, per
size: scheduler queries per poll (sacct, plus squeue for tasks sacct does not list yet, over the
launcher's polls) and the most one poll made, all scheduler commands (sbatch included), the
daemon's own CPU seconds and its children's (the scheduler commands), and the wall time of the
round. Writes the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from hpc_aevo.campaign.config import Budget, Stage, Stages
from hpc_aevo.campaign.profile import StageShape, StageShapes, load_profile
from hpc_aevo.jobs.backends.slurm import SlurmScheduler
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.launcher import Launcher
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.tree import StateTree

TRIVIAL = "import sys\nsys.exit(0)\n"
PROFILE = Path(__file__).resolve().parents[2] / "sbatch" / "devcluster.yaml"


def _trivial_round(root: Path, n: int) -> list[Candidate]:
    tree = StateTree(root)
    tree.default_dir.mkdir(parents=True)
    (tree.default_dir / "evaluate.py").write_text(TRIVIAL)
    candidates = []
    for i in range(n):
        sandbox = tree.sandbox(0, i)
        sandbox.mkdir(parents=True)
        (sandbox / "train.py").write_text(TRIVIAL)
        (sandbox / "recipe.yaml").write_text("steps: 0\n")
        CandidateManifest(round=0, candidate=i, name=f"cand-{i:02d}", role="worker", seed=i, axis=None,
                          status="proposed").save(tree.manifest(0, i))
        candidates.append(Candidate(0, i, tree))
    return candidates


def queries(scheduler: SlurmScheduler) -> int:
    return scheduler.calls["sacct"] + scheduler.calls["squeue"]


def _count_queries_per_poll(scheduler: SlurmScheduler) -> list[int]:
    """Wrap the scheduler's poll to keep the most queries one poll ran (a one-item list, updated in place)."""
    most, poll = [0], scheduler.poll

    def counted(submissions):
        before = queries(scheduler)
        try:
            return poll(submissions)
        finally:
            most[0] = max(most[0], queries(scheduler) - before)

    scheduler.poll = counted
    return most


def measure(n: int, max_parallel: int, poll_interval_s: float, profile_path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{n}-", dir=Path.cwd() / "logs") as tmp:
        root = Path(tmp)
        candidates = _trivial_round(root, n)
        profile = load_profile(profile_path)
        profile.stages = StageShapes(StageShape(), StageShape())
        stage = Stage(timeout_min=10, mem_gb=0.1, cpus=1)
        scheduler = SlurmScheduler(max_parallel, Stages(stage, stage), profile, f"bench{n}", root, poll_interval_s)
        launcher = Launcher(scheduler, 1, poll_interval_s, Budget(), StateTree(root), lambda *a: None)
        most = _count_queries_per_poll(scheduler)
        before, children, started = resource.getrusage(resource.RUSAGE_SELF), \
            resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
        launcher.run(candidates, lambda line: None)
        after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = sum(c.manifest().status == "trained" for c in candidates)
        failures = sorted({c.manifest().failure for c in candidates if c.manifest().status != "trained"})
    return {
        "candidates": n, "trained": done, "polls": launcher.polls, "scheduler_calls": dict(scheduler.calls),
        "queries_per_poll": round(queries(scheduler) / launcher.polls, 3), "most_queries_in_a_poll": most[0],
        "calls_per_poll": round(sum(scheduler.calls.values()) / launcher.polls, 3),
        "daemon_cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
        "scheduler_commands_cpu_s": round((children_after.ru_utime - children.ru_utime)
                                          + (children_after.ru_stime - children.ru_stime), 3),
        "wall_s": round(time.time() - started, 1), "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.tools.bench_scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,64,512", help="candidate counts (default 8,64,512)")
    parser.add_argument("--max-parallel", type=int, default=8, help="array tasks running at once (default 8)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="launcher poll interval, s (default 2)")
    parser.add_argument("--profile", type=Path, default=PROFILE, help="cluster profile (default: the devcluster's)")
    parser.add_argument("--out", type=Path, default=Path("logs/bench_scheduler.json"), help="JSON output file")
    args = parser.parse_args(argv)
    (Path.cwd() / "logs").mkdir(exist_ok=True)
    results = []
    print(f"{'candidates':>10} {'polls':>6} {'sacct':>6} {'squeue':>6} {'sbatch':>6} {'queries/poll':>12} "
          f"{'max/poll':>8} {'calls/poll':>10} {'daemon CPU s':>12} {'cmd CPU s':>9} {'wall s':>7}", flush=True)
    for n in (int(x) for x in args.sizes.split(",")):
        r = measure(n, args.max_parallel, args.poll_interval, args.profile)
        results.append(r)
        calls = r["scheduler_calls"]
        print(f"{r['candidates']:>10} {r['polls']:>6} {calls.get('sacct', 0):>6} {calls.get('squeue', 0):>6} "
              f"{calls.get('sbatch', 0):>6} {r['queries_per_poll']:>12} {r['most_queries_in_a_poll']:>8} "
              f"{r['calls_per_poll']:>10} {r['daemon_cpu_s']:>12} "
              f"{r['scheduler_commands_cpu_s']:>9} {r['wall_s']:>7}", flush=True)
        if r["trained"] != n:
            print(f"bench_scheduler: only {r['trained']} of {n} trivial candidates completed: {r['failures']}",
                  file=sys.stderr)
            return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_parallel": args.max_parallel, "poll_interval_s": args.poll_interval,
                                    "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
