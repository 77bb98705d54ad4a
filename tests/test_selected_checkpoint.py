"""The toolkit's side of the checkpoint contract: eval.json's selected_checkpoint is what the leaderboard scores.

The path is resolved inside the candidate's checkpoints directory (which its training wrote: nothing
absolute, no '..', no symlink on the way); the round's choice writes that file and its sha256 into the
manifest, the score job gets them, and the adapter records a result only if it says it scored those
bytes at that step on the whole held-out split. An eval.json of version 1 (an evaluator from before)
still loads, and its candidate is not chosen. The score job itself runs in tests/test_job_confinement.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.spec import JobOutcome, StageRun
from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardError, LeaderboardLedger
from hpc_aevo.scoring.results import EvalResult, SelectedCheckpoint, selected_file
from hpc_aevo.scoring.score_stage import ScoreTrack, choose
from hpc_aevo.state.contract import SCORE_RESULT
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.tree import StateTree

SHA = "ab" * 32
BODY = {"schema": "hpc_aevo.eval_result", "version": 2, "split": "dev", "selection_rule": "best_dev",
        "selected_step": 24, "examples_per_domain": {"bits": 100},
        "checkpoints": [{"step": 24, "dev": 0.5, "per_domain": {"bits": 0.5}}], "wall_s": 1.0,
        "selected_checkpoint": {"path": "export/ckpt-000024.safetensors", "sha256": SHA, "step": 24}}


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    directory = tmp_path / "checkpoints"
    (directory / "export").mkdir(parents=True)
    (directory / "export" / "ckpt-000024.safetensors").write_bytes(b"weights")
    return directory


def round_of(tmp_path: Path, devs: list[float | None], quota: int = 8) -> tuple[list[Candidate], HeldoutPuzzles]:
    """A round of evaluated candidates (cand-00 the anchor; None: a candidate that failed) and its leaderboard."""
    tree = StateTree(tmp_path / "state")
    tree.leaderboard_dir.mkdir(parents=True)
    tree.heldout_split.write_text("")
    LeaderboardLedger(quota=quota, examples_per_domain={"bits": 100}).save(tree.leaderboard_ledger)
    candidates = []
    for c, dev in enumerate(devs):
        cand = Candidate(0, c, tree)
        (tree.checkpoints(0, c) / "export").mkdir(parents=True)
        (tree.checkpoints(0, c) / "export" / "ckpt-000024.safetensors").write_bytes(b"weights")
        tree.eval_result(0, c).write_text(json.dumps(BODY))
        cand.save(CandidateManifest(round=0, candidate=c, name=f"cand-{c:02d}", role="anchor" if c == 0 else "worker",
                                    seed=c, axis=None, status="failed" if dev is None else "evaluated"))
        manifest = cand.manifest()
        manifest.measured.dev = dev
        cand.save(manifest)
        candidates.append(cand)
    return candidates, HeldoutPuzzles(tree, quota=quota, seed=0)


def result(out: Path, **change) -> Path:
    """A score job's output directory with its score.json as the evaluator writes it, `change` applied."""
    body = {"schema": "hpc_aevo.split_score", "version": 2, "checkpoint": "/x/export/ckpt-000024.safetensors",
            "checkpoint_sha256": SHA, "step": 24, "score": 0.25, "per_domain": {"bits": 0.25},
            "examples_per_domain": {"bits": 100}, **change}
    out.mkdir(parents=True, exist_ok=True)
    (out / SCORE_RESULT).write_text(json.dumps(body))
    return out


