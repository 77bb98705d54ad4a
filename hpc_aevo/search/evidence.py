"""The round evidence: the fixed five-section record the meta step reads.

Why fixed: the paper's collector emits the same five sections every round (per-candidate
summaries, cross-candidate patterns, dev/leaderboard calibration, surprises, design-rationale
audit), so rounds stay comparable and the meta cannot be steered by what a report chose to show.
Every number here is computed in code from manifests the agents could not score themselves; a
later LLM collector may add prose per section (`prose`), never numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from statistics import fmean
from typing import Literal

from hpc_aevo.search.axes import axis_allows
from hpc_aevo.search.decoupling import AnchorStats, CalibrationReport, anchor_stats, calibration_report, evaluated, gain
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.manifest import CandidateManifest, FailureKind
from hpc_aevo.state.records import Record
from hpc_aevo.state.typed import SchemaError

SECTIONS: dict[str, str] = {
    "candidates": "1. Per-candidate summaries",
    "patterns": "2. Cross-candidate patterns",
    "calibration": "3. Dev/leaderboard calibration",
    "surprises": "4. Surprises",
    "rationale_audit": "5. Design-rationale audit",
}

# Words that give an expected effect a sign (matched as whole words, case-insensitive). A text with
# words of both kinds, or none, states no direction and is not checked.
_UP_WORDS = re.compile(r"\b(up|raises?|raising|higher|increases?|improves?)\b", re.I)
_DOWN_WORDS = re.compile(r"\b(down|lowers?|lowering|decreases?|reduces?|drops?|worse)\b", re.I)
# A mixture of experts' router has collapsed in a layer where an expert gets less than this fraction of an even
# share (1/experts) of the routed tokens: a dead expert. Under top-k routing the busiest expert holds at most 1/k
# (a token goes to k different experts), so the busiest share alone cannot tell a collapse for every k; the
# starved experts can.
STARVED_SHARE = 0.1


@dataclass
class CandidateSummary:
    name: str
    role: str
    axis: str | None
    mutation: str | None
    status: str
    dev: float | None
    leaderboard: float | None
    dev_gain: float | None  # vs the anchors' mean
    leaderboard_gain: float | None
    selected_step: int | None
    failure: str | None
    hypothesis: str
    expected_effect: str
    failure_kind: FailureKind | None = None  # of a failed candidate; None: not a job failure, or unclassified
    failure_basis: str | None = None  # the typed facts the kind was judged from
    expert_load: list[list[float]] = field(default_factory=list)  # per MoE layer, each expert's share (Measured)


@dataclass
class GroupStats:
    """Workers sharing an axis, or an axis and mutation direction ("mixture:up")."""

    key: str
    count: int
    failed: int
    mean_dev_gain: float | None
    mean_leaderboard_gain: float | None
    beat_anchor: list[str]  # workers whose leaderboard gain exceeds the noise band


@dataclass
class Patterns:
    by_axis: list[GroupStats]
    by_direction: list[GroupStats]
    axes_beating_anchor: list[str]
    failures_by_axis: dict[str, int]


@dataclass
class Surprise:
    kind: Literal["opposite-sign", "leaderboard-without-dev", "failure", "infrastructure-failure", "collapsed-router"]
    candidate: str
    dev_gain: float | None
    leaderboard_gain: float | None
    message: str


@dataclass
class RationaleAudit:
    candidate: str
    axis: str | None
    hypothesis_stated: bool
    axis_respected: bool
    off_axis_keys: list[str]  # mutation or recipe keys outside the axis' recipe area
    dead_end: str | None  # the registered dead end the mutation repeats, if any


@dataclass
class RoundEvidence(Record):
    """The evidence of one round, with the policy context it was judged in."""

    SCHEMA = "hpc_aevo.round_evidence"
    VERSION = 1

    round: int
    standing_source: str  # the standing recipe the anchors ran
    active_axes: list[str]
    noise_band: float  # the round policy's bands, that gains were judged against
    dev_noise_band: float
    anchors: AnchorStats
    candidates: list[CandidateSummary]
    patterns: Patterns
    calibration: CalibrationReport
    surprises: list[Surprise]
    rationale_audit: list[RationaleAudit]
    prose: dict[str, str] = field(default_factory=dict)  # section -> text, from an LLM collector

    def validate(self) -> None:
        for key in self.prose:
            if key not in SECTIONS:
                raise SchemaError(f"prose.{key}", "a section name: " + ", ".join(SECTIONS))

    def best_leaderboard(self) -> float | None:
        """The best leaderboard score of the round, over all evaluated candidates."""
        return max((c.leaderboard for c in self.candidates if c.leaderboard is not None), default=None)

    def summary(self, name: str) -> CandidateSummary | None:
        return next((c for c in self.candidates if c.name == name), None)


def _failure_kind(m: CandidateManifest, anchors: list[CandidateManifest]) -> tuple[FailureKind | None, str | None]:
    """Whether a failed candidate's failure is evidence against its mutation, and why.

    The launcher's typed facts decide (jobs/failures.py), with one round-wide rule on top: an anchor
    (no mutation) that failed the same way, same end state in the same stage, makes it infrastructure.
    A failure without facts (a worker that proposed nothing, a state tree from before them) is unclassified.
    """
    job = m.failed_job
    if m.status != "failed" or job is None:
        return None, None
    where = f"{job.state} in {job.stage} (exit {job.returncode})" if job.stage else f"{job.state}, no stage ran and failed"
    same = [a.name for a in anchors if a.name != m.name and a.status == "failed" and a.failed_job is not None
            and (a.failed_job.state, a.failed_job.stage) == (job.state, job.stage)]
    if job.kind == "mutation" and same and m.role == "worker":
        return "infrastructure", f"{where}; anchors {', '.join(same)} failed the same way"
    return job.kind, where


def _summaries(manifests: list[CandidateManifest], anchors: AnchorStats) -> list[CandidateSummary]:
    anchor_manifests = [m for m in manifests if m.role == "anchor"]
    out = []
    for m in manifests:
        kind, basis = _failure_kind(m, anchor_manifests)
        counts = evaluated(m)
        dev = m.measured.dev if counts else None
        board = m.measured.leaderboard if counts else None
        out.append(CandidateSummary(
            name=m.name, role=m.role, axis=m.axis, mutation=m.mutation, status=m.status,
            dev=dev, leaderboard=board, dev_gain=gain(dev, anchors.dev_mean),
            leaderboard_gain=gain(board, anchors.leaderboard_mean), selected_step=m.measured.selected_step,
            failure=m.failure, hypothesis=m.proposal.hypothesis, expected_effect=m.proposal.expected_effect,
            failure_kind=kind, failure_basis=basis, expert_load=m.measured.expert_load,
        ))
    return out


def direction_key(axis: str | None, mutation: str | None) -> str:
    """The group of a mutation's direction: "mixture:up" for axis mixture and "data.mixture.sequence:up"."""
    direction = mutation.rsplit(":", 1)[-1] if mutation else "none"
    return f"{axis}:{direction}"


