"""The false-promotion rate: the campaign's own decision code, driven by candidates that change nothing.

    python -m hpc_aevo.bench noise [--campaign campaigns/demo.yaml] [--rounds 10000] [--trap-rounds 2000]
                                   [--dev-std 0.015] [--leaderboard-std 0.008] [--rho 0.0]
                                   [--power-gains 0.01,0.02,0.03,0.04,0.05] [--power-rounds 2000] [--out bench-noise.json]
                                   [--calibration SWEEP.json ... [--trap-variant data.mixture.sequence:up*2]]
                                   [--real-rounds 2000]

Why: a loop that promotes seed noise spends every later round on a recipe that is not better, and the
constitution's band rule (C2) is the only thing between a lucky seed and the standing recipe. This runs
whole campaigns (the campaign's anchors, workers, rounds and initial policy) in which every worker's
mutation does nothing: each candidate is the standing recipe with a fresh seed, scored by a noise model
calibrated on the reference substrate (docs/calibration.md: the default's per-domain dev and held-out
means, and the pooled seed std of the overall scores). Each round goes through the same
`collect_evidence` and `decide` as a real one, so bands widen from pooled anchors, a promotion restarts
the pool, and dead ends and decoupling responses carry over. Every promotion is a false one.

The planted trap is measured on single rounds from the initial policy: the first worker raises dev on
one domain the way the calibration's "sequence x6" did (overall dev +0.130, held-out flat); it should be
flagged by the decoupling detector, registered as a dead end, and not promoted.

With `--calibration`, the model is the one those `calibrate` sweeps measured of the campaign's start
instead: the start's per-domain means, the wider of its seed std and the pooled within-variant std, the
held-out split's size, and the trap as the sweep's `--trap-variant` runs moved each domain (by default
`data.mixture.sequence:up*2`, the two edits a scripted worker makes of an operator not known to lose). Their
start runs are also real null candidates (trained, evaluated and scored like any other), so the same
decision code runs on *real* rounds too: `--real-rounds` rounds each drawn from those runs (the
first k anchors, the rest null workers). The draws share runs, so only `len(runs) // candidates` of them
are independent; the rate checks the model rather than replacing it.

The power is measured the same way: single rounds from the initial policy whose first worker carries a
true gain of delta on every domain's dev and held-out score (the other workers null); the rate at which
that worker is promoted, per delta. A band rule that never promotes has no false promotions too.

Rates come with 95% Wilson intervals. The rounds of one campaign are not independent (their bands
and standing recipe carry over), so the interval of the per-round rate is a little narrower than it
should be; the per-round-index rates show how far they differ.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aevo.campaign.config import load_campaign, load_initial_policy
from hpc_aevo.roles.scripted.search import LONG_STRIDE
from hpc_aevo.scoring.leaderboard import HELDOUT_PER_DOMAIN
from hpc_aevo.search.axes import AXES, mixture_key, signature
from hpc_aevo.search.constitution import CheckContext
from hpc_aevo.search.decide import decide
from hpc_aevo.search.decoupling import sample_std
from hpc_aevo.search.evidence import RoundEvidence, collect_evidence
from hpc_aevo.search.policy import Policy, assign_axes
from hpc_aevo.state.manifest import CandidateManifest, Measured, Proposal
from hpc_aevo.state.records import Record
from hpc_aevo.state.untrusted import MIB, UntrustedFile, read_json

# The reference substrate's default recipe per domain, mean of 3 seeds (docs/calibration.md, 2026-11-23).
DEV_MEANS = {"bits": 0.09, "equation": 0.19, "cipher": 0.00, "base": 0.19, "sequence": 0.26}
LEADERBOARD_MEANS = {"bits": 0.10, "equation": 0.09, "cipher": 0.00, "base": 0.00, "sequence": 0.06}
EXAMPLES_PER_DOMAIN = 100  # substrate/data.py DEV_PER_DOMAIN and scoring/leaderboard.py HELDOUT_PER_DOMAIN
DEV_STD, LEADERBOARD_STD = 0.015, 0.008  # pooled within-variant seed std of the overall scores (the doc's wider)
TRAP_DOMAIN, TRAP_DEV_GAIN = "sequence", 0.130  # "sequence x6": overall dev +0.130, held-out +0.001
TRAP_VARIANT = signature(mixture_key(TRAP_DOMAIN), "up")  # the trap's operator
# The trap as a scripted worker takes it first, as a calibrate sweep names it (the operator and its stride).
TRAP_SWEPT = f"{TRAP_VARIANT}*{LONG_STRIDE}"
RUN_KEYS = ("dev", "heldout", "dev_per_domain", "heldout_per_domain")  # what a sweep's run gives a real round
Z95 = 1.959963984540054
POWER_GAINS = (0.01, 0.02, 0.03, 0.04, 0.05)  # true held-out gains: the calibration's moves reach about 0.02
_HASH = "0" * 64  # the simulated campaign's substrate and constitution hashes: unchanged by construction


def wilson(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of count/n: honest at rates near 0 and small n, where the normal one is not."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    p = count / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


@dataclass
class Rate:
    count: int
    n: int
    rate: float
    low: float  # 95% Wilson interval
    high: float

    @classmethod
    def of(cls, count: int, n: int) -> "Rate":
        return cls(count, n, count / n, *wilson(count, n))

    def line(self) -> str:
        return f"{self.rate:.4f} [{self.low:.4f}, {self.high:.4f}] ({self.count}/{self.n})"


@dataclass
class NoiseModel:
    """Per candidate: each domain's score is its mean plus seed noise proportional to its binomial sigma,
    scaled so the overall score (the mean over domains) has the calibrated std; dev and held-out noise
    of one candidate correlate with `rho` (not measured: 0 unless told)."""

    dev_std: float
    leaderboard_std: float
    rho: float
    dev_means: dict[str, float]
    leaderboard_means: dict[str, float]
    examples_per_domain: dict[str, int]  # dev's
    leaderboard_examples_per_domain: dict[str, int] = field(default_factory=dict)  # the held-out split's

    def _scale(self, means: dict[str, float], std: float) -> float:
        binomial = sum(p * (1 - p) for p in means.values())
        return 0.0 if binomial == 0 else std * len(means) / math.sqrt(binomial)

    def draw(self, rng: random.Random, dev_effect: dict[str, float],
             board_effect: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """One candidate's per-domain (dev, held-out) scores; the effects add to its domains' scores."""
        dev_scale = self._scale(self.dev_means, self.dev_std)
        board_scale = self._scale(self.leaderboard_means, self.leaderboard_std)
        dev, board = {}, {}
        for d in self.dev_means:
            z_dev = rng.gauss(0, 1)
            z_board = self.rho * z_dev + math.sqrt(1 - self.rho ** 2) * rng.gauss(0, 1)
            p, q = self.dev_means[d], self.leaderboard_means[d]
            dev[d] = min(1.0, max(0.0, p + dev_scale * math.sqrt(p * (1 - p)) * z_dev + dev_effect.get(d, 0.0)))
            board[d] = min(1.0, max(0.0, q + board_scale * math.sqrt(q * (1 - q)) * z_board + board_effect.get(d, 0.0)))
        return dev, board


@dataclass
class Power:
    gain: float  # the worker's true gain on every domain's dev and held-out score
    promoted: Rate  # rounds that promoted that worker


@dataclass
class NoiseBench(Record):
    """What `bench noise` measured, with the model and the campaign shape it measured it under."""

    SCHEMA = "hpc_aevo.bench_noise"
    VERSION = 1

    command: str
    campaign: str
    model: NoiseModel
    anchors: int
    workers: int
    rounds_per_campaign: int
    campaigns: int
    seed: int
    noise_band: float  # the initial policy's bands and threshold
    dev_noise_band: float
    promotion_threshold: float
    promotions: Rate  # rounds that promoted: every one a false promotion
    promotions_by_round: list[Rate]  # the same by round index within a campaign
    detector_false_alarms: Rate  # null rounds whose calibration raised any decoupling flag
    false_alarm_kinds: dict[str, int]  # null rounds raising each kind of flag
    dead_end_rounds: Rate  # null rounds that registered a dead end (an idea banned on noise)
    trap_dev_gain: float
    trap_flagged: Rate  # trap rounds where a decoupling flag names the trap worker
    trap_dead_end: Rate  # trap rounds that registered the trap's mutation as a dead end
    trap_promoted: Rate  # trap rounds that promoted the trap worker
    power: list[Power]  # the promotion rate of a worker with a true gain, per gain
    within_5_percent: bool  # the promotion rate is at most 0.05, as the issue asks of the band rule
    notes: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)  # the sweeps the model was measured from (none: built in)
    trap_board_gain: float = 0.0  # the trap's overall held-out gain (built-in model: flat)
    trap_variant: str = TRAP_VARIANT  # the trap as measured: its operator and, from a sweep, the stride
    real_runs: int = 0  # the sweeps' real null candidates (the start's seeds)
    real_promotions: Rate | None = None  # rounds drawn from those runs that promoted
    real_independent_rounds: int = 0  # how many of those draws could be disjoint


@dataclass
class _Shape:
    anchors: int
    workers: int
    model: NoiseModel


@dataclass
class _Planted:
    """What the first worker of a round does instead of nothing: its mutation and its per-domain effects."""

    mutation: str
    dev: dict[str, float]
    board: dict[str, float]


def _trap(model: NoiseModel) -> _Planted:
    """"sequence x6": all of the overall dev gain on one domain, held-out flat."""
    return _Planted(TRAP_VARIANT, {TRAP_DOMAIN: TRAP_DEV_GAIN * len(model.dev_means)}, {})


def _gain(model: NoiseModel, delta: float) -> _Planted:
    """A real gain: every domain's dev and held-out score `delta` higher."""
    return _Planted("optim.steps:up", {d: delta for d in model.dev_means}, {d: delta for d in model.leaderboard_means})


