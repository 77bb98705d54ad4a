"""The proxy-decoupling detector fires on a planted trap and stays quiet on seed noise.

This file also holds the synthetic-round builder that the evidence, constitution and meta tests
import: rounds of manifests whose scores are the standing recipe's plus seed noise (correlated
between dev and leaderboard), binomial sampling noise per domain, and planted effects.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from hpc_aevo.search.axes import AXES
from hpc_aevo.search.decoupling import calibration_report, domain_band, rank_p_value, spearman
from hpc_aevo.state.manifest import CandidateManifest, Measured, Proposal
from hpc_aevo.search.policy import Policy

DOMAINS = {"bits": 0.9, "equation": 0.6, "cipher": 0.75, "base": 0.5, "sequence": 0.8}
EXAMPLES = {d: 500 for d in DOMAINS}
SIGMA_SEED = 0.01
BOARD_SHIFT = -0.05  # the leaderboard is a shifted split: harder than dev
MUTATIONS = {
    "mixture": "data.mixture.equation:up",
    "filtering": "data.filter.max_len:down",
    "schedule": "optim.lr:up",
    "budget": "optim.steps:up",
    "capacity": "model.layers:up",
    "selection": "checkpoints.selection:last",
    "router": "model.moe.top_k:up",
}
STANDING = {sig.split(":")[0]: 1 for sig in MUTATIONS.values()}
# 2 sigma of one overall score: seed noise plus the sampling noise of the mean over domains
BAND = 2 * math.sqrt(SIGMA_SEED ** 2 + sum(p * (1 - p) / EXAMPLES[d] for d, p in DOMAINS.items()) / len(DOMAINS) ** 2)


@dataclass
class Effect:
    """A planted change of a candidate's per-domain scores, on dev and on the leaderboard."""

    dev: dict[str, float] = field(default_factory=dict)
    board: dict[str, float] = field(default_factory=dict)


def uniform(dev: float, board: float) -> Effect:
    return Effect({d: dev for d in DOMAINS}, {d: board for d in DOMAINS})


def synthetic_round(rnd: int = 1, *, seed: int = 0, anchors: int = 2, workers: int = 6, rho: float = 0.8,
                    noise: float = 1.0, effects: dict[int, Effect] | None = None,
                    axes: list[str] | None = None) -> list[CandidateManifest]:
    """Evaluated manifests of one round: candidates 0..anchors-1 are anchors, the rest workers on `axes` in turn."""
    rng = random.Random(seed)
    effects = effects or {}
    axes = axes or list(AXES)
    out = []
    for i in range(anchors + workers):
        s_dev = rng.gauss(0, SIGMA_SEED) * noise
        s_board = rho * s_dev + math.sqrt(1 - rho ** 2) * rng.gauss(0, SIGMA_SEED) * noise
        effect = effects.get(i, Effect())
        dev, board = {}, {}
        for d, p in DOMAINS.items():
            sampling = math.sqrt(p * (1 - p) / EXAMPLES[d]) * noise
            dev[d] = p + s_dev + rng.gauss(0, sampling) + effect.dev.get(d, 0.0)
            board[d] = p + BOARD_SHIFT + s_board + rng.gauss(0, sampling) + effect.board.get(d, 0.0)
        worker = i >= anchors
        axis = axes[(i - anchors) % len(axes)] if worker else None
        mutation = MUTATIONS[axis] if worker else None
        out.append(CandidateManifest(
            round=rnd, candidate=i, name=f"cand-{i:02d}", role="worker" if worker else "anchor",
            seed=1000 * rnd + i, axis=axis, mutation=mutation,
            recipe_diff={mutation.split(":")[0]: [1, 2]} if worker else {},
            status="evaluated", attempts=1,
            proposal=Proposal(hypothesis=f"{axis} helps" if worker else ""),
            measured=Measured(selected_step=100, dev=sum(dev.values()) / len(dev), dev_per_domain=dev,
                              leaderboard=sum(board.values()) / len(board), leaderboard_per_domain=board),
        ))
    return out


def recipes_for(manifests: list[CandidateManifest], standing: dict | None = None) -> dict[str, dict]:
    """Each candidate's recipe: the standing recipe with its recipe_diff applied and its own seed."""
    base = standing or STANDING
    return {m.name: {**base, **{k: v[1] for k, v in m.recipe_diff.items()}, "seed": m.seed} for m in manifests}


def synthetic_policy(rnd: int = 1, **overrides) -> Policy:
    values = dict(round=rnd, standing_recipe=dict(STANDING), standing_source="substrate",
                  active_axes=list(AXES), noise_band=BAND, dev_noise_band=BAND, promotion_threshold=BAND)
    return Policy(**{**values, **overrides})


TRAP = Effect(dev={"equation": 0.25})  # up-sampled equation: its dev +0.25, overall dev +0.05, leaderboard flat


