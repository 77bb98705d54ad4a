"""`bench search`: the loop against TPE and random search at equal candidates. The space and the bookkeeping
are checked on their own; one quick run goes through the real campaign, Optuna and the real trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from hpc_aevo.tools import bench
from hpc_aevo.tools.bench_search import (Run, Trial, _ship_best_dev, base_values, examples_trained, render,
                                         search_space, shipped_within, summarize, with_budget)
from tiny_campaign import REPO

RECIPE = yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text())


def test_the_space_covers_the_active_axes_and_holds_the_standing_recipe():
    space = search_space(RECIPE, ["mixture", "schedule", "budget"])
    keys = [p.key for p in space]
    assert {"optim.lr", "optim.warmup_steps", "optim.weight_decay", "optim.schedule", "optim.steps",
            "optim.batch_size"} <= set(keys)
    assert {f"data.mixture.{d}" for d in RECIPE["data"]["mixture"]} <= set(keys)
    assert not any(k.startswith("model.") or k.startswith("data.filter") for k in keys)  # not an active axis
    for p, value in zip(space, base_values(RECIPE, space).values()):
        assert value in p.choices if p.kind == "choice" else p.low <= value <= p.high, (p, value)
    lr = next(p for p in space if p.key == "optim.lr")
    assert (lr.kind, lr.low, lr.high) == ("log", RECIPE["optim"]["lr"] / 4, RECIPE["optim"]["lr"] * 4)


def test_a_search_that_changes_the_steps_checkpoints_at_its_end():
    assert with_budget({"optim.steps": 300, "optim.lr": 0.01}) == {"optim.steps": 300, "optim.lr": 0.01,
                                                                   "checkpoints.every": 300}
    assert with_budget({"optim.lr": 0.01}) == {"optim.lr": 0.01}


def test_a_sampler_ships_its_best_dev_and_the_summary_follows_what_is_shipped():
    trials: list[Trial] = []
    for dev, heldout in ((0.30, 0.10), (0.40, 0.05), (0.35, 0.20), (0.45, 0.12)):
        _ship_best_dev(trials, {"dev": dev, "heldout": heldout, "train_s": 6.0, "eval_s": 3.0, "heldout_s": 1.0}, {},
                       examples_trained(RECIPE))
    assert [t.shipped_heldout for t in trials] == [0.10, 0.05, 0.05, 0.12]  # never the held-out it did not tune on
    _ship_best_dev(trials, None, {"optim.lr": 9.0}, 10)  # a failed trial was spent and ships what was shipped
    assert (trials[-1].dev, trials[-1].shipped_heldout) == (None, 0.12)
    trials.pop()
    other = [Trial(i, 0.3, 0.1, 5.0, s) for i, s in enumerate((0.10, 0.10, 0.08, 0.08))]
    summary = summarize([Run("tpe", 0, trials, 40.0), Run("tpe", 1, other, 20.0)], 4)["tpe"]
    assert summary["final"] == [0.12, 0.08] and summary["final_mean"] == pytest.approx(0.10)
    assert summary["curve"][1] == {"candidates": 2, "mean": pytest.approx(0.075), "min": 0.05, "max": 0.10}
    assert summary["best_heldout_seen_mean"] == pytest.approx((0.20 + 0.10) / 2)
    assert summary["candidate_s"] == pytest.approx(30.0)
    steps_x_batch = RECIPE["optim"]["steps"] * RECIPE["optim"]["batch_size"]
    assert summary["examples"] == pytest.approx(4 * steps_x_batch / 2)  # the other run's trials record none
    assert f"{4 * steps_x_batch / 2:,.0f}" in render({"tpe": summary}, 4) and "0.100 ± 0.028" in render({"tpe": summary}, 4)
    alone = summarize([Run("tpe", 0, other, 20.0)], 4)
    assert "| tpe | 0.080 (one seed) |" in render(alone, 4)


def test_equal_compute_is_what_a_run_ships_once_it_spent_what_the_loop_of_its_seed_spent():
    loop = [Trial(i, 0.3, 0.1, 1.0, shipped, examples=100) for i, shipped in enumerate((0.10, 0.10, 0.15))]
    tpe = [Trial(i, 0.3, 0.1, 1.0, shipped, examples=spent) for i, (shipped, spent) in
           enumerate(((0.10, 50), (0.20, 50), (0.50, 300)))]  # its best is its last, at 4/3 of the loop's compute
    assert shipped_within(tpe, 300) == 0.20 and shipped_within(tpe, 400) == 0.50 and shipped_within(tpe, 40) is None
    summary = summarize([Run("loop", 0, loop, 1.0), Run("tpe", 0, tpe, 1.0), Run("tpe", 1, tpe[:2], 1.0)], 3)
    assert summary["loop"]["at_loop_compute"] == [0.15]  # the loop at its own compute ships what it ships at its end
    assert summary["tpe"]["at_loop_compute"] == [0.20, 0.20]  # seed 1 has no loop run: the loops' mean, 300
    assert summary["tpe"]["final"] == [0.50, 0.20]
    assert summary["tpe"]["compute_curve"][-1] == {"examples": 400, "mean": pytest.approx(0.35), "min": 0.20, "max": 0.50}
    assert "| tpe | 0.350 ± 0.212 | 0.500, 0.200 | 0.200; 0.200, 0.200 |" in render(summary, 3)


def _stopped_quick_record(tmp_path, runs: list[dict]):
    """A `--quick --seeds 2` record as the bench writes it before its last run, with `runs` in it."""
    from hpc_aevo.campaign.config import load_campaign, load_initial_policy
    from hpc_aevo.tools.bench_search import QUICK_RECIPE, SCHEMA, VERSION
    from hpc_aevo.tools.calibrate import apply_overrides

    initial = load_initial_policy(load_campaign(bench.DEMO_CAMPAIGN))
    space = search_space(apply_overrides(initial.standing_recipe, QUICK_RECIPE), initial.active_axes)
    out = tmp_path / "search.json"
    out.write_text(json.dumps({"schema": SCHEMA, "version": VERSION, "campaign": str(bench.DEMO_CAMPAIGN), "quick": True,
                               "rounds": 1, "candidates_per_method": 4, "space": [p.__dict__ for p in space],
                               "complete": False, "seeds": 2, "runs": runs, "wall_s": 30.0}))
    return out


RUN = {"method": "tpe", "seed": 0, "wall_s": 9.0, "story": [],
       "trials": [{"index": 0, "dev": 0.3, "heldout": 0.1, "wall_s": 2.0, "shipped_heldout": 0.1}]}


@pytest.mark.parametrize(("args", "runs", "said"), [
    (["--rounds", "2"], [RUN], "rounds: the record has 1, this bench asks 2: another question; give another --out"),
    ([], [{**RUN, "trials": [{**RUN["trials"][0], "dev": "high"}]}], "trials[0].dev: expected"),
    ([], [RUN, RUN], "runs[1]: expected one run of each method and seed"),
    ([], [{**RUN, "method": "grid"}], "runs[0]: expected one run of each method and seed"),
    (["--seeds", "1"], [RUN, {**RUN, "seed": 1}], "runs[1]: the record has seed 1; ask --seeds 2 or more"),
])
def test_resume_refuses_a_record_of_another_question_or_a_broken_one_in_one_line(tmp_path, capsys, args, runs, said):
    out = _stopped_quick_record(tmp_path, runs)
    with pytest.raises(SystemExit) as exited:
        bench.main(["search", "--quick", "--resume", "--out", str(out), *args])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "--resume" in last and said in last, last
    assert json.loads(out.read_text())["runs"] == runs  # nothing the stopped bench measured is lost


def test_resume_refuses_what_is_not_a_record_without_reading_a_fifo(tmp_path, capsys):
    out = tmp_path / "search.json"
    os.mkfifo(out)
    with pytest.raises(SystemExit):
        bench.main(["search", "--quick", "--resume", "--out", str(out)])
    assert "--resume: expected a bench search record" in capsys.readouterr().err


def test_resume_keeps_the_runs_and_runs_nothing_when_they_are_all_there(tmp_path, capsys):
    kept = [{**RUN, "method": m, "seed": 0} for m in ("random", "tpe", "loop")]
    out = _stopped_quick_record(tmp_path, kept)
    bench.main(["search", "--quick", "--resume", "--seeds", "1", "--out", str(out)])
    said = capsys.readouterr().out
    body = json.loads(out.read_text())
    assert said.count("kept from") == 3 and body["complete"] and body["seeds"] == 1
    assert [(r["method"], r["seed"]) for r in body["runs"]] == [("loop", 0), ("tpe", 0), ("random", 0)]
    assert body["wall_s"] >= 30.0 and body["summary"]["tpe"]["final"] == [0.1]


@pytest.mark.slow
def test_quick_search_bench_runs_every_method_for_the_same_candidates(tmp_path):
    out = tmp_path / "search.json"
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.bench", "search", "--quick", "--seeds", "1", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    body = json.loads(out.read_text())
    assert body["candidates_per_method"] == 4 and set(body["summary"]) == {"loop", "tpe", "random"}
    for run in body["runs"]:
        assert len(run["trials"]) == 4, run
        assert all(0.0 <= t["heldout"] <= 1.0 and 0.0 <= t["shipped_heldout"] <= 1.0 for t in run["trials"])
    samplers = [r for r in body["runs"] if r["method"] != "loop"]
    assert all(r["trials"][0]["overrides"] == samplers[0]["trials"][0]["overrides"] for r in samplers)  # the standing recipe
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| loop |" in done.stdout and "| tpe |" in done.stdout and "| random |" in done.stdout
    assert all(len(s["at_loop_compute"]) == 1 and s["compute_curve"] for s in body["summary"].values())
    assert all(t["examples"] == 24 * 16 for t in body["runs"][0]["trials"] if not t["overrides"])  # the quick recipe
    loop = next(r for r in body["runs"] if r["method"] == "loop")
    assert len(loop["story"]) == 1 and loop["story"][0].startswith("r0: anchor ") and loop["story"][0] in done.stdout
    assert "[demo r000] meta" in (tmp_path / "search-loop-s0.log").read_text() and body["complete"]
