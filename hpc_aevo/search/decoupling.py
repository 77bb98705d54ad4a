"""The proxy-decoupling detector: does the dev score still predict the leaderboard?

Why: in A-Evolve-Training's later rounds, candidates pushed dev (and one weak domain) to record
highs while the leaderboard did not move; the loop had to notice that its proxy had stopped being
evidence. This module turns one round's manifests into the calibration section of the round
evidence: every candidate's gain over the anchors' mean on dev and on the leaderboard, overall and
per domain, the rank correlation of dev and leaderboard, and flags where dev gains do not transfer.

Noise model. A band is a per-comparison 95% band (2 sigma of one score). A round makes many
comparisons (every worker, every worker x domain), so a flag needs the gain to clear the band
*and* the Bonferroni quantile of that many comparisons, with the detector's round-wide false-alarm
rate ALPHA split over its three rules. A gain is measured against the mean of k anchors, so its
sigma carries a factor sqrt(1 + 1/k). Without these corrections a round of pure seed noise raises
a flag most of the time, and the meta would change what counts as evidence on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist, correlation, fmean, stdev
from typing import Literal

from hpc_aevo.search.policy import Policy
from hpc_aevo.state.manifest import CandidateManifest

ALPHA = 0.05  # round-wide false-alarm rate of the detector, split equally over its three rules
RULE_ALPHA = ALPHA / 3
MIN_RANK_CANDIDATES = 4  # fewer candidates cannot make a rank correlation significant

FlagKind = Literal["dev-gain-without-transfer", "domain-gain-without-transfer", "rank-decoupling"]
_NORMAL = NormalDist()


def evaluated(m: CandidateManifest) -> bool:
    """A candidate whose dev score exists and counts (failed candidates never count)."""
    return m.status != "failed" and m.measured.dev is not None


def sample_std(values: list[float]) -> float | None:
    """Sample standard deviation, or None with fewer than two values."""
    return stdev(values) if len(values) >= 2 else None


def _mean_or_none(values: list[float]) -> float | None:
    return fmean(values) if values else None


def _domain_means(tables: list[dict[str, float]]) -> dict[str, float]:
    domains = sorted({d for table in tables for d in table})
    return {d: fmean(t[d] for t in tables if d in t) for d in domains}


@dataclass
class AnchorStats:
    """The baseline every gain of a round is measured against: the anchors' scores.

    Anchors run the standing recipe with fresh seeds, so their spread is the seed noise and their
    mean is what "no mutation" scores. Raw scores are kept so later rounds can pool them.
    """

    names: list[str] = field(default_factory=list)
    dev_scores: list[float] = field(default_factory=list)
    leaderboard_scores: list[float] = field(default_factory=list)
    dev_mean: float | None = None
    dev_std: float | None = None
    leaderboard_mean: float | None = None
    leaderboard_std: float | None = None
    dev_per_domain: dict[str, float] = field(default_factory=dict)
    leaderboard_per_domain: dict[str, float] = field(default_factory=dict)


def anchor_stats(manifests: list[CandidateManifest]) -> AnchorStats:
    anchors = [m for m in manifests if m.role == "anchor" and evaluated(m)]
    dev = [m.measured.dev for m in anchors]
    board = [m.measured.leaderboard for m in anchors if m.measured.leaderboard is not None]
    return AnchorStats(
        names=[m.name for m in anchors],
        dev_scores=dev,
        leaderboard_scores=board,
        dev_mean=_mean_or_none(dev),
        dev_std=sample_std(dev),
        leaderboard_mean=_mean_or_none(board),
        leaderboard_std=sample_std(board),
        dev_per_domain=_domain_means([m.measured.dev_per_domain for m in anchors]),
        leaderboard_per_domain=_domain_means([m.measured.leaderboard_per_domain for m in anchors]),
    )


def gain(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or baseline is None else value - baseline


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None below 3 pairs or for constant input."""
    if len(xs) != len(ys):
        raise ValueError("spearman: xs and ys differ in length")
    rx, ry = _ranks(xs), _ranks(ys)
    if len(xs) < 3 or len(set(rx)) == 1 or len(set(ry)) == 1:
        return None
    return correlation(rx, ry)


def rank_p_value(rho: float, n: int) -> float:
    """One-sided p that n independent pairs rank this negatively or worse (Fisher z, Spearman variance 1.06/(n-3))."""
    clipped = max(min(rho, 1 - 1e-12), -1 + 1e-12)
    return _NORMAL.cdf(math.atanh(clipped) * math.sqrt((n - 3) / 1.06))


