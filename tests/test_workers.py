"""The scripted worker: on-axis, deterministic, dead-end-aware mutations written only to the sandbox."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from hpc_aevo.search.axes import AXES, applies, axis_allows, mixture_key, signature
from hpc_aevo.search.evidence import expected_sign
from hpc_aevo.loop.fork import load_recipe, recipe_diff
from hpc_aevo.search.policy import DeadEnd, EvidenceRule, Policy
from hpc_aevo.state.trace import Trace
from hpc_aevo.roles.scripted.worker import ANCHOR_HYPOTHESIS, ScriptedWorker, operators
from hpc_aevo.roles.factory import BACKENDS, make_roles
from hpc_aevo.roles.scripted.roles import ScriptedRoles
from hpc_aevo.roles.interface import WorkerTask
from hpc_aevo.search.policy import assign_axes

REFERENCE_RECIPE = Path(__file__).resolve().parents[1] / "substrate" / "recipe.yaml"
DOMAINS = ["bits", "equation", "cipher", "base", "sequence"]
MOE = {"arch": "llama", "moe": {"experts": 8, "top_k": 2}}  # what the router axis needs: a mixture of experts


def _recipe_for(axis: str) -> dict:
    """The reference recipe, made a mixture of experts for an axis that needs one."""
    recipe = load_recipe(REFERENCE_RECIPE.parent)
    if not applies(axis, recipe):
        recipe["model"].update(MOE)
        assert applies(axis, recipe)
    return recipe


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandboxes" / "cand-03"
    root.mkdir(parents=True)
    shutil.copy(REFERENCE_RECIPE, root / "recipe.yaml")
    return root


def _policy(dead: list[str] | tuple[str, ...] = (), downweighted: list[str] | tuple[str, ...] = ()) -> Policy:
    return Policy(
        round=2, standing_recipe=load_recipe(REFERENCE_RECIPE.parent), standing_source="substrate",
        active_axes=list(AXES), dead_ends=[DeadEnd("any", s, 1, "test") for s in dead],
        evidence=EvidenceRule(downweighted_domains=list(downweighted)),
    )


def _task(sandbox: Path, axis: str | None, policy: Policy | None = None, role: str = "worker", seed: int = 17,
          candidate: int = 3) -> WorkerTask:
    return WorkerTask(round=2, candidate=candidate, name=f"cand-{candidate:02d}", role=role, axis=axis, seed=seed,
                      sandbox=sandbox, policy=policy or _policy(), trace=Trace(sandbox.parent.parent / "state" / "trace.jsonl"))


def _effective(axis: str, recipe: dict) -> list[str]:
    """Signatures of the axis' operators that change `recipe`."""
    return [op.signature for op in operators(axis, recipe) if recipe_diff(recipe, op.apply(recipe))]


@pytest.mark.parametrize("axis", list(AXES))
def test_every_operator_changes_only_its_axis_area(axis: str):
    recipe = _recipe_for(axis)
    ops = operators(axis, recipe)
    assert len(_effective(axis, recipe)) >= 2
    for op in ops:
        diff = recipe_diff(recipe, op.apply(recipe))
        assert all(axis_allows(axis, key) for key in diff), (op.signature, diff)
        assert axis_allows(axis, op.key) and op.signature == signature(op.key, op.direction)
    assert _recipe_for(axis) == recipe  # operators edit copies


def test_operator_values_stay_within_a_one_minute_candidate():
    recipe = load_recipe(REFERENCE_RECIPE.parent)
    for _ in range(3):  # applying an operator again (a promoted recipe) stays bounded
        for axis in ("budget", "capacity", "filtering"):
            for op in operators(axis, recipe):
                if op.direction == "up":
                    recipe = op.apply(recipe)
    assert recipe["optim"]["steps"] == 900 and recipe["optim"]["batch_size"] == 64
    assert recipe["model"]["hidden"] == 192 and recipe["model"]["layers"] == 4
    assert recipe["model"]["hidden"] % recipe["model"]["heads"] == 0
    assert recipe["data"]["train_examples"] == 24000
    assert recipe["optim"]["steps"] // recipe["checkpoints"]["every"] == 4  # still four checkpoints
    recipe["optim"]["warmup_steps"] = 800  # already past its bound (half the steps): "up" must not lower it
    assert "optim.warmup_steps:up" not in _effective("schedule", recipe)


def test_signatures_are_stable_across_recipe_values():
    recipe = load_recipe(REFERENCE_RECIPE.parent)
    for axis in AXES:
        first = [op.signature for op in operators(axis, recipe)]
        moved = recipe
        for op in operators(axis, recipe):
            moved = op.apply(moved)
        assert [op.signature for op in operators(axis, moved)] == first
    assert signature(mixture_key("sequence"), "up") == "data.mixture.sequence:up"
    assert "data.mixture.sequence:up" in _effective("mixture", recipe)
    assert {"optim.lr:down", "checkpoints.selection:last", "data.filter.max_answer_chars:<=6"} <= {
        s for axis in AXES for s in _effective(axis, recipe)}


@pytest.mark.parametrize("axis", list(AXES))
def test_worker_applies_one_on_axis_mutation_with_a_signed_proposal(sandbox: Path, axis: str):
    (sandbox / "recipe.yaml").write_text(yaml.safe_dump(_recipe_for(axis)))
    before = load_recipe(sandbox)
    result = ScriptedWorker().propose(_task(sandbox, axis))
    after = load_recipe(sandbox)
    diff = recipe_diff(before, after)
    assert diff.pop("seed") == [0, 17]
    assert diff and all(axis_allows(axis, key) for key in diff)
    assert result.mutation in _effective(axis, before)
    assert result.mutation.rsplit(":", 1)[0] in diff
    p = result.proposal
    assert p.hypothesis and axis in p.rationale and "substrate" in p.rationale
    assert expected_sign(p.expected_effect) == 1


