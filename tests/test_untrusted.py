"""What a worker or its jobs leave behind is read as untrusted data: a link, a FIFO, a device, a hard
link, an oversized or malformed file fails that candidate with one line, and never blocks, crashes or
copies anything from outside the candidate's directory. No record is written that cannot be read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bounded import within

from hpc_aevo.jobs.body import _recipe_guard, run_job
from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.loop.fork import load_recipe
from hpc_aevo.scoring.results import record_evaluation
from hpc_aevo.state.contract import EVAL_RESULT, RECIPE_FILE, TRAIN_SUMMARY
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.records import RecordError
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import RECIPE_MARKER
from hpc_aevo.state.untrusted import UntrustedFile, read_bytes, read_json, read_yaml_mapping

SECRET = "the held-out split\n"


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(a candidate's directory, a secret file of the daemon's outside it)."""
    (tmp_path / "cand").mkdir()
    secret = tmp_path / "heldout.jsonl"
    secret.write_text(SECRET)
    return tmp_path / "cand", secret


def fails_fast(call, match: str) -> None:
    """`call` raises UntrustedFile matching `match` within seconds (a FIFO must never block the daemon)."""
    with pytest.raises(UntrustedFile) as caught:
        within(10, call)
    assert match in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_plain_file_inside_is_read(box):
    cand, _ = box
    (cand / "a.json").write_text('{"steps": 3, "loss": 0.5}')
    assert read_json(cand / "a.json", cand) == {"steps": 3, "loss": 0.5}


@pytest.mark.parametrize("plant, match", [
    (lambda cand, secret: os.symlink(secret, cand / "f"), "symbolic link"),
    (lambda cand, secret: os.symlink("/dev/zero", cand / "f"), "symbolic link"),
    (lambda cand, secret: os.mkfifo(cand / "f"), "a FIFO"),
    (lambda cand, secret: (cand / "f").mkdir(), "a directory"),
    (lambda cand, secret: os.link(secret, cand / "f"), "hard link"),
    (lambda cand, secret: (cand / "f").write_bytes(b"x" * 2000), "more than the 1000"),
])
def test_what_is_not_a_small_regular_file_inside_is_refused(box, plant, match):
    cand, secret = box
    plant(cand, secret)
    fails_fast(lambda: read_bytes(cand / "f", cand, 1000), match)