def test_the_selected_file_stays_inside_the_checkpoints_directory(checkpoints, tmp_path):
    assert selected_file(checkpoints, SelectedCheckpoint("export/ckpt-000024.safetensors", SHA, 24)) == (
        checkpoints / "export" / "ckpt-000024.safetensors")
    for path, message in (("../elsewhere.safetensors", "expected a path inside"), ("/etc/passwd", "expected a path inside"),
                          ("", "expected a path inside"), ("export/ckpt-000012.safetensors", "is not a regular file")):
        with pytest.raises(LeaderboardError, match=message):
            selected_file(checkpoints, SelectedCheckpoint(path, SHA, 24))
    with pytest.raises(LeaderboardError, match="sha256: expected 64 hex digits"):
        selected_file(checkpoints, SelectedCheckpoint("export/ckpt-000024.safetensors", "abc", 24))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ckpt-000024.safetensors").write_bytes(b"other")
    (checkpoints / "linked").symlink_to(tmp_path / "outside")
    (checkpoints / "export" / "ckpt-000036.safetensors").symlink_to(tmp_path / "outside" / "ckpt-000024.safetensors")
    for path in ("linked/ckpt-000024.safetensors", "export/ckpt-000036.safetensors"):
        with pytest.raises(LeaderboardError, match="is a symlink"):
            selected_file(checkpoints, SelectedCheckpoint(path, SHA, 24))


def test_the_round_chooses_anchors_first_then_by_dev_within_per_round_and_the_quota(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1, 0.3, None, 0.5, 0.4], quota=4)
    chosen = choose(candidates, [c.manifest() for c in candidates], 3, adapter)
    assert [m.name for m in chosen] == ["cand-00", "cand-03", "cand-04"]
    assert chosen[0].scoring.checkpoint == "export/ckpt-000024.safetensors" and chosen[0].scoring.sha256 == SHA
    assert candidates[3].manifest().scoring.status == "chosen"  # written: a restarted daemon keeps the choice
    again = choose(candidates, [c.manifest() for c in candidates], 3, adapter)
    assert [m.name for m in again] == ["cand-00", "cand-03", "cand-04"]
    # With 3 of the quota of 4 reserved by this round's choice, a later choice gets one more at most.
    manifests = [c.manifest() for c in candidates]
    assert [m.name for m in choose(candidates, manifests, 5, adapter)] == ["cand-00", "cand-03", "cand-04", "cand-01"]


def test_a_candidate_scored_before_the_score_stage_existed_gets_no_job(tmp_path):
    """A state tree from before: its round's eval phase scored in the daemon, and its manifests have a
    leaderboard score but no `scoring`; resumed now, the score phase keeps that score and submits nothing."""
    candidates, adapter = round_of(tmp_path, [0.1, 0.3])
    manifest = candidates[0].manifest()
    manifest.measured.leaderboard = 0.05
    candidates[0].save(manifest)
    chosen = choose(candidates, [c.manifest() for c in candidates], 2, adapter)
    assert [m.name for m in chosen] == ["cand-00", "cand-01"]
    assert candidates[0].manifest().scoring is None and candidates[1].manifest().scoring.status == "chosen"


def test_a_version_1_eval_json_loads_but_is_not_chosen(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1, 0.5])
    old = {k: v for k, v in BODY.items() if k != "selected_checkpoint"} | {"version": 1}
    candidates[1].tree.eval_result(0, 1).write_text(json.dumps(old))
    assert EvalResult.load(candidates[1].tree.eval_result(0, 1)).selected_checkpoint is None
    assert [m.name for m in choose(candidates, [c.manifest() for c in candidates], 2, adapter)] == ["cand-00"]
    event = candidates[1].trace().events()[-1]
    assert event["event"] == "leaderboard-refused" and "names no selected_checkpoint" in event["reason"]
    assert candidates[1].manifest().scoring is None
    with pytest.raises(Exception, match="version: expected 1, 2"):
        EvalResult.from_dict({**old, "version": 3})


