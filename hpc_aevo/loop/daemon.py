"""The round daemon: fork, propose, train, eval, score, collect, meta, round after round, from files.

Each phase is idempotent and is marked done in the round's `round.json` only after its effects
are on disk, so a daemon killed at any moment and started again redoes at most the unfinished
part of one phase: candidates already forked, proposed, trained or scored are left as they are.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

from hpc_aevo.campaign.config import Campaign, load_campaign, load_initial_policy
from hpc_aevo.campaign.edits import Edit, applicable
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.backends import make_scheduler
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.launcher import JobFailure, Launcher, Track, TrainTrack
from hpc_aevo.jobs.preflight import Cluster, recipe_findings
from hpc_aevo.loop.fork import fork_candidate, load_recipe, recipe_diff
from hpc_aevo.loop.install import (
    SubstrateManifest,
    SubstrateTampered,
    hash_tree,
    install_substrate,
    remove_tree,
    verify_substrate,
)
from hpc_aevo.loop.substrate_check import contract_failure
from hpc_aevo.report import build as report
from hpc_aevo.report.progress import duration, stage_progress
from hpc_aevo.roles.factory import make_roles
from hpc_aevo.roles.interface import WorkerFailed, WorkerTask
from hpc_aevo.sandbox.jobs import preflight, unconfined_here
from hpc_aevo.scoring.adapters import make_adapter, task_files
from hpc_aevo.scoring.leaderboard import LeaderboardLedger
from hpc_aevo.scoring.results import read_eval_result, record_evaluation
from hpc_aevo.scoring.score_stage import ScoreTrack, choose
from hpc_aevo.search.constitution import CheckContext, ConstitutionChanged, constitution_hash, without_seed
from hpc_aevo.search.decide import decide
from hpc_aevo.search.evidence import RoundEvidence, collect_evidence, render_markdown
from hpc_aevo.search.policy import Policy, assign_axes
from hpc_aevo.state.crashpoints import crashpoint
from hpc_aevo.state.contract import RECIPE_FILE
from hpc_aevo.state.manifest import CandidateManifest, FailedJob
from hpc_aevo.state.records import Record, atomic_write_text, now_iso, seconds_since
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import CampaignRecord, StateTree
from hpc_aevo.state.untrusted import UntrustedFile

PHASES = ("fork", "propose", "train", "eval", "score", "collect", "meta")


class CampaignStopped(RuntimeError):
    """The campaign cannot go on without a human (tampered substrate, constitution, rejected fallback)."""


@dataclass
class PhaseDone:
    finished_at: str
    elapsed_s: float  # wall time since the phase first began, across daemon restarts


@dataclass
class RoundState(Record):
    SCHEMA = "hpc_aevo.round_state"
    VERSION = 2
    OLDER_VERSIONS = (1,)  # without `started`

    round: int
    phases: dict[str, PhaseDone] = field(default_factory=dict)
    started: dict[str, str] = field(default_factory=dict)  # when each phase first began (ISO 8601, UTC)

    def since_start(self, phase: str) -> float:
        """Seconds since `phase` first began, whichever daemon began it."""
        return seconds_since(self.started[phase])

    def complete(self) -> bool:
        return all(p in self.phases for p in PHASES)


def candidate_seed(campaign_seed: int, rnd: int, index: int) -> int:
    """Every candidate of every round trains with its own seed (anchors too: that is the noise they measure)."""
    return campaign_seed * 1_000_003 + rnd * 1_009 + index + 1


def _edit_of(policy: Policy, sandbox: Path) -> dict[str, list]:
    """The sandbox recipe's diff from the standing recipe, seeds aside (`UntrustedFile`: unreadable)."""
    return recipe_diff(without_seed(policy.standing_recipe), without_seed(load_recipe(sandbox)))