def domain_band(policy_band: float, p: float, n: int) -> float:
    """Per-domain band: the policy band, or two binomial sigmas of a difference of two n-example scores."""
    p = min(max(p, 0.0), 1.0)
    return max(policy_band, 2 * math.sqrt(2 * p * (1 - p) / n))


def flag_threshold(band: float, sigma_gain: float, tests: int) -> float:
    """The gain a flag needs: the band, widened to the Bonferroni quantile of the round's comparisons."""
    return max(band, sigma_gain * _NORMAL.inv_cdf(1 - RULE_ALPHA / max(tests, 1)))


def _anchor_factor(k: int) -> float:
    """A gain over the mean of k anchors has sqrt(1 + 1/k) times the sigma of one score."""
    return math.sqrt(1 + 1 / k)


@dataclass
class CandidateGain:
    candidate: str
    role: str
    dev_gain: float | None
    leaderboard_gain: float | None


@dataclass
class DomainGain:
    candidate: str
    dev_gain: float
    leaderboard_gain: float | None


@dataclass
class DomainCalibration:
    """One domain: anchor scores, the per-domain bands, and every worker's gains on it.

    `dev_threshold` is what a worker's dev gain on the domain must exceed to be flagged; None when
    the domain's example count is unknown or its leaderboard baseline is missing (not tested).
    """

    domain: str
    n_examples: int | None
    anchor_dev: float
    anchor_leaderboard: float | None
    dev_band: float
    leaderboard_band: float | None
    dev_threshold: float | None
    workers: list[DomainGain] = field(default_factory=list)
    n_leaderboard: int | None = None  # the leaderboard's examples of the domain (None: taken as n_examples)


@dataclass
class DecouplingFlag:
    """One finding of the detector; `threshold` is the dev gain the flag had to exceed."""

    kind: FlagKind
    domain: str | None
    candidate: str | None
    dev_gain: float | None
    leaderboard_gain: float | None
    band: float | None
    threshold: float | None
    message: str


@dataclass
class CalibrationReport:
    """Section 3 of the round evidence: how well dev tracked the leaderboard this round."""

    n: int  # candidates with both a dev and a leaderboard score
    spearman: float | None  # dev vs leaderboard rank correlation over those candidates
    spearman_p: float | None  # one-sided p of a correlation this negative under independence
    dev_band: float
    leaderboard_band: float
    dev_threshold: float | None  # what a worker's overall dev gain must exceed to be flagged
    candidates: list[CandidateGain] = field(default_factory=list)
    domains: list[DomainCalibration] = field(default_factory=list)
    flags: list[DecouplingFlag] = field(default_factory=list)
    decoupled: bool = False
    suspect_domains: list[str] = field(default_factory=list)


def _transfer_flags(workers: list[CandidateGain], policy: Policy, k: int) -> tuple[float | None, list[DecouplingFlag]]:
    """Rule (a): a worker's dev gain clears the noise while its leaderboard gain stays inside the band.

    That is the signature of a proxy gain: the mutation moved what dev measures, not what the
    external target measures. A leaderboard gain below the band counts as no transfer too.
    """
    tested = [w for w in workers if w.dev_gain is not None and w.leaderboard_gain is not None]
    if not tested or k == 0:
        return None, []
    sigma = policy.dev_noise_band / 2 * _anchor_factor(k)
    threshold = flag_threshold(policy.dev_noise_band, sigma, len(tested))
    flags = [
        DecouplingFlag(
            "dev-gain-without-transfer", None, w.candidate, w.dev_gain, w.leaderboard_gain,
            policy.dev_noise_band, threshold,
            f"{w.candidate}: dev {w.dev_gain:+.3f} > {threshold:.3f} but leaderboard "
            f"{w.leaderboard_gain:+.3f} <= band {policy.noise_band:.3f}",
        )
        for w in tested
        if w.dev_gain > threshold and w.leaderboard_gain <= policy.noise_band
    ]
    return threshold, flags


