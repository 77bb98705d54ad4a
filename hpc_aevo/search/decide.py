"""The meta step: write the next round's policy from the evidence, and decide it under the constitution.

Why two layers: the proposer (this rule-based one, later an LLM agent) has freedom over the
search: what to promote, what to retire, what counts as evidence. `decide` gives it none over the
rules: every proposal is checked against the constitution, a rejected one is recorded with its
violations and returned to the proposer, and if no proposal passes, the previous policy with the
mandatory updates (the ones the evidence forces, never a promotion) governs the next round.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Callable

from hpc_aevo.search.axes import AXES, applies, categories_of, category_of, mixture_key, signature
from hpc_aevo.search.constitution import (
    SEED_KEY,
    CheckContext,
    PolicyDecision,
    RejectedProposal,
    Violation,
    anchor_band,
    check_policy,
    check_promotion,
    noise_bar,
    plateau_streak,
    promotion_bar,
    without_seed,
)
from hpc_aevo.search.decoupling import DecouplingFlag, sample_std
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import DeadEnd, Policy
from hpc_aevo.state.tree import CandidateRef
from hpc_aevo.state.typed import SchemaError

# proposer(previous, evidence, history, recipes, violations of its previous attempt) -> (policy, changes);
# the policy may be a Policy or its JSON form (an agent's output), which is schema-checked.
Proposer = Callable[
    [Policy, RoundEvidence, list[RoundEvidence], dict[str, dict[str, Any]], list[Violation]],
    tuple["Policy | dict[str, Any]", list[str]],
]


@dataclass(frozen=True)
class MetaProposals:
    """What a meta role offers `decide`: its proposer, the name the decision records, and how many
    proposals it may make before the mandatory update is the fallback."""

    proposer: Proposer
    name: str
    max_attempts: int = 3


def _full_history(history: list[RoundEvidence], evidence: RoundEvidence) -> list[RoundEvidence]:
    if history and history[-1].round >= evidence.round:
        raise ValueError(f"history must hold rounds before {evidence.round}, not round {history[-1].round}")
    return [*history, evidence]


def _two_std(scores: list[float]) -> float:
    """The band a set of anchor scores measures: 2 x their sample std (0 below two scores)."""
    std = sample_std(scores)
    return 0.0 if std is None else 2 * std


def _update_bands(policy: Policy, previous: Policy, full: list[RoundEvidence], changes: list[str]) -> None:
    """Widen the bands to the anchors' spread, pooled over the rounds that ran the same standing recipe.

    A band only widens: a smaller spread from a handful of anchors is weaker evidence than the band
    in force, and C2 forbids going below this round's anchor-measured band (included explicitly,
    as the pool can be tighter than this round alone).
    """
    evidence = full[-1]
    pool = [e for e in full if e.standing_source == evidence.standing_source]
    board = [s for e in pool for s in e.anchors.leaderboard_scores]
    dev = [s for e in pool for s in e.anchors.dev_scores]
    policy.noise_band = max(previous.noise_band, _two_std(board), anchor_band(previous, evidence.anchors))
    policy.dev_noise_band = max(previous.dev_noise_band, _two_std(dev), _two_std(evidence.anchors.dev_scores))
    policy.promotion_threshold = max(previous.promotion_threshold, policy.noise_band)
    for name, old, new, n in (("noise band", previous.noise_band, policy.noise_band, len(board)),
                              ("dev noise band", previous.dev_noise_band, policy.dev_noise_band, len(dev)),
                              ("promotion threshold", previous.promotion_threshold, policy.promotion_threshold, len(board))):
        if new != old:
            changes.append(f"{name} {old:.4f} -> {new:.4f} (2 x std of {n} anchor scores of {evidence.standing_source})")


def _add_dead_end(policy: Policy, entry: DeadEnd, changes: list[str]) -> None:
    if entry.change not in policy.dead_end_signatures():
        policy.dead_ends.append(entry)
        changes.append(f"dead end {entry.change} ({entry.axis}): {entry.reason}")


def _contenders(evidence: RoundEvidence) -> int:
    """The workers with a leaderboard gain: those a promotion picks the best of (C2)."""
    return sum(c.role == "worker" and c.leaderboard_gain is not None for c in evidence.candidates)


def _register_dead_ends(policy: Policy, previous: Policy, evidence: RoundEvidence, changes: list[str]) -> None:
    """Workers whose mutation failed (not the infrastructure under it), lost on the leaderboard beyond the
    noise bar, or gained dev that did not transfer.

    The registry never shrinks, so a loss bans an idea only on the evidence a promotion needs: beyond the
    bar that the worst of the round's workers reaches on seed noise in 5% of rounds. A smaller loss is
    still evidence, for the workers' search (roles/scripted/search.py), not a ban.
    """
    flagged: dict[str, DecouplingFlag] = {}
    for f in evidence.calibration.flags:
        if f.candidate is not None:
            flagged.setdefault(f.candidate, f)
    band = noise_bar(previous, evidence.anchors, _contenders(evidence))
    for c in evidence.candidates:
        if c.role != "worker" or c.mutation is None:
            continue
        if c.status == "failed":
            if c.failure_kind != "mutation":  # infrastructure or unclassified: not evidence against the idea
                changes.append(f"no dead end for {c.name} ({c.mutation}): failure is "
                               f"{c.failure_kind or 'unclassified'} ({c.failure_basis or 'no typed job facts'})")
                continue
            reason = f"failed ({c.failure_basis}): {c.failure or 'no reason recorded'}"
        elif c.leaderboard_gain is not None and c.leaderboard_gain < -band:
            reason = f"leaderboard {c.leaderboard_gain:+.4f} < -{band:.4f} (dev {c.dev_gain:+.4f})"
        elif c.name in flagged:
            f = flagged[c.name]
            where = f" on {f.domain}" if f.domain else ""
            reason = f"dev{where} {f.dev_gain:+.4f} > {f.threshold:.4f} without leaderboard transfer ({f.leaderboard_gain:+.4f})"
        else:
            continue
        _add_dead_end(policy, DeadEnd(c.axis or "", c.mutation, evidence.round, f"r{evidence.round:03d} {c.name}: {reason}"),
                      changes)


def _respond_to_decoupling(policy: Policy, evidence: RoundEvidence, changes: list[str]) -> None:
    """When dev stopped tracking the leaderboard, change what counts as evidence.

    The paper's loop stopped asking for higher dev: suspect domains are down-weighted, promotion
    needs a leaderboard gain that is not a flagged dev gain, and up-weighting a suspect domain is
    registered as a dead end.
    """
    calibration = evidence.calibration
    if not calibration.decoupled:
        return
    rule = policy.evidence
    if rule.promote_on != "leaderboard_transfer":
        rule.promote_on = "leaderboard_transfer"
        changes.append("evidence: promote only on leaderboard gains that transfer (flagged dev gains excluded)")
    added = [d for d in calibration.suspect_domains if d not in rule.downweighted_domains]
    if added:
        rule.downweighted_domains += added
        changes.append(f"evidence: down-weight suspect domains {', '.join(added)}")
    kinds = sorted({f.kind for f in calibration.flags})
    rule.note = (f"round {evidence.round}: dev decoupled from the leaderboard ({', '.join(kinds)}; spearman "
                 f"{'n/a' if calibration.spearman is None else f'{calibration.spearman:+.2f}'}); "
                 "raw dev gains are not evidence unless the leaderboard moves")
    for domain in calibration.suspect_domains:
        worst = max((f for f in calibration.flags if f.domain == domain), key=lambda f: f.dev_gain)
        _add_dead_end(policy, DeadEnd(
            "mixture", signature(mixture_key(domain), "up"), evidence.round,
            f"r{evidence.round:03d}: dev on {domain} rose {worst.dev_gain:+.4f} ({worst.candidate}) without "
            f"leaderboard transfer ({worst.leaderboard_gain:+.4f})"), changes)


def _category_gain(evidence: RoundEvidence, category: str) -> float:
    """Mean leaderboard gain of the round's workers on `category`'s axes (-inf when none was scored)."""
    gains = [c.leaderboard_gain for c in evidence.candidates
             if c.axis in AXES and category_of(c.axis) == category and c.leaderboard_gain is not None]
    return fmean(gains) if gains else float("-inf")


def rotate_axes(active: list[str], retired: list[str], evidence: RoundEvidence,
                recipe: dict | None = None) -> tuple[list[str], list[str]]:
    """New (active, retired) axes whose categories differ from the active ones, among the axes that apply
    to `recipe` (the standing recipe: the router's axis only with a mixture of experts).

    Activates the categories never tried; when all were tried, cycles to every category not active
    now. When every category is active there is nowhere to rotate to, so the category whose workers
    did worst on the leaderboard this round is retired. An active axis that does not apply is retired.
    """
    usable = [a for a in AXES if applies(a, recipe)]
    current = categories_of([a for a in active if a in usable])
    others = [c for c in dict.fromkeys(category_of(a) for a in usable) if c not in current]
    fresh = [c for c in others if c not in categories_of(retired)]
    chosen = set(fresh or others)
    if not chosen:
        chosen = current - {min(sorted(current), key=lambda category: _category_gain(evidence, category))}
    new_active = [a for a in usable if category_of(a) in chosen]
    new_retired = [a for a in AXES if a not in new_active and (a in active or a in retired)]
    return new_active, new_retired


def _plateau(policy: Policy, full: list[RoundEvidence], changes: list[str]) -> None:
    """Count plateau rounds and rotate the axis categories when C4 demands it."""
    streak = plateau_streak(full)
    if streak < 2:
        policy.plateau_rounds = streak
        return
    before = sorted(categories_of(policy.active_axes))
    policy.active_axes, policy.retired_axes = rotate_axes(policy.active_axes, policy.retired_axes, full[-1],
                                                          policy.standing_recipe)
    policy.plateau_rounds = 0
    changes.append(f"rotated axis categories {', '.join(before)} -> {', '.join(sorted(categories_of(policy.active_axes)))} "
                   f"after {streak} leaderboard plateau rounds; active axes {', '.join(policy.active_axes)}")


def mandatory_update(previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence]) -> tuple[Policy, list[str]]:
    """The next policy with only the changes the evidence forces: round, bands, dead ends, the decoupling
    response, plateau count and rotation. Never a promotion. This is also the fallback policy."""
    full = _full_history(history, evidence)
    policy = copy.deepcopy(previous)
    policy.round = previous.round + 1
    changes = [f"round {previous.round} -> {policy.round}"]
    _update_bands(policy, previous, full, changes)
    _register_dead_ends(policy, previous, evidence, changes)
    _respond_to_decoupling(policy, evidence, changes)
    _plateau(policy, full, changes)
    return policy, changes


def _promote(policy: Policy, previous: Policy, evidence: RoundEvidence, recipes: dict[str, dict[str, Any]],
             changes: list[str]) -> None:
    """Promote the worker with the best leaderboard gain if it clears the C2 bar.

    Under promote_on "leaderboard_transfer" a worker the calibration flagged is not eligible. The new
    standing recipe is the worker's recipe with the previous standing seed.
    """
    bar = promotion_bar(previous, evidence.anchors, _contenders(evidence))
    flagged = ({f.candidate for f in evidence.calibration.flags if f.candidate}
               if policy.evidence.promote_on == "leaderboard_transfer" else set())
    eligible = [c for c in evidence.candidates if c.role == "worker" and c.leaderboard_gain is not None
                and c.name in recipes and c.name not in flagged]
    best = max(eligible, key=lambda c: c.leaderboard_gain, default=None)
    if best is None or best.leaderboard_gain <= bar:
        gain = "no eligible worker" if best is None else f"best {best.name} {best.leaderboard_gain:+.4f}"
        changes.append(f"no promotion: {gain}, bar {bar:.4f}")
        return
    recipe = without_seed(recipes[best.name])
    if SEED_KEY in previous.standing_recipe:
        recipe[SEED_KEY] = previous.standing_recipe[SEED_KEY]
    policy.standing_recipe = recipe
    policy.standing_source = CandidateRef.named(evidence.round, best.name).key
    changes.append(f"promoted {policy.standing_source} ({best.mutation}): leaderboard {best.leaderboard_gain:+.4f} "
                   f"> bar {bar:.4f}")


def propose_policy(previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence],
                   recipes: dict[str, dict[str, Any]], feedback: list[Violation] | None = None) -> tuple[Policy, list[str]]:
    """The rule-based proposer: the mandatory update plus a promotion. It is deterministic, so the
    violations of a previous attempt (`feedback`, part of the Proposer signature) cannot change it."""
    policy, changes = mandatory_update(previous, evidence, history)
    _promote(policy, previous, evidence, recipes, changes)
    return policy, changes


def as_policy(proposed: Policy | dict[str, Any]) -> tuple[Policy | None, list[Violation]]:
    """A proposal as a Policy, or the C5 violation that it is not a valid policy record."""
    if isinstance(proposed, Policy):
        return proposed, []
    try:
        return Policy.from_dict(proposed, "proposed policy"), []
    except SchemaError as exc:
        return None, [Violation("C5", f"not a valid policy record: {exc}")]


RULE_BASED = MetaProposals(propose_policy, "rule-based")


def decide(previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence], ctx: CheckContext,
           meta: MetaProposals = RULE_BASED) -> tuple[Policy | None, PolicyDecision]:
    """The policy of the next round and the record of how it was decided.

    `history` is the evidence of the rounds before `evidence`, oldest first. Returns (None, decision)
    when not even the fallback satisfies the constitution (a changed substrate or constitution):
    the caller must stop the campaign and keep the decision as the record of why.
    """
    full = _full_history(history, evidence)
    proposer, proposer_name = meta.proposer, meta.name
    rejected: list[RejectedProposal] = []
    feedback: list[Violation] = []
    last: Policy | dict[str, Any] | None = None
    for attempt in range(1, meta.max_attempts + 1):
        proposed, changes = proposer(previous, evidence, history, ctx.recipes, feedback)
        if proposed == last:
            break  # the proposer repeats itself: retrying cannot help
        policy, violations = as_policy(proposed)
        if policy is not None:
            violations = check_policy(previous, policy, full, ctx)
        if not violations:
            return policy, PolicyDecision(
                round=policy.round, proposer=proposer_name, accepted=True, violations=[], fallback_used=False,
                promotion=check_promotion(previous, policy, evidence.round, ctx)[0], changes=changes,
                rejected_proposals=rejected)
        rejected.append(RejectedProposal(proposer_name, attempt, violations))
        last, feedback = proposed, violations
    fallback, changes = mandatory_update(previous, evidence, history)
    violations = check_policy(previous, fallback, full, ctx)
    decision = PolicyDecision(
        round=fallback.round, proposer=proposer_name, accepted=not violations, violations=violations,
        fallback_used=True, promotion=None, changes=changes, rejected_proposals=rejected)
    return (None if violations else fallback), decision