def test_a_linked_directory_leading_outside_is_refused(box, tmp_path):
    cand, secret = box
    os.symlink(tmp_path, cand / "up")  # cand/up/heldout.jsonl is the secret, through a linked directory
    fails_fast(lambda: read_bytes(cand / "up" / "heldout.jsonl", cand, 1000), "outside")
    os.symlink(tmp_path, tmp_path / "linked-cand")
    fails_fast(lambda: read_bytes(tmp_path / "linked-cand" / "heldout.jsonl", tmp_path / "linked-cand", 1000),
               "not a plain directory")


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"final_loss": 1e400}', "not finite"),
    (b'{"final_loss": NaN}', "not a number JSON allows"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_malformed_json_is_one_line(box, content, match):
    cand, _ = box
    (cand / "s.json").write_bytes(content)
    fails_fast(lambda: read_json(cand / "s.json", cand), match)


@pytest.mark.parametrize("content, match", [
    ("a: &x [1, 2]\nb: *x\n", "aliases are not allowed"),
    ("- 1\n- 2\n", "a mapping at the top level"),
    ("when: 2026-12-02\n", "not plain data"),
    ("lr: .inf\n", "not a finite number"),
    ("1: one\n", "not a string"),
])
def test_a_recipe_that_is_not_plain_data_is_refused(box, content, match):
    cand, _ = box
    (cand / RECIPE_FILE).write_text(content)
    fails_fast(lambda: read_yaml_mapping(cand / RECIPE_FILE, cand), match)


def test_a_recipe_linked_to_the_leaderboard_is_never_read(box):
    sandbox, secret = box
    os.symlink(secret, sandbox / RECIPE_FILE)
    fails_fast(lambda: load_recipe(sandbox), "symbolic link")


def manifest() -> CandidateManifest:
    return CandidateManifest(round=0, candidate=1, name="cand-01", role="worker", seed=1, axis="mixture",
                             status="trained")


def eval_record(step: int = 24) -> dict:
    return {"schema": "hpc_aevo.eval_result", "version": 1, "split": "dev", "selection_rule": "best_dev",
            "selected_step": step, "examples_per_domain": {"bits": 100}, "wall_s": 1.0,
            "checkpoints": [{"step": 24, "dev": 0.25, "per_domain": {"bits": 0.25}}]}


def evaluate(cand: Path, summary: bytes | None = None, plant=None) -> tuple[CandidateManifest, list[dict]]:
    """record_evaluation over `cand`'s eval.json and train_summary.json; the manifest saved and loaded back."""
    checkpoints = cand / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    if not (cand / EVAL_RESULT).exists():
        (cand / EVAL_RESULT).write_text(json.dumps(eval_record()))
    if summary is not None:
        (checkpoints / TRAIN_SUMMARY).write_bytes(summary)
    if plant is not None:
        plant(checkpoints / TRAIN_SUMMARY)
    m, trace = manifest(), Trace(cand / "trace.jsonl")
    within(10, lambda: record_evaluation(m, cand / EVAL_RESULT, checkpoints, trace), "record_evaluation")
    m.save(cand / "manifest.json")
    return CandidateManifest.load(cand / "manifest.json"), trace.events()


def test_a_good_summary_fills_the_manifest(box):
    cand, _ = box
    m, _ = evaluate(cand, b'{"steps": 24, "final_loss": 2.5, "wall_s": 9.0, "history": []}')
    assert m.status == "evaluated" and (m.measured.train_steps, m.measured.final_loss) == (24, 2.5)
    moe = b'{"steps": 24, "final_loss": 2.5, "expert_load": [[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.3, 0.2]]}'
    m, _ = evaluate(cand, moe)
    assert m.status == "evaluated" and m.measured.expert_load == [[0.5, 0.5, 0, 0], [0.25, 0.25, 0.3, 0.2]]


@pytest.mark.parametrize("summary, plant, match", [
    (b"\xff\xfe", None, "not UTF-8"),
    (b"[1, 2]", None, "expected a JSON object"),
    (b'{"final_loss": "low"}', None, "final_loss: expected a finite number or null"),
    (b'{"steps": 2.5}', None, "steps: expected an integer"),
    (b'{"final_loss": 1e400}', None, "not finite"),
    (b'{"expert_load": [[0.5, "half"]]}', None, "expert_load[0][1]: expected a finite number"),
    (b'{"expert_load": [0.5, 0.5]}', None, "expert_load[0]: expected a list"),
    (b'{"expert_load": [[1.5, -0.5]]}', None, "expert_load[0]: expected each expert's share of the routed tokens (0 to 1)"),
    (b'{"expert_load": [[1.0]]}', None, "at least 2 experts"),
    (None, os.mkfifo, "a FIFO"),
    (None, lambda p: os.symlink("/dev/zero", p), "symbolic link"),
])
def test_a_bad_summary_fails_the_candidate_not_the_campaign(box, summary, plant, match):
    cand, _ = box
    m, events = evaluate(cand, summary, plant)
    assert m.status == "failed" and match in m.failure, m.failure
    assert [e["event"] for e in events] == ["evaluation-invalid"] and match in events[0]["error"]


def test_an_eval_record_linked_outside_or_naming_no_checkpoint_fails_the_candidate(box):
    cand, secret = box
    os.symlink(secret, cand / EVAL_RESULT)
    m, _ = evaluate(cand)
    assert m.status == "failed" and "symbolic link" in m.failure
    os.unlink(cand / EVAL_RESULT)
    (cand / EVAL_RESULT).write_text(json.dumps(eval_record(step=7)))
    m, _ = evaluate(cand)
    assert m.status == "failed" and "no record of the selected step 7" in m.failure


def test_a_record_of_the_wrong_type_is_never_written(tmp_path):
    m = manifest()
    m.measured.final_loss = "low"
    with pytest.raises(RecordError, match="measured.final_loss: expected a finite number or null"):
        m.save(tmp_path / "manifest.json")
    m.measured.final_loss = float("nan")
    with pytest.raises(RecordError, match="refusing to write hpc_aevo.candidate_manifest"):
        m.save(tmp_path / "manifest.json")
    assert not (tmp_path / "manifest.json").exists()


def job(tmp_path: Path) -> JobSpec:
    sandbox, jobs = tmp_path / "sandbox", tmp_path / "jobs"
    sandbox.mkdir()
    jobs.mkdir()
    return JobSpec(key="r000/cand-01", attempt=1, sandbox=str(sandbox), evaluator_dir=str(tmp_path / "default"),
                   checkpoints=str(tmp_path / "checkpoints"), eval_result=str(tmp_path / EVAL_RESULT),
                   jobs_dir=str(jobs), stages=("train",), confine="off")


def test_a_job_refuses_a_recipe_that_is_a_link_a_fifo_or_missing(tmp_path, box):
    _, secret = box
    spec = job(tmp_path)
    os.symlink(secret, Path(spec.sandbox) / RECIPE_FILE)
    outcome = run_job(spec)
    assert outcome.state == "FAILED" and "train not started" in outcome.message and "symbolic link" in outcome.message
    os.unlink(Path(spec.sandbox) / RECIPE_FILE)
    os.mkfifo(Path(spec.sandbox) / RECIPE_FILE)
    spec.attempt = 2
    outcome = within(10, lambda: run_job(spec), "run_job")
    assert outcome.state == "FAILED" and "a FIFO" in outcome.message
    os.unlink(Path(spec.sandbox) / RECIPE_FILE)
    spec.attempt = 3
    outcome = run_job(spec)  # removed: a failed stage with its outcome recorded, not a crashed job
    assert outcome.state == "FAILED" and outcome.message.endswith(f"{RECIPE_FILE}: missing"), outcome.message
    assert secret.read_text() == SECRET


def test_a_planted_recipe_marker_link_is_replaced_not_written_through(tmp_path, box):
    """The trainer can write its checkpoints directory: a marker it turned into a link to a file of the
    daemon's is neither read (the checkpoints start afresh) nor written through."""
    _, secret = box
    spec = job(tmp_path)
    (Path(spec.sandbox) / RECIPE_FILE).write_text("seed: 1\n")
    checkpoints = Path(spec.checkpoints)
    checkpoints.mkdir()
    (checkpoints / "ckpt-000024.pt").write_text("stale")
    os.symlink(secret, checkpoints / RECIPE_MARKER)
    _recipe_guard(spec)
    assert secret.read_text() == SECRET
    assert not (checkpoints / RECIPE_MARKER).is_symlink() and not (checkpoints / "ckpt-000024.pt").exists()


def test_a_charge_of_the_wrong_type_never_enters_the_compute_ledger():
    from hpc_aevo.state.ledger import Ledger, TaskCharge

    ledger = Ledger()
    with pytest.raises(RecordError, match="refusing to charge r000/cand-01#1"):
        ledger.add(TaskCharge("r000/cand-01", 1, "train", "7_1", "COMPLETED", "12 s", 1, 0, 0.003, 0.0))
    assert ledger.charges == {}


def test_a_recipe_removed_in_a_debug_turn_is_traced_not_a_daemon_crash(tmp_path, monkeypatch):
    """The worker's debug session deleted recipe.yaml: the daemon records the turn and goes on (the retry's
    job then fails on the missing recipe), as for a recipe left as a link."""
    from tiny_campaign import write_campaign

    from hpc_aevo.campaign.config import load_campaign
    from hpc_aevo.jobs.launcher import JobFailure
    from hpc_aevo.loop.daemon import Daemon
    from hpc_aevo.search.policy import Policy

    daemon = Daemon(load_campaign(write_campaign(tmp_path)))
    record = daemon.prepare()
    daemon.phase_fork(0, Policy.load(daemon.tree.policy(0)), record)
    cand = daemon.candidate(0, 1)
    monkeypatch.setattr(daemon.roles, "debug", lambda task, reason: (task.sandbox / RECIPE_FILE).unlink())
    manifest = cand.manifest()
    daemon._debug_turn(cand, manifest, "train exited 1", JobFailure(1, "FAILED", "", "", [], ""))
    assert manifest.proposal.observed_failure_modes == ["train exited 1"]
    assert [e["event"] for e in cand.trace().events()][-1] == "recipe-unreadable"
