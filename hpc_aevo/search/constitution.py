"""The constitution in code: the rules every proposed policy is checked against before it is used.

Why in code: the constitution (policy/constitution.md) is the meta agent's frozen system prompt,
but a prompt only asks. Each numbered rule there is checked here, so a policy that redefines
success (promotes on dev, shrinks the band, forgets a dead end) is rejected whoever wrote it, and
the rejection is recorded in a PolicyDecision.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from hpc_aevo.search.axes import categories_of
from hpc_aevo.search.decoupling import AnchorStats, anchor_stats, evaluated
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.records import Record, RecordError
from hpc_aevo.state.tree import CandidateRef
from hpc_aevo.state.typed import SchemaError

CONSTITUTION_PATH = Path(__file__).resolve().parents[2] / "policy" / "constitution.md"

RULES: dict[str, str] = {
    "C1": "the leaderboard is authoritative for promotion",
    "C2": "promotion needs a leaderboard gain above the noise band measured from anchors",
    "C3": "the dead-end registry only grows",
    "C4": "axis categories rotate after two rounds of leaderboard plateau",
    "C5": "the substrate and the constitution are never written",
    "C6": "the policy is consistent",
}

SEED_KEY = "seed"  # the recipe key that differs between candidates of one recipe
_EPS = 1e-12  # float slack for comparing bands computed along different paths
FALSE_PROMOTION_RATE = 0.05  # C2: the most often, per round, that seed noise alone may clear the bar


def constitution_hash(path: Path = CONSTITUTION_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Violation:
    rule: str  # "C1" .. "C6"
    message: str


@dataclass
class CheckContext:
    """What the checks need besides the policies and the evidence: the round's facts and the hashes."""

    manifests: list[CandidateManifest]  # the latest round's manifests
    recipes: dict[str, dict[str, Any]]  # candidate name -> its full recipe
    expected_substrate_hash: str  # recorded when the campaign started
    current_substrate_hash: str
    expected_constitution_hash: str
    current_constitution_hash: str


@dataclass
class Promotion:
    candidate: str  # "r003/cand-02"
    leaderboard_gain: float  # over the round's anchor mean
    band: float  # the bar it had to clear (C2)


def without_seed(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if k != SEED_KEY}


def anchor_band(previous: Policy, anchors: AnchorStats) -> float:
    """C2's band measured from anchors: 2 x std of their leaderboard scores, else the policy's band."""
    return 2 * anchors.leaderboard_std if anchors.leaderboard_std is not None else previous.noise_band


def scored_workers(manifests: list[CandidateManifest]) -> int:
    """The workers a promotion picks its best from (C2's contenders): those that count and have a leaderboard score."""
    return sum(m.role == "worker" and evaluated(m) and m.measured.leaderboard is not None for m in manifests)


def noise_bar(previous: Policy, anchors: AnchorStats, contenders: int) -> float:
    """How far the best (or the worst) of `contenders` workers' leaderboard gains over the anchor mean may
    stray on seed noise alone, in all but FALSE_PROMOTION_RATE of rounds.

    Why more than the band: the band is 2 sigma of one score, but the round picks the extreme of several
    workers against the mean of k anchors, so the gain has sigma * sqrt(1 + 1/k) and is the largest of
    `contenders` draws: a z-quantile Bonferroni-corrected over them (sigma: half the wider of the policy's
    band and this round's anchor band). Never below that band.
    """
    band = max(previous.noise_band, anchor_band(previous, anchors))
    k = max(1, len(anchors.leaderboard_scores))
    z = NormalDist().inv_cdf(1 - FALSE_PROMOTION_RATE / max(1, contenders))
    return max(band, band / 2 * math.sqrt(1 + 1 / k) * z)


def promotion_bar(previous: Policy, anchors: AnchorStats, contenders: int) -> float:
    """The leaderboard gain over the anchor mean that the best of `contenders` workers must exceed (C2):
    the noise bar, and the policy's promotion threshold (the smallest gain worth a new standing recipe)."""
    return max(previous.promotion_threshold, noise_bar(previous, anchors, contenders))


