"""Which operator, and how long a stride, a scripted worker takes: Thompson sampling over its axis' open
operators, told by the campaign's own evidence.

Why a bandit: each worker tries one operator of one axis, so its choice is an arm pull whose reward is the
candidate's leaderboard gain over its round's anchors. A Gaussian posterior per operator (prior mean 0,
prior sigma one noise band; each gain's noise its round's sigma, sqrt(1 + 1/k) for k anchors) explores the
operators never measured, returns to those that gained and leaves those that lost. The opposite direction
of a measured one (optim.lr up vs down) is told the negated gain at half weight. A draw from the
posteriors, seeded per candidate, keeps the workers of a round apart, and the evidence files it reads are
written once, so a restarted daemon makes the same choice.

Why the stride follows the posterior's sign: a promotion needs a gain beyond seed noise, so a one-edit move
whose real effect is under the band is promoted only when the noise lends it the rest (the demo's start measures
`optim.lr:up` at +0.011 against a band of 0.012, and two edits of it at +0.028). An operator not known to lose
(never measured, or measured to gain) takes two edits, far enough for its effect to show; one whose
posterior mean gain is negative, drawn anyway, is probed with one. Dead ends and blocked operators never reach
it: the worker passes only open operators. (A TPE sampler would see a handful of trials per axis, fewer
than its random start-up trials: at a campaign's budget a conjugate posterior per arm is the honest model.)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.tree import CandidateRef

OPPOSITE = {"up": "down", "down": "up"}
OPPOSITE_WEIGHT = 0.5  # what one direction's gain says about the other's, negated
LONG_STRIDE = 2  # edits of an operator not known to lose; one known to lose takes one


@dataclass(frozen=True)
class Observation:
    """One measured gain told to an operator."""

    signature: str
    gain: float  # leaderboard gain over the anchors' mean (dev gain, rescaled, where no leaderboard score)
    sigma: float  # the noise of that gain
    weight: float  # 1 for the operator measured; OPPOSITE_WEIGHT for its opposite direction
    source: str  # "r001/cand-02"


@dataclass(frozen=True)
class Arm:
    """An operator's posterior gain and the draw that ranked it."""

    signature: str
    n: float  # weighted observations
    mean: float
    sd: float
    draw: float


@dataclass(frozen=True)
class Choice:
    signature: str
    stride: int
    arms: list[Arm]  # every open operator, in the order given
    observations: int  # measured candidates the posteriors were told


def opposite(sig: str) -> str | None:
    key, _, direction = sig.rpartition(":")
    return f"{key}:{OPPOSITE[direction]}" if direction in OPPOSITE else None


def _gain(evidence: RoundEvidence, leaderboard: float | None, dev: float | None,
          trusted_dev: bool) -> tuple[float, float] | None:
    """(gain, its sigma) of one worker: the leaderboard gain, else its dev gain on the leaderboard's scale
    where dev is still evidence; None when neither counts."""
    k = max(1, len(evidence.anchors.leaderboard_scores))
    sigma = evidence.noise_band / 2 * math.sqrt(1 + 1 / k)
    if leaderboard is not None:
        return leaderboard, sigma
    if dev is None or not trusted_dev or evidence.dev_noise_band <= 0:
        return None
    return dev * evidence.noise_band / evidence.dev_noise_band, sigma


def observations(history: list[RoundEvidence], policy: Policy) -> list[Observation]:
    """Every measured worker's gain, told to its operator and (negated, at half weight) to the opposite one.

    Failed workers say nothing here (a mutation failure is already a dead end). A dev gain stands in for
    a missing leaderboard score only where the proxy has not decoupled: never for a flagged candidate,
    and never once the policy promotes on leaderboard transfer.
    """
    out = []
    for evidence in history:
        flagged = {f.candidate for f in evidence.calibration.flags if f.candidate}
        for c in evidence.candidates:
            if c.role != "worker" or c.mutation is None or c.status == "failed":
                continue
            trusted_dev = c.name not in flagged and policy.evidence.promote_on == "leaderboard"
            measured = _gain(evidence, c.leaderboard_gain, c.dev_gain, trusted_dev)
            if measured is None:
                continue
            gain, sigma = measured
            source = CandidateRef.named(evidence.round, c.name).key
            out.append(Observation(c.mutation, gain, sigma, 1.0, source))
            other = opposite(c.mutation)
            if other is not None:
                out.append(Observation(other, -gain, sigma, OPPOSITE_WEIGHT, source))
    return out


def posterior(sig: str, told: list[Observation], prior_sd: float) -> tuple[float, float, float]:
    """(weighted count, mean, sd) of the operator's gain: a normal prior N(0, prior_sd^2), normal gains."""
    mine = [o for o in told if o.signature == sig]
    precision = 1 / prior_sd ** 2 + sum(o.weight / o.sigma ** 2 for o in mine)
    mean = sum(o.weight * o.gain / o.sigma ** 2 for o in mine) / precision
    return sum(o.weight for o in mine), mean, math.sqrt(1 / precision)


def choose(open_signatures: list[str], history: list[RoundEvidence], policy: Policy, rng: random.Random) -> Choice:
    """The operator whose posterior draw is highest, with the long stride unless its posterior mean gain is
    negative (the module's docstring says why)."""
    if not open_signatures:
        raise ValueError("choose: no open operator")
    told = observations(history, policy)
    prior_sd = max(policy.noise_band, 1e-6)
    arms = []
    for sig in open_signatures:
        n, mean, sd = posterior(sig, told, prior_sd)
        arms.append(Arm(sig, n, mean, sd, rng.gauss(mean, sd)))
    best = max(arms, key=lambda a: a.draw)
    stride = LONG_STRIDE if best.mean >= 0 else 1
    return Choice(best.signature, stride, arms, len({o.source for o in told}))
