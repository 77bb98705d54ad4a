"""`python -m hpc_aevo.tools.bench_scheduler`: what watching a round costs the daemon, by candidate count.

For 8, 64 and 512 trivial candidates (a train.py and an evaluate.py that do nothing) it runs the
real launcher against the real SLURM cluster (SLURM_CONF; e.g. the devcluster) and prints, per
size: scheduler queries per poll (sacct, plus squeue for tasks sacct does not list yet, over the
launcher's polls) and the most one poll made, all scheduler commands (sbatch included), the
daemon's own CPU seconds (in all; in the first poll, which submits every candidate; per later poll,
which only watches: the mean and the most), its children's (the scheduler commands), and the wall
time of the round. Writes the figures as JSON (--out).
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
from hpc_aevo.jobs.launcher import Launcher, TrainTrack
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


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PollMeter:
    """Wraps the scheduler's poll to measure, per launcher poll, the scheduler queries and the daemon's
    own CPU time from one poll to the next. The first poll's interval is the one that submits every
    candidate (manifests, intents, sbatch through submitit, job ids, trace lines: once per attempt);
    each later one only watches (no retries here), and that is the figure that must not grow with the
    candidates."""

    def __init__(self, scheduler: SlurmScheduler):
        self.most_queries, self.cpu_s = 0, []  # cpu_s[i]: from the start of poll i to the next one
        self._poll_started: float | None = None
        poll = scheduler.poll

        def metered(submissions):
            self._next(_cpu_s())
            before = queries(scheduler)
            try:
                return poll(submissions)
            finally:
                self.most_queries = max(self.most_queries, queries(scheduler) - before)

        scheduler.poll = metered

    def _next(self, now: float) -> None:
        if self._poll_started is not None:
            self.cpu_s.append(now - self._poll_started)
        self._poll_started = now

    def finish(self) -> None:
        """The launcher returned: its last poll's interval ends here."""
        self._next(_cpu_s())


def measure(n: int, max_parallel: int, poll_interval_s: float, profile_path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{n}-", dir=Path.cwd() / "logs") as tmp:
        root = Path(tmp)
        candidates = _trivial_round(root, n)
        profile = load_profile(profile_path)
        profile.stages = StageShapes()
        stage = Stage(timeout_min=10, mem_gb=0.1, cpus=1)
        scheduler = SlurmScheduler(max_parallel, Stages(stage, stage), profile, f"bench{n}", root, poll_interval_s)
        launcher = Launcher(scheduler, 1, poll_interval_s, Budget(), StateTree(root), TrainTrack(lambda *a: None))
        meter = PollMeter(scheduler)
        before, children, started = _cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
        launcher.run(candidates, lambda line: None)
        meter.finish()
        after, children_after = _cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.time() - started
        done = sum(c.manifest().status == "trained" for c in candidates)
        failures = sorted({c.manifest().failure for c in candidates if c.manifest().status != "trained"})
    submitting, watching = meter.cpu_s[0], meter.cpu_s[1:]
    return {
        "candidates": n, "trained": done, "polls": launcher.polls, "scheduler_calls": dict(scheduler.calls),
        "queries_per_poll": round(queries(scheduler) / launcher.polls, 3), "most_queries_in_a_poll": meter.most_queries,
        "calls_per_poll": round(sum(scheduler.calls.values()) / launcher.polls, 3),
        "daemon_cpu_s": round(after - before, 3), "submitting_poll_cpu_s": round(submitting, 3),
        "daemon_cpu_per_poll_s": round(sum(watching) / len(watching), 4),
        "most_daemon_cpu_in_a_poll_s": round(max(watching), 4),
        "scheduler_commands_cpu_s": round((children_after.ru_utime - children.ru_utime)
                                          + (children_after.ru_stime - children.ru_stime), 3),
        "wall_s": round(wall, 1), "failures": failures,
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
          f"{'max/poll':>8} {'calls/poll':>10} {'daemon CPU s':>12} {'submitting poll CPU s':>21} {'CPU/poll s':>10} "
          f"{'max CPU/poll s':>14} {'cmd CPU s':>9} {'wall s':>7}", flush=True)
    for n in (int(x) for x in args.sizes.split(",")):
        r = measure(n, args.max_parallel, args.poll_interval, args.profile)
        results.append(r)
        calls = r["scheduler_calls"]
        print(f"{r['candidates']:>10} {r['polls']:>6} {calls.get('sacct', 0):>6} {calls.get('squeue', 0):>6} "
              f"{calls.get('sbatch', 0):>6} {r['queries_per_poll']:>12} {r['most_queries_in_a_poll']:>8} "
              f"{r['calls_per_poll']:>10} {r['daemon_cpu_s']:>12} {r['submitting_poll_cpu_s']:>21} "
              f"{r['daemon_cpu_per_poll_s']:>10} {r['most_daemon_cpu_in_a_poll_s']:>14} "
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