def plateau_flags(history: list[RoundEvidence]) -> list[bool]:
    """Per round (oldest first): True when it plateaued on the leaderboard, as C4 defines it.

    A round plateaus when its best leaderboard score does not beat the best score of all earlier
    rounds (for the first round: its anchors' mean) by more than its own noise band, or when there
    is no score to compare.
    """
    flags, best_before = [], None
    for e in history:
        best = e.best_leaderboard()
        reference = best_before if best_before is not None else e.anchors.leaderboard_mean
        flags.append(best is None or reference is None or best - reference <= e.noise_band)
        if best is not None:
            best_before = best if best_before is None else max(best_before, best)
    return flags


def plateau_streak(history: list[RoundEvidence]) -> int:
    """Consecutive latest plateau rounds that explored the same axis categories as the latest round."""
    if not history:
        return 0
    current = categories_of(history[-1].active_axes)
    streak = 0
    for e, flat in zip(reversed(history), reversed(plateau_flags(history))):
        if not flat or categories_of(e.active_axes) != current:
            break
        streak += 1
    return streak


def check_promotion(
    previous: Policy, proposed: Policy, latest_round: int, ctx: CheckContext
) -> tuple[Promotion | None, list[Violation]]:
    """C1 and C2 for a changed standing recipe: the promotion it claims, and what is wrong with it."""
    if (proposed.standing_recipe, proposed.standing_source) == (previous.standing_recipe, previous.standing_source):
        return None, []
    source = proposed.standing_source
    try:
        ref = CandidateRef.parse(source)
    except ValueError:
        ref = None
    if ref is None or ref.round != latest_round:
        return None, [Violation("C1", f"the standing recipe changed but standing_source {source!r} does not name a "
                                      f"candidate of round {latest_round} (a key like "
                                      f"{CandidateRef(latest_round, 1).key})")]
    name = ref.name
    manifest = next((m for m in ctx.manifests if m.name == name and m.round == latest_round), None)
    if manifest is None or name not in ctx.recipes:
        return None, [Violation("C1", f"{source}: no such candidate with a recipe in round {latest_round}")]
    problems = []
    if without_seed(ctx.recipes[name]) != without_seed(proposed.standing_recipe):
        problems.append(Violation("C1", f"the new standing recipe is not {source}'s recipe"))
    if not evaluated(manifest) or manifest.measured.leaderboard is None:
        problems.append(Violation("C1", f"{source} has no leaderboard score: promotion on dev alone is refused"))
    if problems:
        return None, problems
    anchors = anchor_stats(ctx.manifests)
    if anchors.leaderboard_mean is None:
        return None, [Violation("C2", f"no anchor of round {latest_round} has a leaderboard score to measure "
                                      f"{source}'s gain against")]
    promotion = Promotion(source, manifest.measured.leaderboard - anchors.leaderboard_mean,
                          promotion_bar(previous, anchors, scored_workers(ctx.manifests)))
    if promotion.leaderboard_gain <= promotion.band:
        return promotion, [Violation("C2", f"{source}'s leaderboard gain {promotion.leaderboard_gain:+.4f} does not "
                                           f"exceed the bar {promotion.band:.4f} (threshold, and the band "
                                           f"corrected for the anchors and workers compared)")]
    return promotion, []


def _check_band(previous: Policy, proposed: Policy, ctx: CheckContext) -> list[Violation]:
    band = anchor_band(previous, anchor_stats(ctx.manifests))
    if proposed.noise_band < band - _EPS:
        return [Violation("C2", f"noise band {proposed.noise_band:.4f} is below the band {band:.4f} measured from anchors")]
    return []


def _check_dead_ends(previous: Policy, proposed: Policy, latest_round: int) -> list[Violation]:
    out = [Violation("C3", f"dead end {d.change!r} (axis {d.axis}, round {d.round}) was dropped or altered")
           for d in previous.dead_ends if d not in proposed.dead_ends]
    out += [Violation("C3", f"new dead end {d.change!r} is tagged round {d.round}, not {latest_round}")
            for d in proposed.dead_ends if d not in previous.dead_ends and d.round != latest_round]
    return out


