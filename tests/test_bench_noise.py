"""`bench noise`: the decision code under pure seed noise, on a few simulated rounds (the full run is in
docs/calibration.md). Nothing here asserts a rate: only the record's shape and its intervals."""

from __future__ import annotations

import pytest

from hpc_aevo.tools.bench import main
from hpc_aevo.tools.bench_noise import NoiseBench, Rate, wilson


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
