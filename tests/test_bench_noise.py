"""`bench noise`: the decision code under pure seed noise, on a few simulated rounds (the full run is in
docs/calibration.md). Nothing here asserts a rate: only the record's shape and its intervals."""

from __future__ import annotations

import pytest

import json
import os

from hpc_aevo.tools.bench import main
from hpc_aevo.tools.bench_noise import NoiseBench, Rate, wilson

DOMAINS = ("base", "bits", "cipher", "equation", "sequence")


def _run(variant: str, seed: int, dev: dict[str, float], board: dict[str, float]) -> dict:
    return {"variant": variant, "seed": seed, "dev": sum(dev.values()) / 5, "heldout": sum(board.values()) / 5,
            "dev_per_domain": dev, "heldout_per_domain": board, "train_s": 1.0}


def _sweep(path, seeds, start=None, trap="data.mixture.sequence:up*2", per_domain=400):
    """A calibrate record of a start: its seeds' runs (held-out 0.02 +- 0.01 per seed) and, maybe, the trap's."""
    runs = [_run("default", s, {d: 0.10 for d in DOMAINS}, {d: 0.02 + 0.01 * (s % 2) for d in DOMAINS}) for s in seeds]
    if trap:
        runs.append(_run(trap, 0, {**{d: 0.10 for d in DOMAINS}, "sequence": 0.60},
                         {**{d: 0.02 for d in DOMAINS}, "sequence": 0.07}))
    path.write_text(json.dumps({
        "schema": "hpc_aevo.calibration", "version": 1, "heldout_per_domain": per_domain,
        "default_recipe": {"seed": seeds[0], "optim": start or {"lr": 2.5e-4}},
        "seed_band": {"dev": {"pooled_std": 0.004}, "heldout": {"pooled_std": 0.002}}, "runs": runs}))
    return path


def test_wilson_matches_hand_computed_intervals():
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert Rate.of(1, 4).rate == 0.25


def test_a_few_simulated_rounds_write_their_record(tmp_path, capsys):
    out = tmp_path / "noise.json"
    main(["noise", "--rounds", "7", "--trap-rounds", "5", "--anchors", "2", "--power-gains", "0.02,0.5",
          "--power-rounds", "4", "--out", str(out)])
    record = NoiseBench.load(out)
    assert (record.anchors, record.workers, record.rounds_per_campaign, record.campaigns) == (2, 3, 3, 3)
    assert record.promotions.n == 9 and [r.n for r in record.promotions_by_round] == [3, 3, 3]
    assert sum(r.count for r in record.promotions_by_round) == record.promotions.count
    assert record.trap_flagged.n == record.trap_promoted.n == 5
    for rate in (record.promotions, record.detector_false_alarms, record.trap_flagged, record.trap_dead_end):
        assert 0 <= rate.low <= rate.rate <= rate.high <= 1
    assert [(p.gain, p.promoted.n) for p in record.power] == [(0.02, 4), (0.5, 4)]
    assert record.power[1].promoted.count == 4  # a gain 60 sigma above the noise is always promoted
    assert record.within_5_percent == (record.promotions.rate <= 0.05)
    assert record.command.startswith("python -m hpc_aevo.bench noise --rounds 7")
    assert "false promotions per round:" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--rounds", "0"), ("--rho", "2"), ("--leaderboard-std", "-1"),
                                         ("--power-gains", "0.01,x"), ("--power-gains", "-0.01")])
