"""A candidate's job runs the worker's code confined: it cannot read the held-out split, forge a
score, touch default/ or another candidate, or read the agents' keys; the evaluator never unpickles
a checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import dataclasses
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from host import require
from tiny_campaign import REPO, tiny_recipe

from hpc_aevo.sandbox import bwrap, pids
from hpc_aevo.loop.fork import fork_candidate
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.spec import JobOutcome
from hpc_aevo.campaign.config import Leaderboard
from hpc_aevo.scoring.adapters import JsonlHeldout
from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardLedger, heldout_params
from hpc_aevo.scoring.score_stage import ScoreTrack, choose, score_spec
from hpc_aevo.state.contract import SCORE_RESULT
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.jobs.body import run_job
from hpc_aevo.state.tree import StateTree
from hpc_aevo.loop.install import install_substrate
from hpc_aevo.cli.status import unconfined_stage_runs


SECRET = "sk-ant-test-not-a-real-key"

# The worker's train.py: every attempt to reach outside its sandbox and checkpoints, with what happened.
ATTACK = r'''
import json, os, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1])
root, me, other = Path(os.environ["T_ROOT"]), Path(os.environ["T_ME"]), Path(os.environ["T_OTHER"])
found = {}
def attempt(name, action):
    try:
        found[name] = repr(action())[:200]
    except Exception as exc:
        found[name] = f"refused: {type(exc).__name__}"
attempt("read heldout", lambda: (root / "leaderboard" / "heldout.jsonl").read_text())
attempt("write ledger", lambda: (root / "leaderboard" / "ledger.json").write_text("{}"))
attempt("forge manifest", lambda: (me / "manifest.json").write_text(json.dumps({"measured": {"dev": 1.0}})))
attempt("write eval.json", lambda: (me / "eval.json").write_text("{}"))
attempt("edit evaluator", lambda: (root / "default" / "evaluate.py").write_text("print(1)"))
attempt("write other sandbox", lambda: (other / "sandbox" / "train.py").write_text("x"))
attempt("write other checkpoints", lambda: (other / "checkpoints" / "ckpt-000001.pt").write_bytes(b"x"))
attempt("fake agent record", lambda: (me.parent / "agents" / "cand-02.worker.9.json").write_text("{}"))
attempt("write own sandbox", lambda: Path("recipe.yaml").write_text("x"))
attempt("read campaign yaml", lambda: Path(os.environ["T_YAML"]).read_text())
attempt("read munge key", lambda: Path("/etc/munge/munge.key").read_bytes())
attempt("read keys dir", lambda: os.listdir(os.environ["T_KEYS"]))
attempt("kernel knob", lambda: open("/proc/sys/kernel/core_pattern", "a").close())  # opened, nothing written
found["env key"] = [k for k in os.environ if k.startswith(("ANTHROPIC_", "CLAUDE_"))]
leaks = []
for pid in os.listdir("/proc"):
    try:
        if b"ANTHROPIC_API_KEY=" in Path(f"/proc/{pid}/environ").read_bytes():  # the daemon's, or the job's
            leaks.append(pid)
    except (OSError, ValueError):
        pass
found["proc environ"] = leaks
out.mkdir(parents=True, exist_ok=True)
(out / "attacks.json").write_text(json.dumps(found))
'''


@pytest.fixture
def tree(tmp_path) -> StateTree:
    """A state tree with the real substrate installed, a leaderboard, and two forked candidates."""
    tree = StateTree(tmp_path / "state")
    manifest = install_substrate(REPO / "substrate", tree.default_dir, tree.substrate_manifest)
    tree.leaderboard_dir.mkdir(parents=True)
    (tree.leaderboard_dir / "heldout.jsonl").write_text('{"prompt": "held", "answer": "out"}\n')
    (tree.leaderboard_dir / "ledger.json").write_text('{"submissions": []}\n')
    for c in (1, 2):
        fork_candidate(tree.default_dir, manifest, tree.sandbox(0, c), tiny_recipe())
        tree.manifest(0, c).write_text('{"measured": {}}\n')
        tree.checkpoints(0, c).mkdir()
        tree.jobs(0, c).mkdir()
    (tree.checkpoints(0, 2) / "ckpt-000001.pt").write_bytes(b"the other candidate's")
    (tree.round_dir(0) / "agents").mkdir()
    (tmp_path / "campaign.yaml").write_text("name: tiny\n")
    return tree


def snapshot(root: Path, skip: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(p == s or s in p.parents for s in skip)}


def test_worker_code_in_the_train_stage_reaches_nothing_outside_its_checkpoints(tree, tmp_path, monkeypatch,
                                                                              job_sandbox):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "api-key").write_text(SECRET)
    monkeypatch.setattr("tempfile.tempdir", str(keys.parent))  # the host's temp dir, as the agents' keys_dir() sees it
    me = tree.candidate_dir(0, 1)
    for key, value in {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": SECRET,
                       "T_ROOT": str(tree.root), "T_ME": str(me), "T_OTHER": str(tree.candidate_dir(0, 2)),
                       "T_YAML": str(tmp_path / "campaign.yaml"), "T_KEYS": str(keys)}.items():
        monkeypatch.setenv(key, value)
    (tree.sandbox(0, 1) / "train.py").chmod(0o644)
    (tree.sandbox(0, 1) / "train.py").write_text(ATTACK)
    before = snapshot(tree.root, [tree.checkpoints(0, 1), tree.jobs(0, 1)])
    spec = Candidate(0, 1, tree, hidden=(str(tmp_path / "campaign.yaml"),)).spec(1).stage("train")

    outcome = run_job(spec)

    log = spec.log_path("train").read_text()
    assert outcome.state == "COMPLETED", log + outcome.message
    assert outcome.stages[0].confined and "confined by bubblewrap" in log.splitlines()[0]
    found = json.loads((tree.checkpoints(0, 1) / "attacks.json").read_text())
    refused = {name: result for name, result in found.items() if isinstance(result, str)}
    assert all(result.startswith("refused") for result in refused.values()), found
    assert found["env key"] == [] and found["proc environ"] == [], found
    assert snapshot(tree.root, [tree.checkpoints(0, 1), tree.jobs(0, 1)]) == before
    assert JobOutcome.load(spec.outcome_path()).stages[0].confined


BOMB = """\
import os, sys
n = 0
for _ in range(5000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "{token}"])
    n += 1
