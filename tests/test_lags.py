"""simulator/calibrate/lags.py: a collective's members in an op log, grouped by their shared
join time: the group's transfer (first member's end) and each member's lag."""
from __future__ import annotations

import pytest

from simulator.calibrate.lags import (LAG_QUANTILES, first_ends, lag_section, member_lags,
                                      transfer_seconds)
from simulator.ops import Collective, Gemm, SendRecv

AR = Collective("all_reduce", 4096, (0, 1), "ar")
P2P = SendRecv(1024, 0, 1, "p2p")


def entry(op, device, start, end, join, run="tp#0"):
    return (op, device, 0, start, end, join, run)


LOG = [
    entry(AR, 0, 1.0, 1.5, 1.2),            # joined at 1.2: ends 0.3 and 0.5 after it
    entry(AR, 1, 1.2, 1.7, 1.2),
    entry(AR, 0, 2.0, 2.4, 2.1),            # a second instance: 0.3 and 0.3
    entry(AR, 1, 2.1, 2.4, 2.1),
    entry(P2P, 0, 3.0, 3.9, 3.1),           # sender 0.8 after the join, receiver 0.1
    entry(P2P, 1, 3.1, 3.2, 3.1),
    entry(Gemm(8, 8, 8, "fp16", "g"), 0, 4.0, 4.1, 4.0),
]


def test_members_are_grouped_by_their_join_and_the_first_end_is_the_transfer():
    firsts = first_ends(LOG)
    assert sorted(firsts.values()) == pytest.approx([0.1, 0.3, 0.3])
    assert transfer_seconds(firsts, AR, 1.2, 1.2, 1.7, ("tp#0",)) == pytest.approx(0.3)
    assert transfer_seconds(firsts, P2P, 3.1, 3.0, 3.9, ("tp#0",)) == pytest.approx(0.1)


def test_each_member_lags_its_groups_first_end():
    assert sorted(member_lags(LOG)) == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.2, 0.7])


def test_an_instance_missing_a_member_keeps_its_own_time_and_gives_no_lag():
    log = LOG[:1]
    assert first_ends(log) == {} and member_lags(log) == []
    assert transfer_seconds(first_ends(log), AR, 1.2, 1.0, 1.5, ("tp#0",)) == pytest.approx(0.3)


def test_runs_apart_are_instances_apart():
    log = [entry(AR, 0, 0.0, 1.0, 0.5, "a#0"), entry(AR, 1, 0.0, 2.0, 0.5, "b#0")]
    assert member_lags(log) == []           # same join time, different runs: not one instance


def test_the_profile_section_has_quantiles_in_us_with_its_source():
    sec = lag_section([0.0] * 50 + [100e-6] * 50, "measured: test")
    assert len(sec["value"]) == LAG_QUANTILES
    assert sec["value"][0] == 0.0 and sec["value"][-1] == pytest.approx(100.0)
    assert sum(sec["value"]) / LAG_QUANTILES == pytest.approx(50.0)
    assert "100 members" in sec["source"] and sec["source"].startswith("measured: test")
    assert lag_section([], "x") is None