def test_spearman_matches_hand_computed_values_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 2, 3, 4 -> pearson of the ranks
    assert spearman([0.1, 0.2, 0.2, 0.3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_rank_p_value_is_small_only_for_strongly_negative_correlations():
    assert rank_p_value(-0.95, 8) < 0.01
    assert rank_p_value(0.0, 8) == pytest.approx(0.5)
    assert rank_p_value(-0.3, 8) > 0.2


def test_domain_band_is_floored_at_the_policy_band():
    assert domain_band(0.02, 0.5, 500) == pytest.approx(2 * math.sqrt(2 * 0.25 / 500))
    assert domain_band(0.2, 0.5, 500) == 0.2


def test_planted_trap_without_noise_is_flagged_on_its_domain():
    manifests = synthetic_round(noise=0.0, effects={2: TRAP})
    report = calibration_report(manifests, synthetic_policy(dev_noise_band=0.02, noise_band=0.02), EXAMPLES)
    kinds = {(f.kind, f.candidate, f.domain) for f in report.flags}
    assert ("dev-gain-without-transfer", "cand-02", None) in kinds
    assert ("domain-gain-without-transfer", "cand-02", "equation") in kinds
    assert report.decoupled and report.suspect_domains == ["equation"]
    trap = next(g for g in report.candidates if g.candidate == "cand-02")
    assert trap.dev_gain == pytest.approx(0.05) and trap.leaderboard_gain == pytest.approx(0.0)
    equation = next(d for d in report.domains if d.domain == "equation")
    assert equation.n_examples == 500
    assert next(w for w in equation.workers if w.candidate == "cand-02").dev_gain == pytest.approx(0.25)


@pytest.mark.parametrize("anchors", [1, 2])
def test_planted_trap_is_found_through_seed_noise(anchors):
    hits = 0
    for seed in range(100):
        report = calibration_report(synthetic_round(seed=seed, anchors=anchors, effects={anchors: TRAP}),
                           synthetic_policy(), EXAMPLES)
        hits += report.decoupled and "equation" in report.suspect_domains
    assert hits >= 90


@pytest.mark.parametrize("anchors,rho", [(1, 0.8), (2, 0.8), (2, 0.3)])
def test_pure_seed_noise_rarely_raises_a_flag(anchors, rho):
    false_alarms = sum(
        bool(calibration_report(synthetic_round(seed=seed, anchors=anchors, rho=rho), synthetic_policy(), EXAMPLES).flags)
        for seed in range(200)
    )
    assert false_alarms <= 10  # <= 5% of 200 rounds


def test_a_real_gain_that_transfers_is_not_flagged():
    manifests = synthetic_round(noise=0.0, effects={3: uniform(0.06, 0.06)})
    report = calibration_report(manifests, synthetic_policy(), EXAMPLES)
    assert not report.flags and report.spearman == pytest.approx(1.0)


def test_dev_ranking_candidates_against_the_leaderboard_is_rank_decoupling():
    effects = {i: uniform(0.02 * i, -0.02 * i) for i in range(2, 8)}
    report = calibration_report(synthetic_round(noise=0.0, effects=effects), synthetic_policy(), EXAMPLES)
    assert report.spearman < -0.9 and report.n == 8
    assert any(f.kind == "rank-decoupling" for f in report.flags)


def test_failed_and_unsubmitted_candidates_are_left_out_of_the_statistics():
    manifests = synthetic_round(noise=0.0, effects={2: TRAP})
    manifests[2].status, manifests[2].failure = "failed", "OOM"
    manifests[3].measured.leaderboard, manifests[3].measured.leaderboard_per_domain = None, {}
    report = calibration_report(manifests, synthetic_policy(), EXAMPLES)
    assert report.n == 6 and not report.flags
    assert "cand-02" not in {g.candidate for g in report.candidates}
    assert next(g for g in report.candidates if g.candidate == "cand-03").leaderboard_gain is None


def test_without_anchors_there_are_no_gains_and_no_flags():
    manifests = synthetic_round(anchors=0, noise=0.0, effects={0: TRAP})
    report = calibration_report(manifests, synthetic_policy(), EXAMPLES)
    assert not report.flags and report.domains == []
    assert all(g.dev_gain is None for g in report.candidates)


def test_domains_come_from_the_data_and_unknown_example_counts_are_not_tested():
    manifests = synthetic_round(noise=0.0, effects={2: TRAP})
    report = calibration_report(manifests, synthetic_policy(), {d: n for d, n in EXAMPLES.items() if d != "equation"})
    assert {d.domain for d in report.domains} == set(DOMAINS)
    equation = next(d for d in report.domains if d.domain == "equation")
    assert equation.dev_threshold is None and report.suspect_domains == []


def test_the_leaderboard_band_of_a_domain_is_that_of_its_own_split():
    """A leaderboard split larger than dev samples less noise: its per-domain band is its own, not dev's."""
    manifests = synthetic_round(noise=0.0, effects={2: TRAP})
    policy = synthetic_policy()
    as_dev = calibration_report(manifests, policy, EXAMPLES)
    larger = calibration_report(manifests, policy, EXAMPLES, {d: 4 * n for d, n in EXAMPLES.items()})
    for before, after in zip(as_dev.domains, larger.domains):
        assert (before.n_leaderboard, after.n_leaderboard) == (before.n_examples, 4 * before.n_examples)
        assert after.leaderboard_band == domain_band(policy.noise_band, after.anchor_leaderboard, after.n_leaderboard)
        assert after.leaderboard_band <= before.leaderboard_band and after.dev_band == before.dev_band
    assert any(a.leaderboard_band < b.leaderboard_band for a, b in zip(larger.domains, as_dev.domains))
