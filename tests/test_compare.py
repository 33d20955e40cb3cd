"""Strategy comparisons on synthetic summaries whose answers are known in closed form."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from simulator.compare import compare_dir, compare_frame, group_columns, max_x_under
from simulator.errors import ConfigError


def summary(curves: dict, **extra) -> pd.DataFrame:
    """Rows (strategy, throughput, mean JCT) for curves {label: [(x, y), ...]}; p90 = 2 * mean."""
    rows = [{"experiment": "e", "strategy": lab, "throughput_rps": x, "jct_mean_s": y,
             "jct_p90_s": 2 * y, "workload.arrival.rate_rps": x, "error": "", **extra}
            for lab, pts in curves.items() for x, y in pts]
    return pd.DataFrame(rows)


# A: jct = 0.1 + 0.01 x on [1, 10];  B: jct = 0.2 + 0.02 x on [2, 8] (points given out of order)
A = [(1.0, 0.11), (4.0, 0.14), (10.0, 0.2)]
B = [(8.0, 0.36), (2.0, 0.24), (5.0, 0.30)]


def row(table, a, b):
    sel = table[(table["strategy_a"] == a) & (table["strategy_b"] == b)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_ratio_at_highest_common_throughput_and_max_throughput_ratio():
    table = compare_frame(summary({"A": A, "B": B}))
    assert len(table) == 2
    r = row(table, "A", "B")
    assert r["throughput_at_rps"] == pytest.approx(8.0)
    assert r["jct_a_s"] == pytest.approx(0.18) and r["jct_b_s"] == pytest.approx(0.36)
    assert r["jct_ratio_at_equal_throughput"] == pytest.approx(0.5)
    assert r["jct_reduction_pct"] == pytest.approx(50.0)
    assert r["max_throughput_ratio"] == pytest.approx(10.0 / 8.0)
    assert r["reason"] == "" or pd.isna(r["reason"])
    back = row(table, "B", "A")
    assert back["jct_ratio_at_equal_throughput"] == pytest.approx(2.0)
    assert back["jct_reduction_pct"] == pytest.approx(-100.0)
    assert back["max_throughput_ratio"] == pytest.approx(0.8)


def test_ratio_at_middle_of_overlap_and_p90_statistic():
    r = row(compare_frame(summary({"A": A, "B": B}), at="mid"), "A", "B")
    assert r["throughput_at_rps"] == pytest.approx(5.0)      # overlap [2, 8]
    assert r["jct_a_s"] == pytest.approx(0.15) and r["jct_b_s"] == pytest.approx(0.30)
    p90 = row(compare_frame(summary({"A": A, "B": B}), stat="p90"), "A", "B")
    assert p90["jct_a_s"] == pytest.approx(0.36) and p90["jct_stat"] == "jct_p90_s"


def test_non_overlapping_curves_give_nan_with_reason():
    table = compare_frame(summary({"A": [(1.0, 0.1), (2.0, 0.2)], "B": [(3.0, 0.1), (4.0, 0.3)]}))
    r = row(table, "A", "B")
    assert math.isnan(r["jct_ratio_at_equal_throughput"]) and math.isnan(r["jct_reduction_pct"])
    assert math.isnan(r["throughput_at_rps"])
    assert "do not overlap" in r["reason"]
    assert r["max_throughput_ratio"] == pytest.approx(0.5)   # still defined


def test_slo_throughput_is_interpolated_exactly():
    # A crosses 0.16 s at x = 6 (between 4 and 10); B crosses it nowhere (its first point is 0.24).
    table = compare_frame(summary({"A": A, "B": B}), slo_s=0.16)
    r = row(table, "A", "B")
    assert r["max_throughput_under_slo_a_rps"] == pytest.approx(6.0)
    assert math.isnan(r["max_throughput_under_slo_b_rps"])
    assert "SLO" in r["reason"]
    r2 = row(compare_frame(summary({"A": A, "B": B}), slo_s=0.33), "A", "B")
    assert r2["max_throughput_under_slo_a_rps"] == pytest.approx(10.0)   # every point meets it
    assert r2["max_throughput_under_slo_b_rps"] == pytest.approx(6.5)    # 0.2 + 0.02 x = 0.33
    assert r2["max_throughput_under_slo_ratio"] == pytest.approx(10.0 / 6.5)
    assert "A meets the SLO (its value is a lower bound)" in r2["reason"]


def test_slo_takes_the_last_crossing_of_a_non_monotone_curve():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([0.1, 0.5, 0.1, 0.3])
    assert max_x_under(x, y, 0.2) == pytest.approx(3.5)
    assert math.isnan(max_x_under(x, y, 0.05))


def test_failed_points_are_left_out():
    s = summary({"A": A, "B": B})
    bad = s.index[(s["strategy"] == "A") & (s["throughput_rps"] == 10.0)]
    s.loc[bad, "error"] = "out of memory"
    r = row(compare_frame(s), "A", "B")
    assert r["max_throughput_a_rps"] == pytest.approx(4.0)
    assert r["throughput_at_rps"] == pytest.approx(4.0)


def test_other_swept_columns_form_groups():
    s = pd.concat([summary({"A": A, "B": B}, devices=2),
                   summary({"A": [(1.0, 0.1), (3.0, 0.3)], "B": [(1.0, 0.2), (3.0, 0.6)]}, devices=4)],
                  ignore_index=True)
    assert group_columns(s) == ["devices"]
    table = compare_frame(s)
    assert len(table) == 4 and list(table.columns[:1]) == ["devices"]
    four = table[(table["devices"] == 4) & (table["strategy_a"] == "A")].iloc[0]
    assert four["jct_ratio_at_equal_throughput"] == pytest.approx(0.5)
    assert four["throughput_at_rps"] == pytest.approx(3.0)


def test_bad_arguments_raise_config_error():
    s = summary({"A": A, "B": B})
    with pytest.raises(ConfigError):
        compare_frame(s, stat="p42")
    with pytest.raises(ConfigError):
        compare_frame(s, slo_s=-1.0)
    with pytest.raises(ConfigError):
        compare_frame(s.drop(columns=["throughput_rps"]))


def test_compare_dir_writes_compare_csv(tmp_path):
    summary({"A": A, "B": B}).to_csv(tmp_path / "summary.csv", index=False)
    table = compare_dir(str(tmp_path), slo_s=0.33)
    on_disk = pd.read_csv(tmp_path / "compare.csv")
    assert list(on_disk.columns) == list(table.columns)
    assert on_disk["max_throughput_under_slo_b_rps"].tolist() == pytest.approx([6.5, 10.0])
    with pytest.raises(ConfigError, match="no summary.csv"):
        compare_dir(str(tmp_path / "missing"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_saturated_points_leave_the_curve_but_count_for_max_throughput():
    from simulator.compare import compare_frame
    rows = []
    # A saturates at 10 rps: beyond it throughput wobbles (9.9, 10.05) while JCT explodes
    for rate, x, y in ((2, 2.0, 1.0), (6, 6.0, 1.0), (10, 10.0, 2.0), (14, 9.9, 50.0), (18, 10.05, 90.0)):
        rows.append({"strategy": "A", "workload.arrival.rate_rps": rate, "throughput_rps": x,
                     "jct_mean_s": y, "error": ""})
    for rate, x, y in ((2, 2.0, 2.0), (6, 6.0, 2.0), (10, 9.0, 4.0), (14, 9.0, 40.0)):
        rows.append({"strategy": "B", "workload.arrival.rate_rps": rate, "throughput_rps": x,
                     "jct_mean_s": y, "error": ""})
    t = compare_frame(pd.DataFrame(rows))
    ab = t[(t["strategy_a"] == "A") & (t["strategy_b"] == "B")].iloc[0]
    # B's curve ends at its knee (9 rps, 4 s); A's is read on its rising part: 1 + 0.75 = 1.75 s
    assert ab["throughput_at_rps"] == pytest.approx(9.0)
    assert ab["jct_a_s"] == pytest.approx(1.75)
    assert ab["jct_b_s"] == pytest.approx(4.0)
    assert ab["max_throughput_a_rps"] == pytest.approx(10.05)
    assert ab["max_throughput_ratio"] == pytest.approx(10.05 / 9.0)


def test_points_serving_far_less_than_their_offered_rate_are_saturated():
    from simulator.compare import curve
    pts = pd.DataFrame({"strategy": "A", "workload.arrival.rate_rps": [4.0, 12.0, 16.0, 24.0],
                        "throughput_rps": [3.9, 11.4, 11.6, 11.7], "jct_mean_s": [0.1, 0.3, 0.9, 1.5]})
    x, y = curve(pts, "jct_mean_s")
    # 11.6 rps is 1.8% above 11.4 but serves only 72% of the 16 rps offered: past the knee
    assert list(x) == [3.9, 11.4] and list(y) == [0.1, 0.3]


def test_slo_reading_counts_saturated_points_that_meet_it():
    # B's last point serves 10.4 of 12 req/s offered: past the saturation knee, so the curve leaves
    # it out; its JCT still meets the SLO, so B's best throughput under the SLO is 10.4 req/s.
    rows = [{"experiment": "e", "strategy": lab, "throughput_rps": x, "jct_mean_s": y,
             "workload.arrival.rate_rps": rate, "error": ""}
            for lab, pts in {"A": [(2.0, 2.3, 0.09), (6.0, 6.8, 0.10), (12.0, 11.8, 0.22)],
                             "B": [(2.0, 2.3, 0.22), (6.0, 6.6, 0.26), (12.0, 10.4, 0.48)]}.items()
            for rate, x, y in pts]
    r = row(compare_frame(pd.DataFrame(rows), slo_s=1000.0), "B", "A")
    assert r["max_throughput_under_slo_a_rps"] == pytest.approx(10.4)
    assert r["max_throughput_b_rps"] == pytest.approx(11.8)
    assert "every measured point of A meets the SLO" in r["reason"]
    tight = row(compare_frame(pd.DataFrame(rows), slo_s=0.3), "B", "A")
    assert tight["max_throughput_under_slo_a_rps"] == pytest.approx(6.6)
