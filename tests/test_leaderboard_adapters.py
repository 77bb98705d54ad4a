"""A team's own leaderboards: the jsonl adapter's rules and data checks, and the command adapter's site scorer
run for real in the confined score job. (The jsonl adapter's score job, with the real evaluator answering
the prompts, runs in tests/test_job_confinement.py on a trained candidate, beside heldout-puzzles.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from hpc_aevo.campaign.config import Leaderboard, load_campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.body import run_job
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.loop.daemon import Daemon
from hpc_aevo.scoring.adapters import RUNNER, CommandScorer, JsonlHeldout, LmEvalTask, Matcher, make_adapter, read_heldout
from hpc_aevo.scoring.lm_eval_job import JobError, metric_key, summarize
from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardError
from hpc_aevo.scoring.score_stage import ScoreTrack, choose
from hpc_aevo.state.contract import PREDICTIONS
from hpc_aevo.state.manifest import CandidateManifest, ScoreJob
from hpc_aevo.state.tree import StateTree
from tiny_campaign import REPO, write_campaign

ROWS = [{"prompt": "2+2=", "answer": "4", "subset": "math"}, {"prompt": "capital of France?", "answer": "Paris"},
        {"prompt": "3*3=", "answer": 9, "subset": "math"}]


def heldout(tmp_path: Path, rows=ROWS, name="heldout.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("keys, said", [
    ({"adapter": "jsonl"}, "leaderboard.heldout: expected the held-out data's path, with adapter jsonl"),
    ({"adapter": "jsonl", "heldout": "missing.jsonl"}, "leaderboard.heldout: expected an existing file"),
    ({"heldout": "team.jsonl"}, "leaderboard.heldout: expected no such key with adapter heldout-puzzles"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "rule": "regex"}, "leaderboard.pattern: expected a regular expression"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "rule": "regex", "pattern": "####"}, "with a group that captures"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "rule": "regex", "pattern": "(["}, "leaderboard.pattern: expected a regular"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "tolerance": 0.1}, "no tolerance unless rule is numeric"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "rule": "numeric", "tolerance": -1}, "leaderboard.tolerance: expected a number >= 0"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "rule": "fuzzy"}, "leaderboard.rule"),
    ({"adapter": "command", "heldout": "team.jsonl"}, "leaderboard.command: expected the scorer's command line"),
    ({"adapter": "command", "heldout": "team.jsonl", "command": ["score.py", ""]}, "leaderboard.command"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "command": ["x"]}, "leaderboard.command: expected no such key"),
    ({"adapter": "lm-eval"}, "leaderboard.task: expected a built-in task name or (exclusive) task_yaml"),
    ({"adapter": "lm-eval", "task_yaml": "task.yaml", "metric": "exact_match"}, "leaderboard.heldout: expected the data"),
    ({"adapter": "lm-eval", "heldout": "team.jsonl", "metric": "exact_match"}, "leaderboard.task: expected a built-in task"),
    ({"adapter": "lm-eval", "task": "gsm8k", "task_yaml": "task.yaml", "metric": "exact_match"}, "(exclusive) task_yaml"),
    ({"adapter": "lm-eval", "task": "gsm8k; rm", "metric": "exact_match"}, "leaderboard.task: expected an lm-evaluation"),
    ({"adapter": "lm-eval", "task": "gsm8k", "heldout": "team.jsonl", "metric": "exact_match"}, "no heldout with a built-in"),
    ({"adapter": "lm-eval", "task": "gsm8k"}, "leaderboard.metric: expected the lm-eval metric"),
    ({"adapter": "lm-eval", "task": "gsm8k", "metric": "exact match"}, "leaderboard.metric: expected the lm-eval metric"),
    ({"adapter": "lm-eval", "task": "gsm8k", "metric": "exact_match", "limit": 0}, "leaderboard.limit: expected an integer >= 1"),
    ({"adapter": "lm-eval", "heldout": "team.jsonl", "task_yaml": "missing.yaml", "metric": "exact_match"},
     "leaderboard.task_yaml: expected an existing file"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "metric": "exact_match"}, "leaderboard.metric: expected no such key"),
    ({"adapter": "lm-eval-harness"}, "leaderboard.adapter"),
    ({"examples_per_domain": 5}, "leaderboard.examples_per_domain: expected an integer >= 10"),
    ({"examples_per_domain": 20_000}, "leaderboard.examples_per_domain: expected an integer <= 10000"),
    ({"examples_per_domain": "400"}, "leaderboard.examples_per_domain"),
    ({"adapter": "jsonl", "heldout": "team.jsonl", "examples_per_domain": 400},
     "leaderboard.examples_per_domain: expected no such key with adapter jsonl"),
])
def test_bad_adapter_keys_are_one_line_naming_the_file_and_the_key(tmp_path, keys, said):
    heldout(tmp_path, name="team.jsonl")
    campaign = write_campaign(tmp_path)
    data = yaml.safe_load(campaign.read_text())
    data["leaderboard"].update(keys)
    campaign.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_campaign(campaign)
    assert said in str(info.value) and str(campaign) in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("line, said", [
    ("not json", "line 2: expected a JSON object"),
    ('{"prompt": "x"}', "line 2: expected an object of"),
    ('{"prompt": "x", "answer": "y", "extra": 1}', "line 2: expected an object of"),
    ('{"prompt": "x", "answer": true}', "line 2: expected an object of"),
    ('{"prompt": "x", "answer": "y", "subset": "a b"}', "line 2.subset: expected a name"),
])
def test_a_bad_held_out_row_is_one_line_with_its_line_number(tmp_path, line, said):
    path = tmp_path / "team.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=said.replace(".", r"\.")):
        read_heldout(path)


def test_the_rules_match_as_documented():
    def match(rule: str, output: str, answer: str, **keys) -> bool:
        return Matcher(Leaderboard(1, 1, "jsonl", "x", rule, **keys))(output, answer)

    assert match("exact", " Paris\n", "Paris") and not match("exact", "paris", "Paris")
    assert match("normalized", "  the  ANSWER: paris!", "The answer paris") and not match("normalized", "Lyon", "Paris")
    assert match("numeric", "It is 1,234.5 dollars", "1234.5") and match("numeric", "0.3333", "0.33333", tolerance=1e-3)
    assert not match("numeric", "about 12", "13") and not match("numeric", "none", "13")
    gsm = r"#### (-?[0-9.,]+)"  # GSM8K: the answer after ####, in the output and in the row's answer
    assert match("regex", "so she has 18.\n#### 18", "Janet sells ... #### 18", pattern=gsm)
    assert match("regex", "#### 18", "18", pattern=gsm)  # an answer the pattern does not match is taken whole
    assert not match("regex", "18", "#### 18", pattern=gsm)


def test_jsonl_answers_stay_with_the_daemon_and_are_scored_by_subset(tmp_path):
    tree = StateTree(tmp_path / "state")
    source = heldout(tmp_path)
    adapter = JsonlHeldout(tree, 3, Leaderboard(3, 1, "jsonl", str(source), "numeric"), source)
    adapter.prepare()
    assert [json.loads(line) for line in adapter.prompts_file.read_text().splitlines()] == [
        {"prompt": r["prompt"]} for r in ROWS]
    assert adapter.ledger().examples_per_domain == {"all": 1, "math": 2}
    out = tmp_path / "out"
    out.mkdir()
    body = {"schema": "hpc_aevo.predictions", "version": 1, "checkpoint_sha256": "ab" * 32, "step": 24}
    (out / PREDICTIONS).write_text(json.dumps({**body, "outputs": ["4", "Lyon", "nine"]}))
    entry = adapter.record("r000/cand-00", out, "export/ckpt-000024.safetensors", "ab" * 32, 24)
    assert (entry.score, entry.per_domain) == (pytest.approx(1 / 3), {"all": 0.0, "math": 0.5})
    for change, said in (({"step": 12}, "step 12"), ({"outputs": ["4"]}, "1 answers for 3 prompts")):
        (out / PREDICTIONS).write_text(json.dumps({**body, "outputs": ["4", "Lyon", "9"], **change}))
        with pytest.raises(LeaderboardError, match=said):
            adapter.record("r000/cand-01", out, "export/ckpt-000024.safetensors", "ab" * 32, 24)


SCORER = r'''
import argparse, json, os, pathlib
parser = argparse.ArgumentParser()
for key in ("--checkpoint", "--recipe", "--data", "--out"):
    parser.add_argument(key)
args = parser.parse_args()
rows = [json.loads(line) for line in open(args.data)]
assert pathlib.Path(args.checkpoint).read_bytes() == b"weights" and pathlib.Path(args.recipe).is_file()
try:
    open(pathlib.Path(args.checkpoint).parent.parent.parent / "manifest.json").read()
    seen = "manifest"
except OSError:
    seen = "nothing else"
mode = os.environ.get("SCORER_MODE", "good")
body = {"score": 0.75, "per_subset": {"math": 0.5, "all": 1.0}}
if mode == "too high":
    body["score"] = 1.5
if mode == "extra key":
    body["note"] = seen
if mode == "good":
    assert seen == "nothing else", seen
json.dump(body, open(args.out, "w"))
'''


@pytest.mark.parametrize("mode, said", [("good", None), ("too high", "a score outside [0, 1]"),
                                        ("extra key", "expected {\"score\"")])
def test_the_site_scorer_runs_confined_in_the_score_job(tmp_path, monkeypatch, job_sandbox, mode, said):
    tree = StateTree(tmp_path / "state")
    tree.default_dir.mkdir(parents=True)  # the frozen evaluator's place, which every score job sees
    cand = Candidate(0, 0, tree)
    export = tree.checkpoints(0, 0) / "export" / "ckpt-000024.safetensors"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"weights")
    tree.sandbox(0, 0).mkdir(parents=True)
    (tree.sandbox(0, 0) / "recipe.yaml").write_text("seed: 0\n")
    sha = hashlib.sha256(b"weights").hexdigest()
    tree.eval_result(0, 0).write_text(json.dumps({
        "schema": "hpc_aevo.eval_result", "version": 2, "split": "dev", "selection_rule": "best_dev", "selected_step": 24,
        "examples_per_domain": {"all": 1}, "checkpoints": [{"step": 24, "dev": 0.5, "per_domain": {"all": 0.5}}],
        "selected_checkpoint": {"path": "export/ckpt-000024.safetensors", "sha256": sha, "step": 24}}))
    manifest = CandidateManifest(round=0, candidate=0, name="cand-00", role="anchor", seed=0, axis=None,
                                 status="evaluated")
    cand.save(manifest)
    (tmp_path / "scorer.py").write_text(SCORER)
    source = heldout(tmp_path)
    config = Leaderboard(2, 1, "command", str(source), command=[sys.executable, str(tmp_path / "scorer.py")])
    adapter = CommandScorer(tree, 2, config, source)
    adapter.prepare()
    monkeypatch.setenv("SCORER_MODE", mode)
    [manifest] = choose([cand], [manifest], 1, adapter)
    manifest.scoring.attempts = 1
    track = ScoreTrack(adapter)
    outcome = run_job(track.spec(cand, manifest, 1))
    assert outcome.state == "COMPLETED" and outcome.stages[0].confined, outcome.message
    line = track.completed(cand, manifest, outcome)
    if said is None:
        assert (manifest.measured.leaderboard, manifest.measured.leaderboard_per_domain) == (0.75, {"all": 1.0, "math": 0.5})
        assert adapter.ledger().examples_per_domain == {"all": 0, "math": 0}  # the subsets the first score named
    else:
        assert manifest.scoring.status == "failed" and said in manifest.scoring.failure, line
        assert adapter.ledger().submissions == []


def test_a_checkpoint_changed_after_its_evaluation_is_not_scored(tmp_path):
    """The job checks the bytes before any scorer starts (a site's scorer cannot be asked to)."""
    tree = StateTree(tmp_path / "state")
    export = tree.checkpoints(0, 0) / "export" / "ckpt-000024.safetensors"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"other weights")
    tree.sandbox(0, 0).mkdir(parents=True)
    (tree.sandbox(0, 0) / "recipe.yaml").write_text("seed: 0\n")
    source = heldout(tmp_path)
    marker = tmp_path / "scorer-ran"
    config = Leaderboard(1, 1, "command", str(source), command=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    adapter = CommandScorer(tree, 1, config, source)
    manifest = CandidateManifest(round=0, candidate=0, name="cand-00", role="anchor", seed=0, axis=None)
    manifest.scoring = ScoreJob("export/ckpt-000024.safetensors", hashlib.sha256(b"weights").hexdigest(), 24,
                                "submitted", 1)
    outcome = run_job(ScoreTrack(adapter).spec(Candidate(0, 0, tree), manifest, 1))
    assert outcome.state == "FAILED" and "score not started" in outcome.message and "sha256 is" in outcome.message
    assert not marker.exists()


def test_lm_eval_results_become_a_score_and_subsets():
    """The runner's reading of the harness's results (tests/test_lm_eval_adapter.py runs the harness itself)."""
    results = {"results": {"team": {"alias": "team"}, "team::bits": {"exact_match,none": 1.0, "exact_match_stderr,none": 0},
                           "team::base": {"exact_match,none": 0.25}},
               "group_subtasks": {"team": ["team::bits", "team::base"]},
               "n-samples": {"team::bits": {"effective": 1}, "team::base": {"effective": 4}}}
    assert summarize(results, "exact_match") == (pytest.approx(0.4), {"base": 0.25, "bits": 1.0})
    assert summarize(results, "exact_match,none")[0] == pytest.approx(0.4)
    filtered = {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.75}
    assert metric_key(filtered, "exact_match,flexible-extract", "gsm8k") == "exact_match,flexible-extract"
    with pytest.raises(JobError, match=r"task gsm8k: metric 'exact_match' is not one of its results \['exact_match,"):
        metric_key(filtered, "exact_match", "gsm8k")
    with pytest.raises(JobError, match="metric 'acc' is not one of its results"):
        summarize(results, "acc")


def test_the_campaign_builds_its_adapter(tmp_path):
    source = heldout(tmp_path, name="team.jsonl")
    campaign = write_campaign(tmp_path)
    data = yaml.safe_load(campaign.read_text())
    data["leaderboard"].update(adapter="jsonl", heldout="team.jsonl", rule="normalized")
    campaign.write_text(yaml.safe_dump(data))
    adapter = make_adapter(load_campaign(campaign), StateTree(tmp_path / "state"))
    assert isinstance(adapter, JsonlHeldout) and adapter.source == source and adapter.matcher.rule == "normalized"
    assert adapter.data_files() == [StateTree(tmp_path / "state").heldout_split, adapter.prompts_file]


def test_the_lm_eval_adapter_copies_its_task_and_data_and_shows_them_to_its_score_job(tmp_path):
    source = heldout(tmp_path, name="team.jsonl")
    (tmp_path / "task.yaml").write_text("include: _base.yaml\ntask: team\nprocess_docs: !function utils.f\n")
    (tmp_path / "_base.yaml").write_text("output_type: generate_until\ndoc_to_text: !function prompts.text\n")
    for helper in ("utils.py", "prompts.py", "unused.py"):
        (tmp_path / helper).write_text("def f(x): return x\n")
    campaign = write_campaign(tmp_path)
    data = yaml.safe_load(campaign.read_text())
    data["leaderboard"].update(adapter="lm-eval", heldout="team.jsonl", task_yaml="task.yaml", metric="exact_match",
                               limit=4)
    campaign.write_text(yaml.safe_dump(data))
    tree = StateTree(tmp_path / "state")
    adapter = make_adapter(load_campaign(campaign), tree)
    assert isinstance(adapter, LmEvalTask) and adapter.source == source
    # No job stage sees the originals (a trainer could read the answers); score jobs see the private copies.
    assert {str(tmp_path / name) for name in ("team.jsonl", "task.yaml", "_base.yaml", "utils.py", "prompts.py")} <= \
        set(Daemon(load_campaign(campaign))._hidden())
    adapter.prepare()
    task = tree.leaderboard_dir / "task"
    assert adapter.data_files() == [tree.leaderboard_data / "team.jsonl", task / "task.yaml"]
    assert sorted(p.name for p in task.iterdir()) == ["_base.yaml", "prompts.py", "task.yaml", "utils.py"]
    job = adapter.score_input(Path("/c/export/ckpt-000004.safetensors"), "ab" * 32, Path("/s/recipe.yaml"), Path("/o"))
    assert job.command[1:] == (str(RUNNER),) and set(job.views) == {  # run by path: the checkout may be hidden
        str(tree.leaderboard_data / "team.jsonl"), str(task), str(RUNNER)}
    assert job.args[job.args.index("--limit") + 1] == "4" and job.args[-2:] == ("--out", "/o/score.json")


def test_the_smollm2_lm_eval_campaign_scores_the_heldout_puzzles_items(tmp_path):
    """campaigns/smollm2-lmeval.yaml's task data are the items the heldout-puzzles adapter draws (seed 0)."""
    campaign = load_campaign(REPO / "campaigns" / "smollm2-lmeval.yaml")
    assert isinstance(make_adapter(campaign, StateTree(tmp_path / "lm")), LmEvalTask) and campaign.seed == 0
    tree = StateTree(tmp_path / "state")
    tree.default_dir.mkdir(parents=True)
    shutil.copy(REPO / "substrate" / "puzzles.py", tree.default_dir)
    HeldoutPuzzles(tree, 1, campaign.seed).prepare()
    split = [json.loads(line) for line in tree.heldout_split.read_text().splitlines()]
    task = {name: [json.loads(line) for line in (campaign.paths.heldout / f"{name}.jsonl").read_text().splitlines()]
            for name in {row["domain"] for row in split}}
    assert [task[row["domain"]].pop(0) for row in split] == [{"prompt": r["prompt"], "answer": r["answer"]} for r in split]
    assert not any(task.values()) and len(split) == 500


def test_a_larger_heldout_puzzles_split_extends_the_default_one_and_cannot_change_size_later(tmp_path):
    """`examples_per_domain` draws more of each domain's puzzles: the default split's 100 come first, so scores on
    either are of the same distribution; a campaign that asks another size once the split is drawn is refused."""
    tree = StateTree(tmp_path / "state")
    tree.default_dir.mkdir(parents=True)
    shutil.copy(REPO / "substrate" / "puzzles.py", tree.default_dir)
    HeldoutPuzzles(tree, 1, 0).prepare()
    default = [json.loads(line) for line in tree.heldout_split.read_text().splitlines()]
    tree.heldout_split.unlink()
    larger = HeldoutPuzzles(tree, 1, 0, per_domain=400)
    larger.prepare()
    rows = [json.loads(line) for line in tree.heldout_split.read_text().splitlines()]
    assert len(rows) == 2000 and larger.ledger().examples_per_domain == {d: 400 for d in {r["domain"] for r in rows}}
    by_domain = {}
    for row in rows:
        by_domain.setdefault(row["domain"], []).append(row)
    assert [r for d in dict.fromkeys(r["domain"] for r in default) for r in by_domain[d][:100]] == default
    with pytest.raises(LeaderboardError, match=r"drawn with \[400\] puzzles per domain, but the campaign asks "
                                               r"leaderboard.examples_per_domain 100") as info:
        HeldoutPuzzles(tree, 1, 0).prepare()
    assert "\n" not in str(info.value)


def test_the_campaign_sizes_its_heldout_puzzles_split(tmp_path):
    campaign = write_campaign(tmp_path)
    data = yaml.safe_load(campaign.read_text())
    data["leaderboard"]["examples_per_domain"] = 250
    campaign.write_text(yaml.safe_dump(data))
    assert make_adapter(load_campaign(campaign), StateTree(tmp_path / "s")).per_domain == 250
    assert make_adapter(load_campaign(write_campaign(tmp_path / "default")), StateTree(tmp_path / "d")).per_domain == 100