def _group(key: str, members: list[CandidateSummary], band: float) -> GroupStats:
    devs = [c.dev_gain for c in members if c.dev_gain is not None]
    boards = [c.leaderboard_gain for c in members if c.leaderboard_gain is not None]
    return GroupStats(
        key=key, count=len(members), failed=sum(c.status == "failed" for c in members),
        mean_dev_gain=fmean(devs) if devs else None, mean_leaderboard_gain=fmean(boards) if boards else None,
        beat_anchor=[c.name for c in members if c.leaderboard_gain is not None and c.leaderboard_gain > band],
    )


def _patterns(summaries: list[CandidateSummary], band: float) -> Patterns:
    workers = [c for c in summaries if c.role == "worker"]
    by_axis: dict[str, list[CandidateSummary]] = {}
    by_direction: dict[str, list[CandidateSummary]] = {}
    for c in workers:
        by_axis.setdefault(str(c.axis), []).append(c)
        by_direction.setdefault(direction_key(c.axis, c.mutation), []).append(c)
    axes = [_group(k, v, band) for k, v in by_axis.items()]
    return Patterns(
        by_axis=axes,
        by_direction=[_group(k, v, band) for k, v in by_direction.items()],
        axes_beating_anchor=[g.key for g in axes if g.beat_anchor],
        failures_by_axis={g.key: g.failed for g in axes if g.failed},
    )


def expected_sign(text: str) -> int:
    """+1 if the expected-effect text says up/raise/..., -1 if down/lower/..., 0 if neither or both."""
    up, down = bool(_UP_WORDS.search(text)), bool(_DOWN_WORDS.search(text))
    return int(up) - int(down)


def router_collapse(expert_load: list[list[float]]) -> str | None:
    """In words, how many MoE layers' routers starve an expert (under STARVED_SHARE of an even share) and the
    layer that starves the most; None for a dense model or a router that feeds every expert."""
    collapsed = []
    for layer, shares in enumerate(expert_load):
        even = 1.0 / len(shares)
        starved = [j for j, share in enumerate(shares) if share < STARVED_SHARE * even]
        if starved and sum(shares) > 0:  # no routed tokens at all (a run that trained no step) is no collapse
            collapsed.append((len(starved), layer, starved, max(shares) / even))
    if not collapsed:
        return None
    _, layer, starved, busiest = max(collapsed)
    return (f"router collapse in {len(collapsed)} of {len(expert_load)} MoE layers; layer {layer}: experts "
            f"{', '.join(map(str, starved))} of {len(expert_load[layer])} got under {STARVED_SHARE:.0%} of an even "
            f"share of the routed tokens, the busiest {busiest:.1f}x an even share")


