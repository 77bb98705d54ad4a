"""Hundreds of broken campaign and profile files, generated: each is refused in one line with exit code 2
(or, when still valid, accepted), never a traceback, never a hang, and no NaN or infinity is accepted.

The cases: every number of a valid campaign and profile set to NaN, the infinities, an integer beyond any
float, a negative number and a string; every string set to a multi-line text, an empty one and a list;
truncations and byte flips of the whole file; and files that are not plain YAML text at all.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from bounded import within
from tiny_campaign import REPO, write_campaign

from hpc_aevo.cli.check import check_campaign_main, check_profile_main

NOT_FINITE = (".nan", ".inf", "-.inf", "1e400")  # YAML floats that are not finite numbers
HUGE = "1" + "0" * 400  # an integer beyond any float: refused where a number is asked, checked everywhere


def leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, (*path, i))
    else:
        yield path, tree


def with_leaf(text: str, path: tuple, raw: str) -> str:
    """`text` (a YAML document) with the leaf at `path` replaced by the YAML text `raw`."""
    marker = "__HPC_AEVO_FUZZ__"
    doc = yaml.safe_load(text)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return yaml.safe_dump(doc, sort_keys=False).replace(f"'{marker}'", raw).replace(marker, raw)


def mutations(text: str, seed: int) -> Iterator[tuple[str, str, bool]]:
    """(case name, file text, must be refused) for one valid YAML document."""
    for path, value in leaves(yaml.safe_load(text)):
        where = ".".join(map(str, path))
        free_form = path[0] == "standing_recipe"  # the substrate's keys: its own checker knows their types
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for raw in NOT_FINITE:  # (YAML reads 1e400, without a dot, as a string: free-form data may hold it)
                yield f"{where}={raw}", with_leaf(text, path, raw), not (free_form and raw == "1e400")
            yield f"{where}=10**400", with_leaf(text, path, HUGE), False
            yield f"{where}=-1", with_leaf(text, path, "-1"), False
            yield f"{where}='x'", with_leaf(text, path, "x"), not free_form
        elif isinstance(value, str):
            yield f"{where}=two lines", with_leaf(text, path, '"a\\nb"'), False
            yield f"{where}=''", with_leaf(text, path, "''"), False
            yield f"{where}=[list]", with_leaf(text, path, "[1, 2]"), not free_form
    rng = random.Random(seed)
    for cut in sorted(rng.sample(range(1, len(text)), min(60, len(text) - 1))):
        yield f"truncated at {cut}", text[:cut], False
    for n in range(30):
        data = bytearray(text.encode())
        for _ in range(3):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield f"byte flips {n}", data.decode("latin-1"), False
    first_key = next(line for line in text.splitlines() if line[:1].isalpha() and ":" in line)
    yield "a key twice", f"{text}\n{first_key}\n", True
    yield "deep nesting", "a: " + "[" * 20000 + "]" * 20000 + "\n", True
    yield "a list", "- 1\n- 2\n", True
    yield "empty", "", True


def refused_in_one_line(main, path: Path, capsys) -> int:
    """Run the check command on `path` in a thread (a hang fails the case); its exit code."""
    code = within(20, lambda: main([str(path)]), f"the check of {path}")
    err = capsys.readouterr().err
    if code == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, err
    else:
        assert code == 0 and err == "", (code, err)
    return code


def campaign_text(tmp_path: Path) -> tuple[Path, str]:
    path = write_campaign(tmp_path / "base")
    return path, path.read_text()


@pytest.mark.parametrize("kind", ["campaign", "initial policy", "devcluster profile", "h200 profile"])
def test_generated_bad_files_are_refused_in_one_line(tmp_path, capsys, kind):
    if kind == "campaign":
        base, text = campaign_text(tmp_path)
        main = check_campaign_main
    elif kind == "initial policy":  # checked through the campaign that names it
        campaign, _ = campaign_text(tmp_path)
        base = campaign.with_name("initial.yaml")
        text, main = base.read_text(), lambda argv: check_campaign_main([str(campaign)])
    else:
        base = REPO / "sbatch" / ("devcluster.yaml" if kind == "devcluster profile" else "h200.yaml")
        text, main = base.read_text(), check_profile_main
    assert refused_in_one_line(main, base, capsys) == 0
    cases = list(mutations(text, seed=len(kind)))
    target = {"campaign": base.with_name("fuzzed.yaml"), "initial policy": base}.get(kind, tmp_path / "fuzzed.yaml")
    wrongly_accepted = []
    for name, body, must_refuse in cases:
        target.write_bytes(body.encode("latin-1") if name.startswith("byte flips") else body.encode())
        code = refused_in_one_line(main, target, capsys)
        if must_refuse and code != 2:
            wrongly_accepted.append(name)
    assert not wrongly_accepted, wrongly_accepted
    assert len(cases) >= 100, len(cases)


def test_files_that_are_not_text_are_refused_without_blocking(tmp_path, capsys):
    fifo, directory, big, link = tmp_path / "fifo.yaml", tmp_path / "dir.yaml", tmp_path / "big.yaml", tmp_path / "z.yaml"
    os.mkfifo(fifo)
    directory.mkdir()
    big.write_text("a: " + "x" * (2 << 20) + "\n")
    os.symlink("/dev/zero", link)
    for path in (fifo, directory, big, link, tmp_path / "missing.yaml"):
        assert refused_in_one_line(check_campaign_main, path, capsys) == 2


def test_unquoted_off_means_the_word_and_help_is_not_a_file(tmp_path, capsys):
    base, text = campaign_text(tmp_path)
    doc = yaml.safe_load(text)
    doc["scheduler"]["confine_jobs"] = "off"
    base.write_text(yaml.safe_dump(doc).replace("confine_jobs: 'off'", "confine_jobs: off"))
    assert "confine_jobs: off\n" in base.read_text()
    assert refused_in_one_line(check_campaign_main, base, capsys) == 0
    for main in (check_campaign_main, check_profile_main):
        assert main(["--help"]) == 0 and "usage:" in capsys.readouterr().out


def test_what_the_scheduler_cannot_give_and_a_state_root_that_cannot_be_made_are_one_line(tmp_path, capsys):
    from hpc_aevo.cli.round import main as round_main

    base, text = campaign_text(tmp_path)
    doc = yaml.safe_load(text)
    doc["scheduler"].update(backend="slurm", profile=str(REPO / "sbatch" / "devcluster.yaml"))
    doc["scheduler"]["stages"]["train"]["gpus"] = 4  # the devcluster's nodes have none
    base.write_text(yaml.safe_dump(doc))
    assert refused_in_one_line(check_campaign_main, base, capsys) == 2
    assert round_main([str(base), "--dry-run"]) == 2  # the same line from the dry run
    assert f"{base}: scheduler.stages.train.gpus: expected at most" in capsys.readouterr().err
    doc = yaml.safe_load(text)
    doc["state_root"] = "/proc/hpc-aevo-nowhere/state"
    base.write_text(yaml.safe_dump(doc))
    assert round_main([str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state_root: expected a directory this user can create" in err, err