def test_the_score_job_gets_the_one_file_its_hash_and_the_held_out_split(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1])
    [manifest] = choose(candidates, [candidates[0].manifest()], 1, adapter)
    spec = ScoreTrack(adapter).spec(candidates[0], manifest, 1)
    tree = candidates[0].tree
    assert spec.stages == ("score",) and spec.jobs_dir == str(tree.score_jobs(0, 0))
    assert (spec.score.checkpoint, spec.score.sha256) == (str(tree.checkpoints(0, 0) / "export/ckpt-000024.safetensors"), SHA)
    out = tree.score_jobs(0, 0) / "attempt-1.score-out"
    assert spec.score.views == (str(tree.heldout_split),) and spec.score.command == ()  # the frozen evaluator
    assert spec.score.args == ("--checkpoint", spec.score.checkpoint, "--sha256", SHA, "--recipe",
                               str(tree.sandbox(0, 0) / "recipe.yaml"), "--split-file", str(tree.heldout_split),
                               "--out", str(out / SCORE_RESULT))
    assert spec.claim_path().parent == spec.outcome_path().parent == tree.score_jobs(0, 0)


@pytest.mark.parametrize("change, said", [
    ({"checkpoint_sha256": SHA[::-1]}, "scored sha256"),
    ({"step": 12}, "scored step 12, not 24"),
    ({"examples_per_domain": {"bits": 10}}, "not the split's"),
    ({"per_domain": {"bits": 0.25, "cipher": 1.0}}, "are not the split's"),
    ({"score": 1.5}, r"outside \[0, 1\]"),
    ({"schema": "hpc_aevo.eval_result"}, "schema"),
])
def test_a_result_that_is_not_what_was_asked_is_refused_and_not_recorded(tmp_path, change, said):
    candidates, adapter = round_of(tmp_path, [0.1])
    with pytest.raises(LeaderboardError if "schema" not in change else Exception, match=said):
        adapter.record("r000/cand-00", result(tmp_path / "out", **change), "export/ckpt-000024.safetensors", SHA, 24)
    assert adapter.ledger().submissions == []


def test_a_completed_score_job_is_recorded_once_and_a_refused_one_fails_only_its_candidate(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1, 0.5])
    track = ScoreTrack(adapter)
    chosen = choose(candidates, [c.manifest() for c in candidates], 2, adapter)
    outcome = JobOutcome("r000/cand-00", 1, "COMPLETED", [StageRun("score", 0, 1.0, "log", True)])
    for cand, manifest, change in zip(candidates, chosen, ({}, {"step": 12})):
        manifest.scoring.attempts, manifest.scoring.status = 1, "submitted"
        result(track.spec(cand, manifest, 1).files.out("score"), **change)
        track.completed(cand, manifest, outcome)
    assert (chosen[0].scoring.status, chosen[0].measured.leaderboard) == ("scored", 0.25)
    assert (chosen[1].scoring.status, chosen[1].measured.leaderboard) == ("failed", None)
    assert "scored step 12" in chosen[1].scoring.failure
    assert [e.candidate for e in adapter.ledger().submissions] == ["r000/cand-00"]
    tree = candidates[0].tree
    assert json.loads(tree.leaderboard_score(0, 0).read_text())["score"] == 0.25
    track.completed(candidates[0], chosen[0], outcome)  # a daemon restarted after recording: the same entry
    assert len(adapter.ledger().submissions) == 1


def test_a_result_that_is_a_link_or_a_fifo_is_refused(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1])
    real = result(tmp_path / "real") / SCORE_RESULT
    for name, make in (("link", lambda p: p.symlink_to(real)), ("fifo", os.mkfifo)):
        path = tmp_path / name / SCORE_RESULT
        path.parent.mkdir()
        make(path)
        with pytest.raises(Exception, match="regular file|link"):
            adapter.record("r000/cand-00", path.parent, "export/ckpt-000024.safetensors", SHA, 24)
    assert adapter.ledger().submissions == []


def test_the_quota_is_never_exceeded_when_recording(tmp_path):
    candidates, adapter = round_of(tmp_path, [0.1, 0.5], quota=1)
    adapter.record("r000/cand-00", result(tmp_path / "a"), "export/ckpt-000024.safetensors", SHA, 24)
    with pytest.raises(LeaderboardError, match="quota of 1 submissions is spent"):
        adapter.record("r000/cand-01", result(tmp_path / "b"), "export/ckpt-000024.safetensors", SHA, 24)