def _surprises(summaries: list[CandidateSummary], band: float, dev_band: float) -> list[Surprise]:
    """Findings that contradict a stated expectation or the usual dev/leaderboard agreement, and routers
    (anchors' too) that collapsed onto a few experts.

    The observed effect of an expectation is the leaderboard gain when the candidate has one (the
    authoritative target), else its dev gain; only an effect beyond its band counts as a sign.
    """
    out = []
    for c in summaries:
        if c.status == "failed":
            out.append(Surprise("infrastructure-failure" if c.failure_kind == "infrastructure" else "failure", c.name,
                                None, None, f"{c.name} ({c.axis}) failed{_kind_note(c)}: {c.failure or 'no reason'}"))
            continue
        collapse = router_collapse(c.expert_load)
        if collapse:
            out.append(Surprise("collapsed-router", c.name, c.dev_gain, c.leaderboard_gain,
                                f"{c.name} ({c.axis or c.role}): {collapse}"))
        if c.role != "worker":
            continue
        sign = expected_sign(c.expected_effect)
        observed, observed_band = (c.leaderboard_gain, band) if c.leaderboard_gain is not None else (c.dev_gain, dev_band)
        if sign and observed is not None and abs(observed) > observed_band and (observed > 0) != (sign > 0):
            out.append(Surprise(
                "opposite-sign", c.name, c.dev_gain, c.leaderboard_gain,
                f"{c.name} expected {c.expected_effect!r} but moved {observed:+.3f} (band {observed_band:.3f})",
            ))
        if c.leaderboard_gain is not None and c.dev_gain is not None and c.leaderboard_gain > band and c.dev_gain < 0:
            out.append(Surprise(
                "leaderboard-without-dev", c.name, c.dev_gain, c.leaderboard_gain,
                f"{c.name} beat the anchors on the leaderboard ({c.leaderboard_gain:+.3f} > {band:.3f}) "
                f"while losing on dev ({c.dev_gain:+.3f})",
            ))
    return out


def _kind_note(c: CandidateSummary) -> str:
    """' (infrastructure: NODE_FAIL, ...; not evidence)' after 'failed', in the evidence's own words."""
    if c.failure_kind is None:
        return " (unclassified: no typed job facts; not evidence)" if c.status == "failed" else ""
    tail = "; not evidence against its mutation" if c.failure_kind == "infrastructure" else ""
    return f" ({c.failure_kind}: {c.failure_basis}{tail})"


def off_axis_keys(axis: str | None, mutation: str | None, recipe_keys: list[str]) -> list[str]:
    """The mutated keys that lie outside the recipe area of `axis` (all of them for an unknown axis)."""
    keys = ([mutation.rsplit(":", 1)[0]] if mutation else []) + list(recipe_keys)
    return sorted({k for k in keys if not axis_allows(axis, k)})


def _audit(manifests: list[CandidateManifest], policy: Policy) -> list[RationaleAudit]:
    dead = policy.dead_end_signatures()
    out = []
    for m in manifests:
        if m.role != "worker":
            continue
        stray = off_axis_keys(m.axis, m.mutation, list(m.recipe_diff))
        out.append(RationaleAudit(
            candidate=m.name, axis=m.axis, hypothesis_stated=bool(m.proposal.hypothesis.strip()),
            axis_respected=m.mutation is not None and not stray, off_axis_keys=stray,
            dead_end=m.mutation if m.mutation in dead else None,
        ))
    return out