def test_bad_numbers_are_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["noise", flag, value, "--out", "/nonexistent/x.json"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m hpc_aevo.bench noise: error: ") and flag in last


def test_the_model_and_real_rounds_come_from_calibrate_sweeps_of_the_start(tmp_path, capsys):
    """Two sweeps of the same start pool their seeds; the model takes their means, the wider std, the split's
    size and the trap as measured; real rounds are drawn from the start's runs."""
    first, second = _sweep(tmp_path / "a.json", [0, 1, 2]), _sweep(tmp_path / "b.json", [3, 4, 5], trap=None)
    out = tmp_path / "noise.json"
    main(["noise", "--rounds", "3", "--trap-rounds", "4", "--power-gains", "0.05", "--power-rounds", "2",
          "--calibration", str(first), str(second), "--real-rounds", "6", "--out", str(out)])
    record = NoiseBench.load(out)
    model = record.model
    assert model.leaderboard_means == pytest.approx({d: 0.025 for d in DOMAINS})
    assert model.dev_means == pytest.approx({d: 0.10 for d in DOMAINS}) and model.dev_std == 0.004
    assert model.leaderboard_std == pytest.approx(0.0054772, abs=1e-6)  # the seeds' std, wider than the pooled
    assert model.leaderboard_examples_per_domain == {d: 400 for d in DOMAINS}
    assert model.examples_per_domain == {d: 100 for d in DOMAINS}
    assert record.trap_dev_gain == pytest.approx(0.10) and record.trap_board_gain == pytest.approx(0.005)
    assert record.trap_variant == "data.mixture.sequence:up*2"  # the trap as a scripted worker first takes it
    assert (record.real_runs, record.real_independent_rounds, record.real_promotions.n) == (6, 1, 6)
    assert record.calibration == [str(first), str(second)]
    assert "real rounds (drawn from 6 runs; 1 could be disjoint) promoted:" in capsys.readouterr().out


@pytest.mark.parametrize("make, said", [
    (lambda p: p.write_text("{"), "expected a calibrate JSON"),
    (lambda p: p.write_text('{"schema": "hpc_aevo.bench_noise"}'), "schema: expected 'hpc_aevo.calibration'"),
    (lambda p: p.write_text('{"schema": "hpc_aevo.calibration", "runs": 3}'), "expected a calibrate record"),
    (lambda p: _sweep(p, [0]), "runs: expected at least 2 seeds of the start, found 1"),
    (lambda p: os.mkfifo(p), "expected a calibrate JSON"),  # a FIFO is refused, not read (which would hang)
    (lambda p: p.write_text('{"schema": "hpc_aevo.calibration", "x": NaN}'), "expected a calibrate JSON"),
])
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path, capsys, make, said):
    path = tmp_path / "sweep.json"
    make(path)
    with pytest.raises(SystemExit) as exc:
        main(["noise", "--rounds", "3", "--calibration", str(path), "--out", str(tmp_path / "n.json")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and str(path) in last and said in last, last


def test_the_trap_is_measured_by_the_variant_asked_and_one_no_sweep_ran_is_refused(tmp_path):
    one_edit = _sweep(tmp_path / "a.json", [0, 1], trap="data.mixture.sequence:up")
    out = tmp_path / "noise.json"
    main(["noise", "--rounds", "3", "--trap-rounds", "2", "--power-rounds", "1", "--calibration", str(one_edit),
          "--trap-variant", "data.mixture.sequence:up", "--out", str(out)])
    record = NoiseBench.load(out)
    assert record.trap_variant == "data.mixture.sequence:up" and record.trap_dev_gain == pytest.approx(0.10)


def test_sweeps_of_different_starts_or_real_rounds_without_them_are_refused(tmp_path, capsys):
    a, b = _sweep(tmp_path / "a.json", [0, 1]), _sweep(tmp_path / "b.json", [2, 3], start={"lr": 1e-3})
    no_trap = _sweep(tmp_path / "c.json", [0, 1], trap="data.mixture.sequence:up")
    for argv, said in ((["--calibration", str(a), str(b)], "expected the start and split of"),
                       (["--calibration", str(no_trap)], "no run of the trap 'data.mixture.sequence:up*2'"),
                       (["--trap-variant", "data.mixture.sequence:up"], "--trap-variant needs --calibration"),
                       (["--real-rounds", "5"], "needs --calibration"),
                       (["--calibration", str(a), "--real-rounds", "5"], "needs as many real runs of the start")):
        with pytest.raises(SystemExit):
            main(["noise", "--rounds", "3", "--trap-rounds", "1", "--power-rounds", "1", *argv,
                  "--out", str(tmp_path / "n.json")])
        assert said in capsys.readouterr().err.strip().splitlines()[-1]