def test_router_operators_need_a_mixture_of_experts_and_keep_it_valid():
    """No router operator on a dense recipe; on an MoE one, each edit passes the substrate's own check."""
    import sys

    sys.path.insert(0, str(REFERENCE_RECIPE.parent))
    from model import resolve_config

    assert operators("router", load_recipe(REFERENCE_RECIPE.parent)) == [] and not applies("router", None)
    for balancing in ("aux_loss", "none", "bias"):
        recipe = _recipe_for("router")
        recipe["model"]["moe"].update(balancing=balancing, **({"score": "sigmoid"} if balancing == "bias" else {}))
        for op in operators("router", recipe):
            resolve_config(op.apply(recipe)["model"])  # raises on an invalid model.moe


def test_dead_ends_are_never_chosen(sandbox: Path):
    open_ops = _effective("schedule", load_recipe(sandbox))
    survivor = open_ops[-1]
    for seed in range(5):
        fresh = sandbox.parent / f"s{seed}"
        shutil.copytree(sandbox, fresh)
        result = ScriptedWorker().propose(_task(fresh, "schedule", _policy(dead=open_ops[:-1]), seed=seed))
        assert result.mutation == survivor
    assert "dead end" in result.proposal.rationale


def test_all_dead_ends_leave_the_standing_recipe_with_a_new_seed(sandbox: Path):
    before = load_recipe(sandbox)
    result = ScriptedWorker().propose(_task(sandbox, "selection", _policy(dead=_effective("selection", before))))
    assert result.mutation is None
    assert "no mutation" in result.proposal.hypothesis and "dead end" in result.proposal.hypothesis
    assert expected_sign(result.proposal.expected_effect) == 0
    assert recipe_diff(before, load_recipe(sandbox)) == {"seed": [0, 17]}


def test_downweighted_domains_are_never_upweighted(sandbox: Path):
    policy = _policy(downweighted=DOMAINS[:-1])
    allowed = {signature(mixture_key(d), "down") for d in DOMAINS} | {"data.mixture.sequence:up"}
    for seed in range(30):
        fresh = sandbox.parent / f"s{seed}"
        shutil.copytree(sandbox, fresh)
        assert ScriptedWorker().propose(_task(fresh, "mixture", policy, seed=seed)).mutation in allowed


def test_same_task_gives_the_same_recipe(sandbox: Path):
    results = []
    for name in ("a", "b"):
        fresh = sandbox.parent / name
        shutil.copytree(sandbox, fresh)
        results.append((ScriptedWorker().propose(_task(fresh, "mixture")), (fresh / "recipe.yaml").read_text()))
    assert results[0] == results[1]
    picks = set()
    for candidate in range(1, 9):
        fresh = sandbox.parent / f"c{candidate}"
        shutil.copytree(sandbox, fresh)
        picks.add(ScriptedWorker().propose(_task(fresh, "mixture", candidate=candidate)).mutation)
    assert len(picks) > 1  # the choice depends on the candidate


def test_anchor_changes_only_the_seed(sandbox: Path):
    before = load_recipe(sandbox)
    result = ScriptedWorker().propose(_task(sandbox, None, role="anchor", seed=5))
    assert result.mutation is None and result.proposal.hypothesis == ANCHOR_HYPOTHESIS
    assert recipe_diff(before, load_recipe(sandbox)) == {"seed": [0, 5]}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_only_the_sandbox_recipe_and_the_trace_are_written(sandbox: Path, tmp_path: Path):
    (tmp_path / "sandboxes" / "cand-04").mkdir()
    shutil.copy(REFERENCE_RECIPE, tmp_path / "sandboxes" / "cand-04" / "recipe.yaml")
    (tmp_path / "substrate.txt").write_text("read-only\n")
    before = _snapshot(tmp_path)
    ScriptedWorker().propose(_task(sandbox, "capacity"))
    after = _snapshot(tmp_path)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert "state/trace.jsonl" in changed
    assert changed - {"state/trace.jsonl", "state/trace.jsonl.lock"} == {"sandboxes/cand-03/recipe.yaml"}


def test_trace_records_read_mutation_and_write(sandbox: Path):
    task = _task(sandbox, "budget")
    result = ScriptedWorker().propose(task)
    events = task.trace.events()
    assert [e["event"] for e in events] == ["read-recipe", "mutation", "wrote-recipe"]
    assert {e["actor"] for e in events} == {"scripted-worker"}
    assert events[1]["signature"] == result.mutation
    assert events[2]["diff"] == recipe_diff(load_recipe(REFERENCE_RECIPE.parent), load_recipe(sandbox))


def test_assign_axes_covers_every_axis_over_rounds():
    policy = _policy()
    axes = policy.active_axes
    assert assign_axes(policy, len(axes) + 1, 0) == axes + axes[:1]  # round-robin
    assert assign_axes(policy, 2, 1) == axes[1:3]  # rotated by the round
    seen = {a for rnd in range(len(axes)) for a in assign_axes(policy, 1, rnd)}
    assert seen == set(axes)


def test_backends():
    assert set(BACKENDS) == {"scripted", "claude"} and isinstance(make_roles("scripted"), ScriptedRoles)
    with pytest.raises(ValueError, match="the claude backend needs the campaign"):
        make_roles("claude")
    with pytest.raises(ValueError, match="unknown agents.backend"):
        make_roles("gpt")