print("forked", n)
"""


def test_a_fork_bomb_in_the_train_stage_stops_at_the_cap_and_nothing_outlives_the_stage(tree, job_sandbox):
    token = str(int.from_bytes(os.urandom(2), "big") + 800_000)  # its sleeps sleep this long: their mark
    probe = pids.Cap.create(f"probe-{token}", 64)
    probe.close()
    if probe.path is None:  # a host whose cgroups the job cannot write: the bomb runs only capped
        pytest.skip(probe.why)
    (tree.sandbox(0, 1) / "train.py").chmod(0o644)
    (tree.sandbox(0, 1) / "train.py").write_text(BOMB.format(token=token))
    spec = Candidate(0, 1, tree, max_processes=64).spec(1).stage("train")
    outcome = run_job(spec)
    log = spec.log_path("train").read_text()
    assert outcome.state == "COMPLETED" and "at most 64 processes" in log.splitlines()[0], log
    assert 0 < int(log.split("forked ")[1].split()[0]) < 64, log
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if f"sleep\0{token}".encode() in _read(p)]
    assert not list(probe.path.parent.glob(f"{pids.PREFIX}r000-cand-01-1-train-*"))  # its cgroup is gone


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_without_bubblewrap_the_stage_runs_unconfined_and_says_so(tree, monkeypatch):
    monkeypatch.setattr(bwrap, "available", lambda *flags: False)
    (tree.sandbox(0, 1) / "train.py").chmod(0o644)
    (tree.sandbox(0, 1) / "train.py").write_text("import os; assert 'ANTHROPIC_API_KEY' not in os.environ\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    spec = Candidate(0, 1, tree).spec(1).stage("train")
    outcome = run_job(spec)
    assert outcome.state == "COMPLETED" and not outcome.stages[0].confined
    assert "UNCONFINED: bubblewrap cannot run" in spec.log_path("train").read_text()
    assert unconfined_stage_runs(tree, 0, 1) == 1  # what `status` shows for the round

    required = Candidate(0, 2, tree, confine="required").spec(1).stage("train")
    outcome = run_job(required)
    assert outcome.state == "FAILED" and "scheduler.confine_jobs is required" in outcome.message


@pytest.mark.slow
def test_a_normal_candidate_trains_evaluates_and_is_scored_confined(tree, job_sandbox):
    spec = Candidate(0, 1, tree).spec(1)
    outcome = run_job(spec)
    assert outcome.state == "COMPLETED", spec.log_path("train").read_text()[-2000:] + outcome.message
    assert [(s.stage, s.confined) for s in outcome.stages] == [("train", True), ("eval", True)]
    body = json.loads(tree.eval_result(0, 1).read_text())
    assert body["schema"] == "hpc_aevo.eval_result"
    assert [c["step"] for c in body["checkpoints"]] == [tiny_recipe()["optim"]["steps"]]

    # Its leaderboard score: the score job scores the selected export in its own sandbox; the daemon records it.
    cand, adapter = Candidate(0, 1, tree), HeldoutPuzzles(tree, quota=1, seed=0)
    sys.path.insert(0, str(tree.default_dir))
    import puzzles

    params = heldout_params(puzzles)
    rows = [row for domain in puzzles.DOMAINS for row in puzzles.generate(domain, 2, 7, **params[domain])]
    tree.heldout_split.write_text("".join(json.dumps(row) + "\n" for row in rows))
    LeaderboardLedger(quota=1, examples_per_domain={d: 2 for d in puzzles.DOMAINS}).save(tree.leaderboard_ledger)

    def scored_through(adapter, attempt: int) -> CandidateManifest:
        """The candidate chosen, its score job run confined, its result checked and recorded by `adapter`."""
        manifest = CandidateManifest(round=0, candidate=1, name="cand-01", role="anchor", seed=1, axis=None,
                                     status="evaluated")
        [manifest] = choose([cand], [manifest], 1, adapter)
        manifest.scoring.attempts = attempt
        track = ScoreTrack(adapter)
        scoring = run_job(track.spec(cand, manifest, attempt))
        assert [(s.stage, s.confined) for s in scoring.stages] == [("score", True)], scoring.message
        track.completed(cand, manifest, scoring)
        assert manifest.scoring.status == "scored", manifest.scoring
        return manifest

    manifest = scored_through(adapter, 1)
    assert 0.0 <= manifest.measured.leaderboard <= 1.0
    assert adapter.ledger().submissions[0].checkpoint_sha256 == body["selected_checkpoint"]["sha256"]
    puzzle_scores = (manifest.measured.leaderboard, manifest.measured.leaderboard_per_domain)

    # The same items as a team's JSONL (rule exact): the score job answers the prompts alone, the daemon
    # scores the answers, and the numbers are the puzzle evaluator's.
    source = tree.root.parent / "team-heldout.jsonl"
    source.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"], "subset": r["domain"]}) + "\n"
                              for r in rows))
    tree.leaderboard_ledger.unlink()
    jsonl = JsonlHeldout(tree, 1, Leaderboard(quota=1, per_round=1, adapter="jsonl", heldout=str(source)), source)
    jsonl.prepare()
    assert "answer" not in jsonl.prompts_file.read_text()
    manifest = scored_through(jsonl, 2)
    assert (manifest.measured.leaderboard, manifest.measured.leaderboard_per_domain) == puzzle_scores


# The score stage's evaluator stand-in: every attempt to reach past the one checkpoint, the split and its output.
PROBE = r'''
import json, os, socket, sys
from pathlib import Path
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
checkpoint, root, port = Path(args["--checkpoint"]), Path(os.environ["T_ROOT"]), int(os.environ["T_PORT"])
found = {}
def attempt(name, action):
    try:
        found[name] = repr(action())[:200]
    except Exception as exc:
        found[name] = f"refused: {type(exc).__name__}"
attempt("read its checkpoint", lambda: checkpoint.read_bytes())
attempt("read the split", lambda: Path(args["--split-file"]).read_text())
attempt("read the recipe", lambda: Path(args["--recipe"]).read_text())
attempt("read a sibling checkpoint", lambda: (checkpoint.parent / "ckpt-000012.safetensors").read_bytes())
attempt("list its checkpoints", lambda: os.listdir(checkpoint.parent))
attempt("read eval.json", lambda: (root / "rounds/r000/cand-01/eval.json").read_text())
attempt("read another candidate", lambda: (root / "rounds/r000/cand-02/checkpoints/ckpt-000001.pt").read_bytes())
attempt("read the ledger", lambda: (root / "leaderboard/ledger.json").read_text())
attempt("write the ledger", lambda: (root / "leaderboard/ledger.json").write_text("{}"))
attempt("write its checkpoint", lambda: checkpoint.write_bytes(b"x"))
attempt("write the split", lambda: Path(args["--split-file"]).write_text("x"))
attempt("forge a manifest", lambda: (root / "rounds/r000/cand-01/manifest.json").write_text("{}"))
attempt("read munge key", lambda: Path("/etc/munge/munge.key").read_bytes())
attempt("connect to the host", lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
Path(args["--out"]).write_text(json.dumps(found))
'''


def test_the_score_stage_sees_one_checkpoint_the_split_and_its_output_and_no_network(tree, tmp_path, monkeypatch,
                                                                                      job_sandbox):
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "evaluate.py").write_text(PROBE)
    export = tree.checkpoints(0, 1) / "export"
    export.mkdir()
    for step in (12, 24):
        (export / f"ckpt-{step:06d}.safetensors").write_bytes(b"weights %d" % step)
    (tree.candidate_dir(0, 1) / "eval.json").write_text("{}")
    listener = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("T_ROOT", str(tree.root))
    monkeypatch.setenv("T_PORT", str(listener.getsockname()[1]))
    before = snapshot(tree.root, [tree.jobs(0, 1)])
    spec = score_spec(Candidate(0, 1, tree), 1, None)
    checkpoint = export / "ckpt-000024.safetensors"
    spec.score = HeldoutPuzzles(tree, 1, 0).score_input(checkpoint, hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
                                                        tree.sandbox(0, 1) / "recipe.yaml", spec.files.out("score"))
    spec = dataclasses.replace(spec, evaluator_dir=str(probe))

    outcome = run_job(spec)
    listener.close()

    assert outcome.state == "COMPLETED" and outcome.stages[0].confined, outcome.message
    found = json.loads((spec.files.out("score") / SCORE_RESULT).read_text())
    allowed = {"read its checkpoint", "read the split", "read the recipe"}
    assert all(not found[name].startswith("refused") for name in allowed), found
    assert found.pop("list its checkpoints") == "['ckpt-000024.safetensors']", found  # the one file, no sibling
    assert all(result.startswith("refused") for name, result in found.items() if name not in allowed), found
    assert snapshot(tree.root, [tree.jobs(0, 1)]) == before


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_the_evaluator_never_unpickles_a_checkpoint(tree, tmp_path):
    """The installed evaluator reads only export/*.safetensors: a trainer's .pt carrying a payload is not
    even opened (tests/test_checkpoint_payloads.py has the other payloads)."""
    marker, checkpoints = tmp_path / "payload-ran", tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"step": 12, "model": {}, "model_config": tiny_recipe()["model"], "payload": Payload(marker)},
               checkpoints / "ckpt-000012.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    done = subprocess.run([sys.executable, "evaluate.py", "--checkpoints", str(checkpoints), "--recipe",
                           str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "eval.json")],
                          cwd=tree.default_dir, capture_output=True, text=True)
    assert done.returncode != 0 and "no exported checkpoints" in done.stderr.splitlines()[-1], done.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "eval.json").exists()


def test_the_campaign_key_is_checked(tmp_path):
    from tiny_campaign import write_campaign

    from hpc_aevo.campaign.reader import ConfigError
    from hpc_aevo.campaign.config import load_campaign

    path = write_campaign(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["scheduler"]["confine_jobs"] = "sometimes"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="confine_jobs"):
        load_campaign(path)


def test_with_agents_jobs_are_confined_unless_a_person_says_otherwise(tmp_path):
    from tiny_campaign import write_campaign

    from hpc_aevo.campaign.config import load_campaign

    assert load_campaign(write_campaign(tmp_path / "a")).confine_jobs == "auto"  # the offline scripted workers
    assert load_campaign(write_campaign(tmp_path / "b", agents={"backend": "claude"})).confine_jobs == "required"
    path = write_campaign(tmp_path / "c", agents={"backend": "claude"})
    doc = yaml.safe_load(path.read_text())
    doc["scheduler"]["confine_jobs"] = "auto"
    path.write_text(yaml.safe_dump(doc))
    assert load_campaign(path).confine_jobs == "auto"


def test_a_python_environment_no_stage_can_see_is_refused_before_anything_is_submitted(tmp_path, monkeypatch):
    """Every stage hides /tmp and the state tree: an interpreter there would make each confined stage die
    at exec, and each death would be taken for its worker's failure."""
    from tiny_campaign import write_campaign

    from hpc_aevo.campaign.config import load_campaign
    from hpc_aevo.loop.daemon import CampaignStopped, Daemon
    from hpc_aevo.sandbox.jobs import preflight

    require(bwrap.available(), "needs bubblewrap")
    assert preflight([str(tmp_path / "state")], "required") is None  # this interpreter is visible
    venv = Path(tempfile.mkdtemp(prefix="hpc-aevo-venv-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
        problem = preflight([str(tmp_path / "state")], "required")
        assert problem and "cannot start its Python" in problem and "\n" not in problem, problem
        daemon = Daemon(load_campaign(write_campaign(tmp_path, agents={"backend": "scripted"})))
        with pytest.raises(CampaignStopped, match="install the environment elsewhere"):
            daemon.prepare()
        assert not daemon.tree.policy(0).exists()
    finally:
        shutil.rmtree(venv)


def test_each_round_says_first_that_its_jobs_run_unconfined(tmp_path, monkeypatch):
    from tiny_campaign import write_campaign

    from hpc_aevo.campaign.config import load_campaign
    from hpc_aevo.loop.daemon import PHASES, Daemon

    monkeypatch.setattr(bwrap, "available", lambda *flags: False)
    lines: list[str] = []
    daemon = Daemon(load_campaign(write_campaign(tmp_path)), print_line=lines.append)
    record = daemon.prepare()
    for phase in PHASES:
        monkeypatch.setattr(daemon, f"phase_{phase}", lambda *args: "skipped")
    daemon.run_round(0, record)
    assert lines[0] == ("[tiny r000] jobs run UNCONFINED: bubblewrap cannot run on "
                        f"{socket.gethostname()} and scheduler.confine_jobs is auto")


HOSTILE = '''import os, sys
out = sys.argv[sys.argv.index("--out") + 1]
os.mkfifo(os.path.join(out, "train_summary.json"))  # a summary that never answers
marker = os.path.join(out, ".recipe.sha256")
if os.path.lexists(marker):
    os.unlink(marker)
os.symlink("/etc/passwd", marker)  # a recipe marker to write the next attempt's hash through
'''


@pytest.mark.slow
def test_what_a_hostile_trainer_leaves_fails_its_candidate_and_touches_nothing(tree):
    """Real stages, a worker's train.py that leaves a FIFO for a summary and a link for the recipe marker:
    the daemon's reading fails the candidate without blocking, and a retry neither reads nor writes
    through the link; nothing outside the candidate's checkpoints changes."""
    from hpc_aevo.scoring.results import record_evaluation
    from hpc_aevo.state.manifest import CandidateManifest
    from hpc_aevo.state.trace import Trace
    from hpc_aevo.state.tree import RECIPE_MARKER

    (tree.sandbox(0, 1) / "train.py").chmod(0o644)
    (tree.sandbox(0, 1) / "train.py").write_text(HOSTILE.replace(".recipe.sha256", RECIPE_MARKER))
    mine = [tree.checkpoints(0, 1), tree.jobs(0, 1), tree.eval_result(0, 1), tree.sandbox(0, 1) / "train.py",
            tree.trace(0, 1), tree.trace(0, 1).with_name("trace.jsonl.lock")]  # what the test itself writes
    before = snapshot(tree.root, mine)
    passwd = Path("/etc/passwd").read_bytes()
    outcome = run_job(Candidate(0, 1, tree).spec(1))
    assert [s.stage for s in outcome.stages][:1] == ["train"], outcome
    manifest = CandidateManifest(round=0, candidate=1, name="cand-01", role="worker", seed=1, axis="mixture",
                                 status="trained")
    record_evaluation(manifest, tree.eval_result(0, 1), tree.checkpoints(0, 1), Trace(tree.trace(0, 1)))
    assert manifest.status == "failed" and "evaluation record unusable" in manifest.failure, manifest.failure
    (tree.sandbox(0, 1) / "train.py").write_text("print('a plain retry')\n")
    retry = run_job(Candidate(0, 1, tree).spec(2).stage("train"))
    assert retry.state == "COMPLETED", retry
    assert not (tree.checkpoints(0, 1) / RECIPE_MARKER).is_symlink() and Path("/etc/passwd").read_bytes() == passwd
    assert snapshot(tree.root, mine) == before