def collect_evidence(
    rnd: int, manifests: list[CandidateManifest], policy: Policy, examples_per_domain: dict[str, int],
    leaderboard_examples: dict[str, int] | None = None,
) -> RoundEvidence:
    """The rule-based collector: the round's evidence from its manifests and the policy that governed it (the
    example counts per domain of dev and of the leaderboard size the per-domain bands)."""
    anchors = anchor_stats(manifests)
    summaries = _summaries(manifests, anchors)
    return RoundEvidence(
        round=rnd, standing_source=policy.standing_source, active_axes=list(policy.active_axes),
        noise_band=policy.noise_band, dev_noise_band=policy.dev_noise_band, anchors=anchors,
        candidates=summaries,
        patterns=_patterns(summaries, policy.noise_band),
        calibration=calibration_report(manifests, policy, examples_per_domain, leaderboard_examples),
        surprises=_surprises(summaries, policy.noise_band, policy.dev_noise_band),
        rationale_audit=_audit(manifests, policy),
    )


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("—" if v is None else str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def _render_candidates(e: RoundEvidence) -> list[str]:
    return _table(
        ["candidate", "role", "axis", "mutation", "status", "dev", "Δdev", "leaderboard", "Δleaderboard", "step",
         "hypothesis / failure"],
        [[c.name, c.role, c.axis, c.mutation, c.status + (f" ({c.failure_kind})" if c.failure_kind else ""), _num(c.dev), _num(c.dev_gain, True), _num(c.leaderboard),
          _num(c.leaderboard_gain, True), c.selected_step, c.failure or c.hypothesis] for c in e.candidates],
    )


def _render_patterns(e: RoundEvidence) -> list[str]:
    p = e.patterns
    header = ["group", "workers", "failed", "mean Δdev", "mean Δleaderboard", "beat anchors"]

    def rows(groups: list[GroupStats]) -> list[list[object]]:
        return [[g.key, g.count, g.failed, _num(g.mean_dev_gain, True), _num(g.mean_leaderboard_gain, True),
                 ", ".join(g.beat_anchor)] for g in groups]

    return (["By axis:", ""] + _table(header, rows(p.by_axis)) + ["", "By axis and direction:", ""]
            + _table(header, rows(p.by_direction))
            + ["", f"Axes beating the anchors beyond the band {e.noise_band:.3f}: {', '.join(p.axes_beating_anchor) or 'none'}.",
               f"Failures by axis: {', '.join(f'{k} {v}' for k, v in p.failures_by_axis.items()) or 'none'}."])


def _render_calibration(e: RoundEvidence) -> list[str]:
    c = e.calibration
    lines = [
        f"Candidates with dev and leaderboard: {c.n}; spearman {_num(c.spearman, True)} (one-sided p {_num(c.spearman_p)}).",
        f"Bands: dev {c.dev_band:.3f}, leaderboard {c.leaderboard_band:.3f}; dev flag threshold {_num(c.dev_threshold)}.",
        f"Decoupled: {'yes' if c.decoupled else 'no'}; suspect domains: {', '.join(c.suspect_domains) or 'none'}.",
        "",
    ]
    lines += _table(["domain", "n dev / leaderboard", "anchor dev", "anchor leaderboard", "dev band",
                     "leaderboard band", "dev threshold", "max worker Δdev"],
                    [[d.domain, f"{d.n_examples} / {d.n_leaderboard}", _num(d.anchor_dev),
                      _num(d.anchor_leaderboard), _num(d.dev_band), _num(d.leaderboard_band), _num(d.dev_threshold),
                      _num(max((w.dev_gain for w in d.workers), default=None), True)] for d in c.domains])
    lines += ["", "Flags:", ""] + _table(["kind", "candidate", "domain", "message"],
                                         [[f.kind, f.candidate, f.domain, f.message] for f in c.flags])
    return lines


def _render_surprises(e: RoundEvidence) -> list[str]:
    return _table(["kind", "candidate", "message"], [[s.kind, s.candidate, s.message] for s in e.surprises])


def _render_audit(e: RoundEvidence) -> list[str]:
    return _table(["candidate", "axis", "hypothesis stated", "axis respected", "off-axis keys", "repeats dead end"],
                  [[a.candidate, a.axis, "yes" if a.hypothesis_stated else "no", "yes" if a.axis_respected else "no",
                    ", ".join(a.off_axis_keys), a.dead_end] for a in e.rationale_audit])


_RENDERERS = {
    "candidates": _render_candidates,
    "patterns": _render_patterns,
    "calibration": _render_calibration,
    "surprises": _render_surprises,
    "rationale_audit": _render_audit,
}


def render_markdown(evidence: RoundEvidence) -> str:
    """The human view of the evidence: a header and exactly the five '## ' sections."""
    a = evidence.anchors
    lines = [
        f"# Round {evidence.round} evidence",
        "",
        f"Standing recipe from {evidence.standing_source}; active axes: {', '.join(evidence.active_axes)}.",
        f"Anchors ({len(a.names)}): dev {_num(a.dev_mean)} ± {_num(a.dev_std)}, "
        f"leaderboard {_num(a.leaderboard_mean)} ± {_num(a.leaderboard_std)}; "
        f"noise bands: leaderboard {evidence.noise_band:.3f}, dev {evidence.dev_noise_band:.3f}.",
    ]
    infra = [f"{c.name} ({c.failure_basis})" for c in evidence.candidates if c.failure_kind == "infrastructure"]
    if infra:
        lines.append(f"Infrastructure failures, not evidence against a mutation: {'; '.join(infra)}.")
    for key, title in SECTIONS.items():
        lines += ["", f"## {title}", ""]
        if evidence.prose.get(key):
            lines += [evidence.prose[key].strip(), ""]
        lines += _RENDERERS[key](evidence)
    return "\n".join(lines) + "\n"
