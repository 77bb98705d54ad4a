"""`bench search`: the loop against TPE and random search at equal candidates. The space and the bookkeeping
are checked on their own; one quick run goes through the real campaign, Optuna and the real trainer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from hpc_aevo.tools.bench_search import (Run, Trial, _ship_best_dev, base_values, examples_trained, render,
                                         search_space, summarize, with_budget)
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
    assert all(t["examples"] == 24 * 16 for t in body["runs"][0]["trials"] if not t["overrides"])  # the quick recipe
    loop = next(r for r in body["runs"] if r["method"] == "loop")
    assert len(loop["story"]) == 1 and loop["story"][0].startswith("r0: anchor ") and loop["story"][0] in done.stdout
    assert "[demo r000] meta" in (tmp_path / "search-loop-s0.log").read_text() and body["complete"]
