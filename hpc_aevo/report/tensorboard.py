"""TensorBoard runs for every candidate and one for the campaign, so `tensorboard --logdir STATE_ROOT` shows it all.

Why written here and not by the trainer: the jobs already print their metric lines and the daemon
already records dev scores per checkpoint, so the event files are drawn from those (report/metrics.py
and the manifests) on the login node, and a candidate's training code needs no TensorBoard at all.
Each run lives in its candidate's directory (`rounds/rNNN/cand-NN/tensorboard`: the run's name in
TensorBoard is its round and candidate); the campaign's is `report/campaign`. A run is rewritten whole
(built beside it, then swapped in) only when its sources are newer than its event file.
tensorboardX writes the files (its only dependencies are numpy and protobuf); `read_scalars` reads
them back with its protobuf classes, for tests and for anyone without TensorBoard installed.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from hpc_aevo.report.metrics import candidate_metrics
from hpc_aevo.report.story import CampaignReport
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.tree import CandidateRef, StateTree, attempt_logs


def _newest_mtime(paths) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _fresh(run: Path, sources: list[Path]) -> bool:
    """The run's event files are newer than every source it was drawn from."""
    events = list(run.glob("events.out.tfevents.*")) if run.is_dir() else []
    return bool(events) and _newest_mtime(events) >= _newest_mtime(sources)


def _rewrite(run: Path, fill) -> None:
    """Write a run into a sibling temp directory with `fill(writer)`, then put it in place of the old one."""
    from tensorboardX import SummaryWriter

    partial, old = run.with_name(f".{run.name}.partial"), run.with_name(f".{run.name}.old")
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    writer = SummaryWriter(logdir=str(partial), flush_secs=3600)
    try:
        fill(writer)
    finally:
        writer.close()
    if run.exists():
        run.rename(old)
    partial.rename(run)
    shutil.rmtree(old, ignore_errors=True)


def write_candidate_run(tree: StateTree, manifest: CandidateManifest) -> bool:
    """The candidate's run: training loss, lr, grad norm and tokens/s per logged step, dev (overall and per
    domain) per checkpoint, the leaderboard score at the selected step. Returns whether it was (re)written."""
    rnd, c = manifest.round, manifest.candidate
    run = tree.tensorboard(rnd, c)
    if _fresh(run, [tree.manifest(rnd, c), *attempt_logs(tree.jobs(rnd, c))]):
        return False
    points = candidate_metrics(tree, rnd, c, manifest.attempts)
    measured = manifest.measured

    def fill(writer) -> None:
        key = CandidateRef(rnd, c).key
        writer.add_text("candidate", f"{key}: {manifest.role}, axis {manifest.axis or '-'}, mutation "
                                     f"{manifest.mutation or '-'}, status {manifest.status}", 0)
        for p in points:
            for tag, value in (("train/loss", p.loss), ("train/lr", p.lr), ("train/grad_norm", p.grad_norm),
                               ("train/tokens_per_s", p.tokens_per_s)):
                if value is not None:
                    writer.add_scalar(tag, value, p.step)
        for ckpt in measured.checkpoints:
            writer.add_scalar("dev/score", ckpt.dev, ckpt.step)
            for domain, value in sorted(ckpt.per_domain.items()):
                writer.add_scalar(f"dev/{domain}", value, ckpt.step)
        if measured.leaderboard is not None and measured.selected_step is not None:
            writer.add_scalar("leaderboard/score", measured.leaderboard, measured.selected_step)
            for domain, value in sorted(measured.leaderboard_per_domain.items()):
                writer.add_scalar(f"leaderboard/{domain}", value, measured.selected_step)

    _rewrite(run, fill)
    return True


def write_campaign_run(tree: StateTree, story: CampaignReport) -> None:
    """The campaign's run, one point per round: the standing recipe's scores, the best candidate's, the band,
    the rank correlation, promotions, dead ends and compute."""

    def fill(writer) -> None:
        for r in story.rounds:
            boards = [c.leaderboard for c in r.candidates if c.leaderboard is not None]
            devs = [c.dev for c in r.candidates if c.dev is not None]
            for tag, value in (("standing/leaderboard", r.standing_leaderboard), ("standing/dev", r.standing_dev),
                               ("best/leaderboard", max(boards, default=None)), ("best/dev", max(devs, default=None)),
                               ("band/noise", r.noise_band), ("calibration/spearman", r.spearman),
                               ("calibration/decoupled", float(r.decoupled)),
                               ("decision/promotion_gain", r.promotion.leaderboard_gain if r.promotion else None),
                               ("decision/dead_ends", float(len(r.dead_ends))), ("compute/cpu_hours", r.cpu_hours),
                               ("compute/gpu_hours", r.gpu_hours), ("compute/api_usd", r.api_usd)):
                if value is not None:
                    writer.add_scalar(tag, value, r.round)
            for domain, value in sorted(r.standing_leaderboard_per_domain.items()):
                writer.add_scalar(f"standing/leaderboard/{domain}", value, r.round)

    _rewrite(tree.campaign_tensorboard, fill)


def write_runs(tree: StateTree, story: CampaignReport) -> int:
    """Every candidate's run that is out of date, and the campaign's; returns how many candidate runs were written."""
    written = 0
    for rnd in tree.rounds():
        for path in tree.candidate_manifests(rnd):
            written += write_candidate_run(tree, CandidateManifest.load(path))
    write_campaign_run(tree, story)
    return written


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from a run's event files (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(run).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