def _domain_calibration(
    workers: list[CandidateManifest], anchors: AnchorStats, policy: Policy, examples_per_domain: dict[str, int],
    leaderboard_examples: dict[str, int],
) -> tuple[list[DomainCalibration], list[DecouplingFlag]]:
    """Rule (b): per domain, a worker's dev gain clears the noise while that domain's leaderboard gain does not.

    A domain whose dev score can be raised without its leaderboard score following is where the
    proxy has stopped measuring the target (the paper's weak "equation" domain): it is suspect.
    A domain score carries its own sampling noise plus at most the seed noise of the overall band; the
    leaderboard's sampling noise is that of its own split's size where the leaderboard says it, which can be
    larger than dev's.
    """
    k = len(anchors.names)
    domains = []
    for d, anchor_dev in anchors.dev_per_domain.items():
        n = examples_per_domain.get(d)
        n_board = leaderboard_examples.get(d) or n
        anchor_board = anchors.leaderboard_per_domain.get(d)
        board_band = (None if n is None or n_board is None or anchor_board is None
                      else domain_band(policy.noise_band, anchor_board, n_board))
        domains.append(DomainCalibration(
            domain=d, n_examples=n, anchor_dev=anchor_dev, anchor_leaderboard=anchor_board,
            dev_band=policy.dev_noise_band if n is None else domain_band(policy.dev_noise_band, anchor_dev, n),
            leaderboard_band=board_band, dev_threshold=None, n_leaderboard=n_board,
            workers=[
                DomainGain(m.name, m.measured.dev_per_domain[d] - anchor_dev,
                           gain(m.measured.leaderboard_per_domain.get(d), anchor_board))
                for m in workers if d in m.measured.dev_per_domain
            ],
        ))
    testable = [dc for dc in domains if dc.leaderboard_band is not None]
    tests = sum(1 for dc in testable for w in dc.workers if w.leaderboard_gain is not None)
    flags = []
    for dc in testable:
        p = dc.anchor_dev
        sigma = math.sqrt(p * (1 - p) / dc.n_examples + (policy.dev_noise_band / 2) ** 2) * _anchor_factor(k)
        dc.dev_threshold = flag_threshold(dc.dev_band, sigma, tests)
        flags += [
            DecouplingFlag(
                "domain-gain-without-transfer", dc.domain, w.candidate, w.dev_gain, w.leaderboard_gain,
                dc.dev_band, dc.dev_threshold,
                f"{w.candidate} on {dc.domain}: dev {w.dev_gain:+.3f} > {dc.dev_threshold:.3f} but leaderboard "
                f"{w.leaderboard_gain:+.3f} <= band {dc.leaderboard_band:.3f}",
            )
            for w in dc.workers
            if w.leaderboard_gain is not None and w.dev_gain > dc.dev_threshold
            and w.leaderboard_gain <= dc.leaderboard_band
        ]
    return domains, flags


def _rank_flag(rho: float | None, p: float | None, n: int) -> list[DecouplingFlag]:
    """Rule (c): across candidates, dev ranks them significantly against the leaderboard.

    A negative correlation among near-equal candidates is common by chance, so the rule asks for
    a one-sided significant negative correlation, not merely rho < 0.
    """
    if rho is None or p is None or n < MIN_RANK_CANDIDATES or p >= RULE_ALPHA:
        return []
    return [DecouplingFlag(
        "rank-decoupling", None, None, None, None, None, None,
        f"dev and leaderboard rank {n} candidates against each other: spearman {rho:+.2f} (p {p:.3f} < {RULE_ALPHA:.3f})",
    )]


def calibration_report(
    manifests: list[CandidateManifest], policy: Policy, examples_per_domain: dict[str, int],
    leaderboard_examples: dict[str, int] | None = None,
) -> CalibrationReport:
    """The calibration report of one round; `policy` is the round's policy (its bands); the example counts per
    domain are dev's and the leaderboard's (dev's stand for the leaderboard's where it does not say)."""
    anchors = anchor_stats(manifests)
    scored = [m for m in manifests if evaluated(m)]
    gains = [
        CandidateGain(m.name, m.role, gain(m.measured.dev, anchors.dev_mean),
                      gain(m.measured.leaderboard, anchors.leaderboard_mean))
        for m in scored
    ]
    both = [m for m in scored if m.measured.leaderboard is not None]
    rho = spearman([m.measured.dev for m in both], [m.measured.leaderboard for m in both])
    p = None if rho is None else rank_p_value(rho, len(both))
    dev_threshold, flags = _transfer_flags([g for g in gains if g.role == "worker"], policy, len(anchors.names))
    domains, domain_flags = _domain_calibration(
        [m for m in scored if m.role == "worker"], anchors, policy, examples_per_domain, leaderboard_examples or {})
    flags += domain_flags + _rank_flag(rho, p, len(both))
    return CalibrationReport(
        n=len(both), spearman=rho, spearman_p=p,
        dev_band=policy.dev_noise_band, leaderboard_band=policy.noise_band, dev_threshold=dev_threshold,
        candidates=gains, domains=domains, flags=flags, decoupled=bool(flags),
        suspect_domains=sorted({f.domain for f in domain_flags}),
    )