class Daemon:
    def __init__(self, campaign: Campaign, print_line: Callable[[str], None] = print):
        self.tree = StateTree(campaign.paths.state_root)
        self.print_line = print_line
        self._use(campaign)
        self._told: set[str] = set()  # the campaign file's versions whose refusal or wait was already said

    def _use(self, campaign: Campaign) -> None:
        """Run with `campaign`'s values: its adapter, roles and scheduler are built from them."""
        self.campaign = campaign
        self.leaderboard = make_adapter(campaign, self.tree)
        try:
            self.roles = make_roles(campaign.agents.backend, campaign, self.tree)
            self.scheduler = make_scheduler(campaign)
        except ConfigError as exc:
            raise (exc if exc.source else ConfigError.of(exc, campaign.source)) from None

    def steer(self, round_start: bool) -> None:
        """Take an edit of the campaign file, at a phase boundary: apply what may change now, say what waits
        for the next round, and refuse in one line an edit of what defines the campaign (or an invalid file),
        carrying on with the values it has. What was applied is printed and traced."""
        source = self.campaign.source
        try:
            edited = load_campaign(source)
        except ConfigError as exc:
            self._say_once(exc.__str__(), f"campaign edit not taken: {exc}; carrying on with the values it has")
            return
        edit = Edit.between(self.campaign, edited)
        if not edit.changes:
            return
        if edit.fixed:
            self._say_once(edited.sha256, f"campaign edit not taken: {', '.join(edit.fixed)} cannot change while the "
                                          f"campaign runs ({edit.describe(edit.fixed)}); carrying on with the values it has")
            return
        now = applicable(self.campaign, edited, round_start)
        applied = Edit.between(self.campaign, now)
        if applied.changes:
            try:
                previous = self.campaign
                self._use(now)
            except ConfigError as exc:
                self._use(previous)
                self._say_once(edited.sha256, f"campaign edit not taken: {exc}; carrying on with the values it has")
                return
            self.print_line(f"[{self.campaign.name}] campaign edit applied: {applied.describe()}")
            Trace(self.tree.campaign_trace).log("daemon", "campaign-edited", file=str(source), sha256=edited.sha256,
                                                changes={k: list(v) for k, v in applied.changes.items()})
        if edit.waiting and not round_start:
            self._say_once(edited.sha256 + ":waiting", f"campaign edit of {edit.describe(edit.waiting)} takes effect "
                                                       "when the next round starts")

    def _say_once(self, version: str, line: str) -> None:
        if version not in self._told:
            self._told.add(version)
            self.print_line(f"[{self.campaign.name}] {line}")

    # ---- campaign setup -------------------------------------------------------------------
    def prepare(self) -> CampaignRecord:
        """Install the substrate once, write the leaderboard's split and ledger and the round-0 policy, and
        last the campaign's record: once it exists, what it stands for is never recreated (a lost ledger
        would reset the quota spent; a lost round would be run again)."""
        tree, campaign = self.tree, self.campaign
        record = CampaignRecord.load_or_none(tree.campaign_record)
        if record is not None:
            if record.name != campaign.name:
                raise CampaignStopped(f"{tree.root} holds campaign {record.name!r}, not {campaign.name!r}")
            self._check_established(record)
        elif (failed := contract_failure(campaign.paths.substrate, campaign.paths.initial_policy)) is not None:
            raise CampaignStopped(str(failed))  # before round 0: a substrate the contract refuses costs one line
        problem = preflight((str(tree.root), *self._hidden()), campaign.confine_jobs)
        if problem:
            raise CampaignStopped(problem)
        manifest = install_substrate(campaign.paths.substrate, tree.default_dir, tree.substrate_manifest)
        if record is None:
            self.leaderboard.prepare()
            if not tree.policy(0).exists():
                load_initial_policy(campaign).save(tree.policy(0))
            record = CampaignRecord(name=campaign.name, campaign_file=str(campaign.source),
                                    config_sha256=campaign.sha256, substrate_sha256=manifest.tree_sha256,
                                    constitution_sha256=constitution_hash(campaign.paths.constitution),
                                    created_at=now_iso())
            record.save(tree.campaign_record)
        return record

    def _check_established(self, record: CampaignRecord) -> None:
        """What a started campaign spent or decided is there and readable: a missing file stops the campaign
        in one line (never recreated empty), a damaged record raises RecordError (one line too)."""
        tree = self.tree
        lost = lambda path, what: CampaignStopped(  # noqa: E731
            f"{path} is missing, though campaign {record.name} started on {record.created_at}: {what}; it is never "
            "recreated, restore it (README: damaged state)")
        for path, what in ((tree.substrate_manifest, "it holds the substrate's hashes"),
                           (tree.leaderboard_ledger, "it holds the leaderboard quota spent"),
                           *((data, "it is the held-out data every score was measured on")
                             for data in self.leaderboard.data_files()),
                           (tree.policy(0), "it is round 0's policy")):
            if not path.exists():
                raise lost(path, what)
        LeaderboardLedger.load(tree.leaderboard_ledger)
        rounds = tree.rounds()
        for rnd in range(max(rounds, default=-1) + 1):
            state = RoundState.load_or_none(tree.round_state(rnd))
            if tree.policy(rnd).exists():
                Policy.load(tree.policy(rnd))
            later = tree.policy(rnd + 1).exists() or rnd < max(rounds)
            if state is None and later:
                raise lost(tree.round_state(rnd), f"round {rnd + 1} already exists")
            have = len(tree.candidate_manifests(rnd))
            if state is not None and "fork" in state.phases and have != self.campaign.candidates:
                raise CampaignStopped(f"{tree.round_dir(rnd)} has {have} of its {self.campaign.candidates} "
                                      "candidates' manifests; a lost candidate is never run again or left out, "
                                      "restore it (README: damaged state)")

    def _verify_frozen(self, record: CampaignRecord) -> None:
        manifest = SubstrateManifest.load(self.tree.substrate_manifest)
        try:
            verify_substrate(self.tree.default_dir, manifest)
        except SubstrateTampered as exc:
            raise CampaignStopped(f"substrate check failed: {exc}") from None
        if manifest.tree_sha256 != record.substrate_sha256:
            raise CampaignStopped("substrate manifest differs from the one recorded when the campaign started")
        if constitution_hash(self.campaign.paths.constitution) != record.constitution_sha256:
            raise CampaignStopped(f"the constitution {self.campaign.paths.constitution} changed since the campaign "
                                  "started; it is frozen for the campaign's life")

    # ---- one round ---------------------------------------------------------------------
    def _hidden(self) -> tuple[str, ...]:
        """What no job stage may see besides the state tree: the campaign's own files, and the leaderboard's
        data and task where the campaign names them (score jobs see the private copies in leaderboard/)."""
        paths = self.campaign.paths
        task = task_files(paths.task_yaml) if paths.task_yaml is not None else []
        return tuple(str(p) for p in (self.campaign.source, paths.constitution, paths.initial_policy,
                                      *([paths.heldout] if paths.heldout is not None else []), *task))

    def candidate(self, rnd: int, c: int) -> Candidate:
        return Candidate(rnd, c, self.tree, self.campaign.confine_jobs, self._hidden(),
                         self.campaign.scheduler.max_processes)

    def candidates(self, rnd: int) -> list[Candidate]:
        return [self.candidate(rnd, c) for c in range(self.campaign.candidates)]

    def manifests(self, rnd: int) -> list[CandidateManifest]:
        return [c.manifest() for c in self.candidates(rnd)]

    def phase_fork(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        substrate = SubstrateManifest.load(self.tree.substrate_manifest)
        axes = assign_axes(policy, self.campaign.workers_per_round, rnd)
        for cand in self.candidates(rnd):
            path = self.tree.manifest(rnd, cand.index)
            if path.exists():
                continue
            fork_candidate(self.tree.default_dir, substrate, self.tree.sandbox(rnd, cand.index), policy.standing_recipe)
            anchor = cand.index < self.campaign.anchors
            manifest = CandidateManifest(
                round=rnd, candidate=cand.index, name=cand.ref.name, role="anchor" if anchor else "worker",
                seed=candidate_seed(self.campaign.seed, rnd, cand.index),
                axis=None if anchor else axes[cand.index - self.campaign.anchors])
            cand.save(manifest)
            cand.trace().log("daemon", "forked", standing_source=policy.standing_source, axis=manifest.axis)
            crashpoint(f"r{rnd}:fork:mid")
        return f"{self.campaign.candidates} sandboxes from default/ ({substrate.tree_sha256[:12]})"

    def phase_propose(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        substrate = SubstrateManifest.load(self.tree.substrate_manifest)
        mutations = []
        for cand in self.candidates(rnd):
            manifest = cand.manifest()
            if manifest.status == "forked":
                sandbox = self.tree.sandbox(rnd, cand.index)
                remove_tree(sandbox)  # a proposal interrupted mid-way starts again from a clean fork
                fork_candidate(self.tree.default_dir, substrate, sandbox, policy.standing_recipe)
                try:
                    result = self.roles.propose(self._task(cand, manifest, policy))
                    diff = _edit_of(policy, sandbox)
                except (WorkerFailed, UntrustedFile) as exc:  # it fails its candidate, not the round
                    crashpoint(f"r{rnd}:propose:mid")
                    manifest.status, manifest.failure = "failed", f"worker: {exc}"
                    cand.save(manifest)
                    cand.trace().log("daemon", "worker-failed", reason=str(exc))
                    mutations.append("failed")
                    continue
                crashpoint(f"r{rnd}:propose:mid")
                manifest.mutation, manifest.proposal, manifest.recipe_diff = result.mutation, result.proposal, diff
                manifest.status = "proposed"
                cand.save(manifest)
            mutations.append(manifest.mutation or "anchor")
        return ", ".join(mutations)

    def _launch(self, rnd: int, track: Track) -> None:
        launcher = Launcher(self.scheduler, self.campaign.retries.max_attempts, self.campaign.scheduler.poll_interval_s,
                            self.campaign.budget, self.tree, track)
        phase = "train" if track.stage == "train" else "score"
        launcher.run(self.candidates(rnd), lambda line: self.print_line(f"  {line}"),
                     lambda: stage_progress(self.tree, self.manifests(rnd), track.stage,
                                            self._round_state.since_start(phase)))

    def _refuse_unrunnable(self, rnd: int) -> int:
        """Fail each proposed candidate whose recipe the cluster would refuse, before its first submission
        (the worker's doing: a dead end); a recipe it cannot read is left to the job's recipe guard."""
        cluster, refused = Cluster.of(self.campaign, self.scheduler), 0
        for cand in self.candidates(rnd):
            manifest = cand.manifest()
            if manifest.status != "proposed" or manifest.attempts:
                continue
            sandbox = self.tree.sandbox(rnd, cand.index)
            try:
                findings = [f for f in recipe_findings(load_recipe(sandbox), sandbox / RECIPE_FILE, "", cluster) if f.refused]
            except UntrustedFile:
                continue
            if findings:
                manifest.status, manifest.failure = "failed", "; ".join(map(str, findings))
                manifest.failed_job = FailedJob("REFUSED", None, None, "mutation")
                cand.save(manifest)
                cand.trace().log("daemon", "preflight-refused", reason=manifest.failure)
                refused += 1
        return refused

    def phase_train(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        crashpoint(f"r{rnd}:train:start")
        refused = self._refuse_unrunnable(rnd)
        self._launch(rnd, TrainTrack(self._debug_turn))
        ms = self.manifests(rnd)
        failed = sum(m.status == "failed" for m in ms)
        retried = sum(m.attempts > 1 for m in ms)
        return (f"{len(ms) - failed}/{len(ms)} trained, {retried} retried, {failed} failed"
                + (f" ({refused} refused by the preflight)" if refused else ""))

    def _task(self, cand: Candidate, manifest: CandidateManifest, policy: Policy) -> WorkerTask:
        return WorkerTask(round=cand.round, candidate=cand.index, name=manifest.name, role=manifest.role,
                          axis=manifest.axis, seed=manifest.seed, sandbox=self.tree.sandbox(cand.round, cand.index),
                          policy=policy, trace=cand.trace())

    def _debug_turn(self, cand: Candidate, manifest: CandidateManifest, reason: str, failure: JobFailure) -> None:
        """A failed job goes back to its worker with the log and trace before its single-task resubmission."""
        cand.trace().log("daemon", "debug-turn", reason=reason, backend=self.campaign.agents.backend,
                         logs=failure.logs, log_tail=failure.log_tail)
        policy = Policy.load(self.tree.policy(cand.round))
        revised = self.roles.debug(self._task(cand, manifest, policy), reason)
        if revised is not None:
            manifest.mutation, manifest.proposal = revised.mutation, revised.proposal
        manifest.proposal.observed_failure_modes.append(reason)
        sandbox = self.tree.sandbox(cand.round, cand.index)
        try:
            manifest.recipe_diff = _edit_of(policy, sandbox)
        except UntrustedFile as exc:  # the retry's recipe guard reads it the same way and fails the job
            cand.trace().log("daemon", "recipe-unreadable", reason=str(exc))

    def phase_eval(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        for cand in self.candidates(rnd):
            manifest = cand.manifest()
            if manifest.status == "trained":
                record_evaluation(manifest, self.tree.eval_result(rnd, cand.index),
                                  self.tree.checkpoints(rnd, cand.index), cand.trace())
                cand.save(manifest)
                crashpoint(f"r{rnd}:eval:mid")
        ms = self.manifests(rnd)
        evaluated = [m for m in ms if m.status == "evaluated"]
        return f"{len(evaluated)}/{len(ms)} evaluated; " + ", ".join(f"{m.name} dev {m.measured.dev:.3f}" for m in evaluated)

    def phase_score(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        """The round's leaderboard scoring, as a job per chosen candidate: nothing model-sized runs here."""
        chosen = choose(self.candidates(rnd), self.manifests(rnd), self.campaign.leaderboard.per_round, self.leaderboard)
        crashpoint(f"r{rnd}:score:chosen")
        self._launch(rnd, ScoreTrack(self.leaderboard))
        scored = [m for m in self.manifests(rnd) if m.measured.leaderboard is not None]
        refused = len(chosen) - len(scored)
        return f"{len(scored)} on the leaderboard{f', {refused} refused' if refused else ''}; " + ", ".join(
            f"{m.name} dev {m.measured.dev:.3f} lb {m.measured.leaderboard:.3f}" for m in scored)

    def _examples_per_domain(self, rnd: int) -> dict[str, int]:
        for c in range(self.campaign.candidates):
            try:
                return dict(read_eval_result(self.tree.eval_result(rnd, c)).examples_per_domain)
            except (FileNotFoundError, UntrustedFile):
                continue
        return {}

    def phase_collect(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        evidence = collect_evidence(rnd, self.manifests(rnd), policy, self._examples_per_domain(rnd),
                                    self.leaderboard.ledger().examples_per_domain)
        evidence.prose = self.roles.prose(evidence)
        crashpoint(f"r{rnd}:collect:mid")
        evidence.save(self.tree.evidence_json(rnd))
        atomic_write_text(self.tree.evidence_md(rnd), render_markdown(evidence))
        cal = evidence.calibration
        return (f"5 sections; rank corr {cal.spearman if cal.spearman is None else round(cal.spearman, 2)}, "
                f"decoupled: {cal.decoupled}" + (f" (suspect: {', '.join(cal.suspect_domains)})" if cal.suspect_domains else ""))

    def _readable_recipes(self, rnd: int, manifests: list[CandidateManifest]) -> dict[str, dict]:
        """Each candidate's recipe, by name; one its worker left unreadable is left out (never promoted)."""
        recipes = {}
        for m in manifests:
            try:
                recipes[m.name] = load_recipe(self.tree.sandbox(rnd, m.candidate))
            except UntrustedFile:
                continue
        return recipes

    def phase_meta(self, rnd: int, policy: Policy, record: CampaignRecord) -> str:
        evidence = RoundEvidence.load(self.tree.evidence_json(rnd))
        history = [RoundEvidence.load(self.tree.evidence_json(r)) for r in range(rnd)]
        manifests = self.manifests(rnd)
        ctx = CheckContext(
            manifests=manifests,
            recipes=self._readable_recipes(rnd, manifests),
            expected_substrate_hash=record.substrate_sha256,
            current_substrate_hash=hash_tree(self.tree.default_dir)[1],
            expected_constitution_hash=record.constitution_sha256,
            current_constitution_hash=constitution_hash(self.campaign.paths.constitution))
        try:
            meta = self.roles.propose_policy(policy, evidence, history, ctx, record.constitution_sha256)
        except ConstitutionChanged as exc:
            raise CampaignStopped(str(exc)) from None
        accepted, decision = decide(policy, evidence, history, ctx, meta)
        crashpoint(f"r{rnd}:meta:mid")
        decision.save(self.tree.decision(rnd))
        if accepted is None:
            raise CampaignStopped(f"no policy for round {rnd + 1} satisfies the constitution: "
                                  + "; ".join(f"{v.rule}: {v.message}" for v in decision.violations))
        accepted.save(self.tree.policy(rnd + 1))
        promo = decision.promotion
        what = f"promoted {promo.candidate} (+{promo.leaderboard_gain:.3f} > {promo.band:.3f})" if promo else "no promotion"
        rejected = f", {len(decision.rejected_proposals)} proposal(s) rejected" if decision.rejected_proposals else ""
        return f"{what}; axes {', '.join(accepted.active_axes)}; {len(accepted.dead_ends)} dead ends{rejected}"

    def run_round(self, rnd: int, record: CampaignRecord) -> None:
        state_path = self.tree.round_state(rnd)
        state = RoundState.load_or_none(state_path) or RoundState(round=rnd)
        policy = Policy.load(self.tree.policy(rnd))
        unconfined = unconfined_here(self.campaign.confine_jobs)
        if unconfined:
            self.print_line(f"[{self.campaign.name} r{rnd:03d}] jobs run UNCONFINED: {unconfined}")
        for phase in PHASES:
            if phase in state.phases:
                continue
            self.steer(round_start=not state.phases)
            self._verify_frozen(record)
            if phase not in state.started:
                state.started[phase] = now_iso("milliseconds")
                state.save(state_path)
            self._round_state = state
            summary = getattr(self, f"phase_{phase}")(rnd, policy, record)
            state.phases[phase] = PhaseDone(now_iso(), state.since_start(phase))
            state.save(state_path)
            self.print_line(f"[{self.campaign.name} r{rnd:03d}] {phase:<7} {state.phases[phase].elapsed_s:6.1f}s  {summary}")
        self._verify_frozen(record)
        report.refresh(self.campaign, self.print_line)

    def run(self, rounds: int | None = None) -> None:
        resumed = self.tree.campaign_record.exists()
        record = self.prepare()
        rnd = 0
        while True:
            state = RoundState.load_or_none(self.tree.round_state(rnd))
            self.steer(round_start=state is None or not state.phases)  # an edit may change `rounds` too
            if rnd >= (self.campaign.rounds if rounds is None else rounds):
                return
            if not self.tree.policy(rnd).exists():
                raise CampaignStopped(f"round {rnd} has no policy (the meta step of round {rnd - 1} did not finish)")
            if state is None or not state.complete():
                if resumed:  # say where a restart picks up before its first phase line, which may be minutes away
                    phase = next(p for p in PHASES if state is None or p not in state.phases)
                    begun = f" (begun {duration(state.since_start(phase))} ago)" if state and phase in state.started else ""
                    self.print_line(f"[{self.campaign.name}] resuming r{rnd:03d} at {phase}{begun}")
                    resumed = False
                self.run_round(rnd, record)
            rnd += 1