def _check_rotation(previous: Policy, proposed: Policy, history: list[RoundEvidence]) -> list[Violation]:
    streak = plateau_streak(history)
    categories = categories_of(previous.active_axes)
    if streak >= 2 and categories_of(proposed.active_axes) == categories:
        return [Violation("C4", f"the leaderboard plateaued {streak} rounds on categories {sorted(categories)}; "
                                "the active axis categories must rotate")]
    return []


def _check_hashes(ctx: CheckContext) -> list[Violation]:
    out = []
    if ctx.current_substrate_hash != ctx.expected_substrate_hash:
        out.append(Violation("C5", f"the substrate hash changed ({ctx.expected_substrate_hash[:12]} -> "
                                   f"{ctx.current_substrate_hash[:12]})"))
    if ctx.current_constitution_hash != ctx.expected_constitution_hash:
        out.append(Violation("C5", f"the constitution hash changed ({ctx.expected_constitution_hash[:12]} -> "
                                   f"{ctx.current_constitution_hash[:12]})"))
    return out


def _check_schema(proposed: Policy) -> list[Violation]:
    """C5's structural half: the policy must survive its own record round trip (types, keys, axes)."""
    try:
        Policy.from_dict(json.loads(proposed.to_json()))  # to_json itself refuses a value of the wrong type
    except (RecordError, SchemaError, TypeError) as exc:  # TypeError: a value JSON cannot hold
        return [Violation("C5", f"not a valid policy record: {exc}")]
    return []


def consistency_violations(policy: Policy) -> list[Violation]:
    """C6 on one policy alone; the initial policy a person writes is held to it too."""
    out = []
    both = sorted(set(policy.active_axes) & set(policy.retired_axes))
    if both:
        out.append(Violation("C6", f"axes both active and retired: {', '.join(both)}"))
    if policy.promotion_threshold < policy.noise_band - _EPS:
        out.append(Violation("C6", f"promotion threshold {policy.promotion_threshold:.4f} is below the noise band "
                                   f"{policy.noise_band:.4f}"))
    return out


def _check_consistency(previous: Policy, proposed: Policy) -> list[Violation]:
    """C6 (an empty active set is already a schema error, Policy.validate, so it surfaces under C5)."""
    out = consistency_violations(proposed)
    if proposed.round != previous.round + 1:
        out.append(Violation("C6", f"the policy governs round {proposed.round}, not {previous.round + 1}"))
    return out


def check_policy(
    previous: Policy, proposed: Policy, evidence_history: list[RoundEvidence], ctx: CheckContext
) -> list[Violation]:
    """Every violation of the constitution by `proposed`; empty means it may govern the next round.

    `evidence_history` is every round's evidence so far, oldest first, ending with the round just
    measured (the one `ctx.manifests` belong to). A policy that is not a valid record is judged on
    C5 alone: the other rules cannot be read off a malformed policy.
    """
    if not evidence_history:
        raise ValueError("check_policy: no evidence; a policy is only rewritten after a measured round")
    malformed = _check_schema(proposed)
    if malformed:
        return _check_hashes(ctx) + malformed
    latest = evidence_history[-1].round
    return (check_promotion(previous, proposed, latest, ctx)[1]
            + _check_band(previous, proposed, ctx)
            + _check_dead_ends(previous, proposed, latest)
            + _check_rotation(previous, proposed, evidence_history)
            + _check_hashes(ctx)
            + _check_consistency(previous, proposed))


@dataclass
class RejectedProposal:
    proposer: str
    attempt: int
    violations: list[Violation]


@dataclass
class PolicyDecision(Record):
    """How the policy of a round was decided, with every rejected attempt and the numbers behind a promotion."""

    SCHEMA = "hpc_aevo.policy_decision"
    VERSION = 1

    round: int  # the round the decided policy governs
    proposer: str  # who was asked ("rule-based", or an agent's name)
    accepted: bool  # False: not even the fallback satisfies the constitution; the campaign must stop
    violations: list[Violation]  # of the policy finally checked (empty when accepted)
    fallback_used: bool
    promotion: Promotion | None
    changes: list[str] = field(default_factory=list)
    rejected_proposals: list[RejectedProposal] = field(default_factory=list)


class ConstitutionChanged(RuntimeError):
    """The constitution's bytes differ from those hashed when the campaign started."""