class CalibrationError(ValueError):
    """A `--calibration` file that cannot be read as a sweep of the same start: one line naming the file."""


@dataclass
class Calibrated:
    """What `calibrate` sweeps measured of one start: the noise model, the trap's effect, the start's runs."""

    model: NoiseModel
    trap: _Planted  # what the sweeps' runs of the trap variant moved
    runs: list[dict]  # the start's runs, one per seed: real null candidates


CALIBRATION_SCHEMA, START = "hpc_aevo.calibration", "default"  # tools/calibrate.py's record and its start's name
SWEEP_LIMIT = 64 * MIB  # a sweep of thousands of runs is a few MB


def _sweep(path: Path) -> dict:
    """A sweep read as any untrusted JSON is: a regular file, bounded, finite numbers only."""
    try:
        body = read_json(path, path.resolve().parent, SWEEP_LIMIT)
    except (OSError, UntrustedFile) as exc:
        raise CalibrationError(f"{path}: expected a calibrate JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("schema") != CALIBRATION_SCHEMA:
        raise CalibrationError(f"{path}: schema: expected {CALIBRATION_SCHEMA!r}")
    return body


def load_calibration(paths: list[Path], rho: float, trap_variant: str = TRAP_SWEPT) -> Calibrated:
    """The start's model from one or more sweeps of it (seeds pooled; the same start, seed aside, in each),
    and the trap as the runs of `trap_variant` moved it."""
    starts: dict[int, dict] = {}
    trap_runs: dict[int, dict] = {}
    pooled: dict[str, list[float]] = {"dev": [], "heldout": []}
    recipe = sizes = None
    for path in paths:
        body = _sweep(path)
        try:
            start = {k: v for k, v in body["default_recipe"].items() if k != "seed"}
            size = int(body.get("heldout_per_domain", HELDOUT_PER_DOMAIN))
            if recipe is not None and (start, size) != (recipe, sizes):
                raise CalibrationError(f"{path}: default_recipe, heldout_per_domain: expected the start and split "
                                       f"of {paths[0]} (seeds aside)")
            recipe, sizes = start, size
            for run in body["runs"]:
                into = starts if run["variant"] == START else trap_runs if run["variant"] == trap_variant else None
                if into is not None:
                    into.setdefault(int(run["seed"]), {k: run[k] for k in RUN_KEYS})
            for score in pooled:
                pooled[score].append(float(body["seed_band"][score].get("pooled_std") or 0.0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(f"{path}: expected a calibrate record ({type(exc).__name__}: {exc})") from None
    runs = [starts[seed] for seed in sorted(starts)]
    if len(runs) < 2:
        raise CalibrationError(f"{paths[0]}: runs: expected at least 2 seeds of the start, found {len(runs)}")
    dev_means = _domain_means(runs, "dev_per_domain")
    board_means = _domain_means(runs, "heldout_per_domain")
    model = NoiseModel(
        dev_std=max(sample_std([r["dev"] for r in runs]) or 0.0, *pooled["dev"]),
        leaderboard_std=max(sample_std([r["heldout"] for r in runs]) or 0.0, *pooled["heldout"]),
        rho=rho, dev_means=dev_means, leaderboard_means=board_means,
        examples_per_domain={d: EXAMPLES_PER_DOMAIN for d in dev_means},
        leaderboard_examples_per_domain={d: sizes for d in board_means})
    if not trap_runs:
        raise CalibrationError(f"{', '.join(map(str, paths))}: runs: no run of the trap {trap_variant!r}; sweep it "
                               f"(calibrate --operators '{trap_variant}') or name a swept one with --trap-variant")
    moved = list(trap_runs.values())
    trap = _Planted(trap_variant.partition("*")[0],
                    {d: v - dev_means[d] for d, v in _domain_means(moved, "dev_per_domain").items()},
                    {d: v - board_means[d] for d, v in _domain_means(moved, "heldout_per_domain").items()})
    return Calibrated(model, trap, runs)


def _domain_means(runs: list[dict], key: str) -> dict[str, float]:
    return {d: sum(float(r[key][d]) for r in runs) / len(runs) for d in runs[0][key]}


def _round(policy: Policy, shape: _Shape, rng: random.Random, planted: _Planted | None = None,
           real: list[dict] | None = None) -> tuple[list[CandidateManifest], dict[str, dict[str, Any]]]:
    """One measured round of null candidates (the standing recipe, a fresh seed); with `planted`, the first
    worker is that instead; with `real`, the candidates' scores are those measured runs' (one each)."""
    rnd = policy.round
    axes = assign_axes(policy, shape.workers, rnd)
    manifests, recipes = [], {}
    for i in range(shape.anchors + shape.workers):
        worker = i >= shape.anchors
        axis = axes[i - shape.anchors] if worker else None
        first = planted if planted is not None and i == shape.anchors else None
        mutation = (first.mutation if first is not None
                    else signature(AXES[axis].recipe_areas[0], "noop") if worker else None)
        dev, board = ((real[i]["dev_per_domain"], real[i]["heldout_per_domain"]) if real is not None
                      else shape.model.draw(rng, first.dev if first else {}, first.board if first else {}))
        name, seed = f"cand-{i:02d}", rng.randrange(2 ** 31)
        manifests.append(CandidateManifest(
            round=rnd, candidate=i, name=name, role="worker" if worker else "anchor", seed=seed, axis=axis,
            mutation=mutation, status="evaluated", attempts=1,
            proposal=Proposal(hypothesis="a mutation that changes nothing" if worker else ""),
            measured=Measured(dev=sum(dev.values()) / len(dev), dev_per_domain=dev,
                              leaderboard=sum(board.values()) / len(board), leaderboard_per_domain=board)))
        recipes[name] = {**policy.standing_recipe, "seed": seed}
    return manifests, recipes


def _decide(policy: Policy, manifests: list[CandidateManifest], recipes: dict[str, dict[str, Any]],
            history: list[RoundEvidence], shape: _Shape):
    evidence = collect_evidence(policy.round, manifests, policy, shape.model.examples_per_domain,
                                shape.model.leaderboard_examples_per_domain)
    new, decision = decide(policy, evidence, history, CheckContext(manifests, recipes, _HASH, _HASH, _HASH, _HASH))
    if new is None:
        raise RuntimeError(f"round {policy.round}: no policy satisfies the constitution: {decision.violations}")
    return evidence, new, decision


def simulate(initial: Policy, shape: _Shape, rounds_per_campaign: int, campaigns: int, trap: _Planted,
             trap_rounds: int, seed: int, power_gains: list[float], power_rounds: int) -> dict[str, Any]:
    """Run the null campaigns, the trap rounds and the power rounds; the counts behind NoiseBench's rates."""
    rng = random.Random(seed)
    promoted = [0] * rounds_per_campaign
    alarms = dead_end_rounds = 0
    kinds: dict[str, int] = {}
    for _ in range(campaigns):
        policy, history = initial, []
        for r in range(rounds_per_campaign):
            manifests, recipes = _round(policy, shape, rng)
            evidence, new, decision = _decide(policy, manifests, recipes, history, shape)
            promoted[r] += decision.promotion is not None
            alarms += evidence.calibration.decoupled
            for kind in {f.kind for f in evidence.calibration.flags}:
                kinds[kind] = kinds.get(kind, 0) + 1
            dead_end_rounds += len(new.dead_ends) > len(policy.dead_ends)
            history.append(evidence)
            policy = new
    flagged = dead = trapped = 0
    first = f"cand-{shape.anchors:02d}"
    for _ in range(trap_rounds):
        manifests, recipes = _round(initial, shape, rng, trap)
        evidence, new, decision = _decide(initial, manifests, recipes, [], shape)
        flagged += any(f.candidate == first for f in evidence.calibration.flags)
        dead += trap.mutation in new.dead_end_signatures()
        trapped += decision.promotion is not None and decision.promotion.candidate.endswith(first)
    found = {}
    for delta in power_gains:
        found[delta] = 0
        for _ in range(power_rounds):
            manifests, recipes = _round(initial, shape, rng, _gain(shape.model, delta))
            _, _, decision = _decide(initial, manifests, recipes, [], shape)
            found[delta] += decision.promotion is not None and decision.promotion.candidate.endswith(first)
    return dict(promoted=promoted, alarms=alarms, kinds=dict(sorted(kinds.items())), dead_end_rounds=dead_end_rounds,
                flagged=flagged, dead=dead, trapped=trapped, found=found)


def real_rounds(initial: Policy, shape: _Shape, runs: list[dict], rounds: int, seed: int) -> int:
    """Promotions over `rounds` rounds from the initial policy, each of runs drawn without replacement from the
    sweeps' real null candidates: the first k the anchors, the rest workers whose mutation did nothing."""
    size = shape.anchors + shape.workers
    if len(runs) < size:
        raise CalibrationError(f"--real-rounds: a round of {size} candidates needs as many real runs of the start, "
                               f"the sweeps have {len(runs)}")
    rng = random.Random(seed)
    promoted = 0
    for _ in range(rounds):
        manifests, recipes = _round(initial, shape, rng, real=rng.sample(runs, size))
        _, _, decision = _decide(initial, manifests, recipes, [], shape)
        promoted += decision.promotion is not None
    return promoted


def bench_noise(campaign_path: Path, rounds: int, trap_rounds: int, dev_std: float | None,
                leaderboard_std: float | None, rho: float, seed: int, out: Path, anchors: int | None = None,
                workers: int | None = None, power_gains: tuple[float, ...] = (), power_rounds: int = 0,
                command: str = "", calibration: tuple[Path, ...] = (), real: int = 0,
                trap_variant: str = TRAP_SWEPT) -> NoiseBench:
    """Simulate, print the rates and write the record; `rounds` is rounded up to whole campaigns. The model is
    the built-in one, or the `calibration` sweeps' (`dev_std`/`leaderboard_std`, when given, override either's
    std), and the trap is their `trap_variant` runs'; `real` rounds are drawn from the sweeps' start runs."""
    campaign = load_campaign(campaign_path)
    initial = load_initial_policy(campaign)
    measured = load_calibration(list(calibration), rho, trap_variant) if calibration else None
    if measured is not None:
        model = measured.model
    else:
        domains = {d: EXAMPLES_PER_DOMAIN for d in DEV_MEANS}
        model = NoiseModel(DEV_STD, LEADERBOARD_STD, rho, dict(DEV_MEANS), dict(LEADERBOARD_MEANS), domains,
                           {d: HELDOUT_PER_DOMAIN for d in LEADERBOARD_MEANS})
    model.dev_std = model.dev_std if dev_std is None else dev_std
    model.leaderboard_std = model.leaderboard_std if leaderboard_std is None else leaderboard_std
    shape = _Shape(anchors if anchors is not None else campaign.anchors,
                   workers if workers is not None else campaign.workers_per_round, model)
    trap = measured.trap if measured is not None else _trap(model)
    if real and measured is None:
        raise CalibrationError("--real-rounds: real rounds are drawn from --calibration sweeps; give one")
    per = campaign.rounds
    campaigns = -(-rounds // per)
    counts = simulate(initial, shape, per, campaigns, trap, trap_rounds, seed, list(power_gains), power_rounds)
    n = campaigns * per
    promotions = Rate.of(sum(counts["promoted"]), n)
    size = shape.anchors + shape.workers
    record = NoiseBench(
        command=command,
        campaign=str(campaign_path), model=shape.model, anchors=shape.anchors, workers=shape.workers,
        rounds_per_campaign=per, campaigns=campaigns, seed=seed, noise_band=initial.noise_band,
        dev_noise_band=initial.dev_noise_band, promotion_threshold=initial.promotion_threshold,
        promotions=promotions, promotions_by_round=[Rate.of(c, campaigns) for c in counts["promoted"]],
        detector_false_alarms=Rate.of(counts["alarms"], n), false_alarm_kinds=counts["kinds"],
        dead_end_rounds=Rate.of(counts["dead_end_rounds"], n),
        trap_dev_gain=sum(trap.dev.values()) / len(model.dev_means),
        trap_flagged=Rate.of(counts["flagged"], trap_rounds),
        trap_dead_end=Rate.of(counts["dead"], trap_rounds), trap_promoted=Rate.of(counts["trapped"], trap_rounds),
        power=[Power(delta, Rate.of(n, power_rounds)) for delta, n in counts["found"].items()],
        within_5_percent=promotions.rate <= 0.05, calibration=[str(p) for p in calibration],
        trap_board_gain=sum(trap.board.values()) / len(model.leaderboard_means),
        trap_variant=trap_variant if measured is not None else TRAP_VARIANT)
    if measured is not None:
        record.real_runs = len(measured.runs)
        record.real_independent_rounds = len(measured.runs) // size
        if real:
            record.real_promotions = Rate.of(real_rounds(initial, shape, measured.runs, real, seed), real)
    if not record.within_5_percent:
        record.notes.append(f"the band rule does NOT hold false promotions at or below 5% here: {promotions.line()}")
    record.save(out)
    for line in _lines(record):
        print(line, flush=True)
    return record


def _lines(r: NoiseBench) -> list[str]:
    return [
        f"{r.campaigns} campaigns x {r.rounds_per_campaign} rounds, {r.anchors} anchor(s) + {r.workers} null workers; "
        f"seed std dev {r.model.dev_std} / held-out {r.model.leaderboard_std}, rho {r.model.rho}; initial bands "
        f"leaderboard {r.noise_band} dev {r.dev_noise_band}, threshold {r.promotion_threshold}",
        f"false promotions per round:   {r.promotions.line()}",
        *[f"  round {i}:                   {rate.line()}" for i, rate in enumerate(r.promotions_by_round)],
        f"decoupling false alarms:      {r.detector_false_alarms.line()} "
        f"({', '.join(f'{k} {v}' for k, v in r.false_alarm_kinds.items()) or 'none'})",
        f"rounds registering dead ends: {r.dead_end_rounds.line()}",
        *([f"model from {', '.join(r.calibration)}: {r.real_runs} real runs of the start, a held-out split of "
           f"{'/'.join(map(str, sorted(set(r.model.leaderboard_examples_per_domain.values()))))} a domain"]
          if r.calibration else []),
        f"trap {r.trap_variant} (dev {r.trap_dev_gain:+.3f}, held-out {r.trap_board_gain:+.3f}) flagged: "
        f"{r.trap_flagged.line()}",
        f"trap registered as dead end:  {r.trap_dead_end.line()}",
        f"trap promoted:                {r.trap_promoted.line()}",
        *[f"true gain {p.gain:+.3f} promoted: {p.promoted.line()}" for p in r.power],
        *([f"real rounds (drawn from {r.real_runs} runs; {r.real_independent_rounds} could be disjoint) promoted: "
           f"{r.real_promotions.line()}"] if r.real_promotions else []),
        *r.notes,
    ]
