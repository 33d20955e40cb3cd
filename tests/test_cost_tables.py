"""Measured-table mode of the cost model (DESIGN §3): exact rows, interpolation, fallback, loading.

Expected times are worked out by hand from the rows each test writes: linear in m for GEMMs and
kv_len for attention, linear in log(time) against log(bytes) for byte-sized ops. Outside the
measured range, or for a shape no row shares, the answer must be the plain roofline's, to the bit.
The last test builds a GEMM table from Vidur's A100 measurements at test time (never committed),
holds out every other token count, and checks that the table beats the roofline on those rows.
"""
from __future__ import annotations

import math
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.cost import CostModel
from simulator.cost_tables import MeasuredTable, columns, load_table_csv
from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import load_hardware
from simulator.ops import Attention, Collective, Elementwise, Gemm, SendRecv

HW = load_hardware("a100-sxm4-80gb")
ROOF = CostModel(HW)
US = 1e-6
MIB = 2 ** 20
SRC = "measured: hand-written test rows"

GEMM_ROWS = [  # n = k = 4096, fp16: 100 us at m = 256, 300 us at m = 512, 500 us at m = 1024
    {"m": 256, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 100 * US},
    {"m": 512, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 300 * US},
    {"m": 1024, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 500 * US},
    {"m": 1, "n": 4096, "k": 4096, "dtype": "fp16", "seconds": 40 * US},     # memory-bound shape
]
AR_ROWS = [  # all-reduce on 4 devices: 10 us at 1 MiB, 40 us at 16 MiB
    {"devices": 4, "bytes": 1 * MIB, "seconds": 10 * US},
    {"devices": 4, "bytes": 16 * MIB, "seconds": 40 * US},
]


def tables(**extra) -> dict:
    out = {"gemm": MeasuredTable.from_rows("gemm", GEMM_ROWS, SRC),
           "all_reduce": MeasuredTable.from_rows("all_reduce", AR_ROWS, SRC)}
    out.update(extra)
    return out


def write_csv(path: Path, header: list, rows: list) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def gemm_csv(path: Path, rows=GEMM_ROWS) -> str:
    header = list(columns("gemm"))
    return write_csv(path, header, [[r[c] for c in header] for r in rows])


def profile_with_tables(tmp_path: Path, entries: dict, name: str = "tabled.yaml") -> str:
    """A copy of the built-in A100 profile with `measured_tables: entries`, written to tmp_path."""
    data = yaml.safe_load(resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml").read_text("utf-8"))
    data["measured_tables"] = entries
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------- lookups

def test_exact_row_returns_the_measured_time():
    cost = CostModel(HW, tables=tables()).cost(Gemm(512, 4096, 4096))
    assert cost.seconds == 300 * US
    assert cost.detail == "table: measured at m=512"


def test_gemm_interpolates_linearly_in_m():
    cm = CostModel(HW, tables=tables())
    # m = 320: a quarter of the way from 256 to 512 -> 100 + 0.25 * 200 = 150 us
    assert cm.seconds(Gemm(320, 4096, 4096)) == pytest.approx(150 * US, rel=1e-12)
    # m = 768: half way from 512 to 1024 -> 400 us
    cost = cm.cost(Gemm(768, 4096, 4096))
    assert cost.seconds == pytest.approx(400 * US, rel=1e-12)
    assert cost.detail == "table: interpolated between m=512 and m=1024"


def test_collective_interpolates_log_log_in_bytes():
    cm = CostModel(HW, tables=tables())
    # 4 MiB is half way from 1 to 16 MiB in log(bytes): 10 us * 4 ** 0.5 = 20 us (linear would say 16)
    cost = cm.cost(Collective("all_reduce", 4 * MIB, (0, 1, 2, 3)))
    assert cost.seconds == pytest.approx(20 * US, rel=1e-12)
    assert cost.detail == f"table: interpolated between bytes={MIB} and bytes={16 * MIB}"
    # 2 MiB: a quarter of the way -> 10 us * 4 ** 0.25
    assert cm.seconds(Collective("all_reduce", 2 * MIB, (0, 1, 2, 3))) == \
        pytest.approx(10 * US * 4 ** 0.25, rel=1e-12)


def test_send_recv_and_elementwise_interpolate_log_log_in_bytes():
    rows = [{"bytes": 1e6, "seconds": 5 * US}, {"bytes": 1e8, "seconds": 50 * US}]
    cm = CostModel(HW, tables={"send_recv": MeasuredTable.from_rows("send_recv", rows, SRC),
                               "elementwise": MeasuredTable.from_rows("elementwise", rows, SRC)})
    expected = math.sqrt(5 * 50) * US        # 1e7 is the geometric middle of 1e6 and 1e8
    assert cm.seconds(SendRecv(1e7, 0, 1)) == pytest.approx(expected, rel=1e-12)
    assert cm.seconds(Elementwise(1e7)) == pytest.approx(expected, rel=1e-12)


def test_attention_interpolates_linearly_in_kv_len():
    shape = {"batch": 8, "q_len": 1, "heads": 32, "kv_heads": 32, "head_dim": 128,
             "causal": True, "dtype": "fp16"}
    rows = [dict(shape, kv_len=1024, seconds=30 * US), dict(shape, kv_len=2048, seconds=50 * US)]
    cm = CostModel(HW, tables={"attention": MeasuredTable.from_rows("attention", rows, SRC)})
    op = Attention(8, 1, 1280, 32, 32, 128, causal=True)
    assert cm.seconds(op) == pytest.approx(35 * US, rel=1e-12)     # 30 + 20 * 256 / 1024
    other = Attention(8, 1, 1280, 32, 32, 128, causal=False)        # causal differs: no rows
    assert cm.seconds(other) == ROOF.seconds(other)


@pytest.mark.parametrize("op, why", [
    (Gemm(2048, 4096, 4096), "roofline: outside table (m=2048, measured 1..1024)"),
    (Gemm(512, 4096, 1024), "roofline: no table rows with n=4096, k=1024, dtype=fp16"),
    (Gemm(512, 4096, 4096, dtype="bf16"), "roofline: no table rows with n=4096, k=4096, dtype=bf16"),
    (Collective("all_reduce", 64 * MIB, (0, 1, 2, 3)), "roofline: outside table"),
    (Collective("all_reduce", 0.5 * MIB, (0, 1, 2, 3)), "roofline: outside table"),
    (Collective("all_reduce", 4 * MIB, (0, 1)), "roofline: no table rows with devices=2"),
])
def test_outside_the_range_or_unmatched_falls_back_to_the_roofline(op, why):
    cost = CostModel(HW, tables=tables()).cost(op)
    plain = ROOF.cost(op)
    assert cost.seconds == plain.seconds
    assert (cost.bound, cost.op_class, cost.flops, cost.bytes) == \
        (plain.bound, plain.op_class, plain.flops, plain.bytes)
    assert cost.detail.startswith(why)


def test_families_without_a_table_and_batched_gemms_keep_the_plain_model():
    cm = CostModel(HW, tables=tables())
    for op in (Gemm(512, 4096, 4096, count=2), Collective("all_gather", 4 * MIB, (0, 1, 2, 3)),
               SendRecv(4 * MIB, 0, 1), Elementwise(4 * MIB)):
        assert cm.cost(op) == ROOF.cost(op)


def test_table_time_keeps_the_roofline_bound_and_op_class():
    cm = CostModel(HW, tables=tables())
    for op in (Gemm(1, 4096, 4096), Gemm(512, 4096, 4096), Gemm(700, 4096, 4096),
               Collective("all_reduce", 4 * MIB, (0, 1, 2, 3))):
        cost, plain = cm.cost(op), ROOF.cost(op)
        assert cost.seconds != plain.seconds and cost.detail.startswith("table:")
        assert (cost.bound, cost.op_class) == (plain.bound, plain.op_class)
    assert cm.cost(Gemm(1, 4096, 4096)).op_class == "memory"         # a decode GEMM streams weights
    assert cm.cost(Gemm(512, 4096, 4096)).op_class == "compute"


def test_programmatic_tables_replace_the_profile_table_of_the_same_family(tmp_path):
    csv = gemm_csv(tmp_path / "gemm.csv")
    hw = load_hardware(profile_with_tables(tmp_path, {"gemm": {"csv": "gemm.csv", "source": SRC}}))
    assert CostModel(hw).seconds(Gemm(512, 4096, 4096)) == 300 * US
    mine = MeasuredTable.from_rows("gemm", [dict(GEMM_ROWS[1], seconds=7 * US)], "measured: calibration")
    assert CostModel(hw, tables={"gemm": mine}).seconds(Gemm(512, 4096, 4096)) == 7 * US
    assert hw.measured_tables["gemm"].path == csv
    with pytest.raises(ValueError, match="MeasuredTable of family 'all_reduce'"):
        CostModel(HW, tables={"all_reduce": mine})


def test_tables_pickle_and_compare_by_rows():
    table = tables()["gemm"]
    again = pickle.loads(pickle.dumps(table))
    assert again == table and again.lookup((4096, 4096, "fp16"), 320)[0] == pytest.approx(150 * US)


# ------------------------------------------------------------------------------- loading

def test_profile_with_measured_tables_loads_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "tables").mkdir()
    gemm_csv(tmp_path / "tables" / "gemm.csv")
    write_csv(tmp_path / "tables" / "ar.csv", ["devices", "bytes", "seconds", "note"],
              [[r["devices"], r["bytes"], r["seconds"], "extra columns are ignored"] for r in AR_ROWS])
    path = profile_with_tables(tmp_path, {
        "gemm": {"csv": "tables/gemm.csv", "source": "measured: cuBLAS on one A100, by hand"},
        "all_reduce": {"csv": "tables/ar.csv", "source": "measured: nccl-tests on a DGX A100"}})
    monkeypatch.chdir(Path(path).anchor)           # relative CSV paths follow the profile, not the cwd
    hw = load_hardware(path)
    assert sorted(hw.measured_tables) == ["all_reduce", "gemm"]
    assert hw.sources["measured_tables.gemm"] == "measured: cuBLAS on one A100, by hand"
    assert len(hw.measured_tables["gemm"].rows) == len(GEMM_ROWS)
    cm = CostModel(hw)
    assert cm.seconds(Gemm(320, 4096, 4096)) == pytest.approx(150 * US, rel=1e-12)
    assert cm.seconds(Collective("all_reduce", 4 * MIB, (0, 1, 2, 3))) == pytest.approx(20 * US, rel=1e-12)


def test_an_edited_csv_is_read_again(tmp_path):
    gemm_csv(tmp_path / "gemm.csv")
    path = profile_with_tables(tmp_path, {"gemm": {"csv": "gemm.csv", "source": SRC}})
    assert CostModel(load_hardware(path)).seconds(Gemm(512, 4096, 4096)) == 300 * US
    gemm_csv(tmp_path / "gemm.csv", [dict(GEMM_ROWS[1], seconds=9 * US)])
    assert CostModel(load_hardware(path)).seconds(Gemm(512, 4096, 4096)) == 9 * US


@pytest.mark.parametrize("header, row, key, message", [
    (["m", "n", "k", "seconds"], [256, 4096, 4096, 1e-4], "header", "missing column(s) dtype"),
    (list(columns("gemm")), [256, 4096, 4096, "fp16", "fast"], "row 2", "seconds must be a number"),
    (list(columns("gemm")), [256, 4096, 4096, "fp16", -1e-4], "row 2", "seconds must be a finite number > 0"),
    (list(columns("gemm")), [256.5, 4096, 4096, "fp16", 1e-4], "row 2", "m must be an integer"),
    (list(columns("gemm")), [256, 4096, 4096, "fp17", 1e-4], "row 2", "dtype must be one of"),
    (list(columns("gemm")), [128, 4096, 4096, "fp16", 1e-4], "row 2", "repeats the shape of row 1"),
])
def test_bad_csv_names_the_file_and_row(tmp_path, header, row, key, message):
    good = [128, 4096, 4096, "fp16", 5e-5] if header == list(columns("gemm")) else [128, 4096, 4096, 5e-5]
    csv = write_csv(tmp_path / "bad.csv", header, [good, row])
    path = profile_with_tables(tmp_path, {"gemm": {"csv": "bad.csv", "source": SRC}})
    with pytest.raises(ConfigError) as exc:
        load_hardware(path)
    assert exc.value.where == csv and exc.value.key == key
    assert message in exc.value.message
    with pytest.raises(ConfigError) as direct:
        load_table_csv(csv, "gemm", SRC)
    assert (direct.value.where, direct.value.key) == (csv, key)


@pytest.mark.parametrize("entries, key, message", [
    ({"gemms": {"csv": "t.csv", "source": SRC}}, "measured_tables.gemms", "unknown op family"),
    ({"gemm": {"csv": "t.csv"}}, "measured_tables.gemm.source", "required"),
    ({"gemm": {"csv": "t.csv", "source": "from a friend"}}, "measured_tables.gemm.source", "KIND"),
    ({"gemm": {"csv": "nowhere.csv", "source": SRC}}, "measured_tables.gemm.csv", "no such file"),
    ({"gemm": {"csv": "t.csv", "source": SRC, "rows": 3}}, "measured_tables.gemm.rows", "unknown key"),
    ({"gemm": "t.csv"}, "measured_tables.gemm", "expected a mapping"),
])
def test_bad_measured_tables_entry_names_the_profile_and_key(tmp_path, entries, key, message):
    gemm_csv(tmp_path / "t.csv")
    path = profile_with_tables(tmp_path, entries)
    with pytest.raises(ConfigError) as exc:
        load_hardware(path)
    assert exc.value.where == path and exc.value.key == key
    assert message in exc.value.message


def test_programmatic_rows_are_checked_like_csv_rows():
    with pytest.raises(ConfigError, match="row 2: missing column 'seconds'"):
        MeasuredTable.from_rows("gemm", [GEMM_ROWS[0], {"m": 1, "n": 2, "k": 3, "dtype": "fp16"}], SRC)
    with pytest.raises(ConfigError, match="devices must be >= 2"):
        MeasuredTable.from_rows("all_reduce", [{"devices": 1, "bytes": 8, "seconds": 1e-6}], SRC)
    with pytest.raises(ConfigError, match="source"):
        MeasuredTable.from_rows("gemm", GEMM_ROWS, "my laptop")


# ------------------------------------------------------------------------------- simulation

class _Program:
    """Launches one GEMM on device 0 and one all-reduce on devices 0-3."""

    def setup(self, rt):
        pass

    def host(self, rt):
        rt.launch(Gemm(320, 4096, 4096, name="qkv"), 0)
        for d in range(4):
            rt.launch(Collective("all_reduce", 4 * MIB, (0, 1, 2, 3), name="ar"), d)
        return
        yield


def _no_requests(rt):
    rt.sources_done()
    return
    yield


def test_simulation_with_a_table_backed_profile_uses_the_table_times(tmp_path):
    gemm_csv(tmp_path / "gemm.csv")
    write_csv(tmp_path / "ar.csv", list(columns("all_reduce")),
              [[r["devices"], r["bytes"], r["seconds"]] for r in AR_ROWS])
    hw = load_hardware(profile_with_tables(tmp_path, {
        "gemm": {"csv": "gemm.csv", "source": SRC}, "all_reduce": {"csv": "ar.csv", "source": SRC}}))
    ops = SimRuntime(hw, 4).run(_Program(), _no_requests).ops()    # the runner's construction
    qkv = ops[ops["name"] == "qkv"]
    assert len(qkv) == 1 and qkv["isolated_s"].iloc[0] == pytest.approx(150 * US, rel=1e-12)
    ar = ops[ops["name"] == "ar"]
    assert len(ar) == 4 and np.allclose(ar["isolated_s"], 20 * US, rtol=1e-12)
    assert qkv["op_class"].iloc[0] == "compute"


# ------------------------------------------------------------------------------- Vidur

VIDUR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vidur"
VIDUR_MLP = VIDUR / "compute" / "a100" / "Llama-2-7b-hf" / "mlp.csv"


@pytest.mark.skipif(not VIDUR_MLP.is_file(), reason=f"Vidur measurements not found at {VIDUR} "
                    "(they live beside the repository, in ../shared/data/vidur; a plain clone has none)")
def test_vidur_gemm_table_beats_the_roofline_on_held_out_token_counts(tmp_path, capsys, record_property):
    """A100 Llama-2-7b mlp_up_proj (gate+up GEMM, TP 1): every other token count builds the table
    (written to tmp_path, never committed), the other half is predicted by interpolation."""
    import pandas as pd
    df = pd.read_csv(VIDUR_MLP)
    df = df[df["num_tensor_parallel_workers"] == 1]
    n = 2 * int(df["n_expanded_embd"].iloc[0])                 # gated MLP: gate and up in one GEMM
    k = int(df["n_embd"].iloc[0])
    ms = df.groupby("num_tokens")["time_stats.mlp_up_proj.median"].median() * 1e-3  # a few repeat
    tokens = list(ms.index)
    train = tokens[::2] + ([tokens[-1]] if len(tokens) % 2 == 0 else [])   # keep both ends
    held = [m for m in tokens if m not in set(train)]
    csv = write_csv(tmp_path / "vidur_gemm.csv", list(columns("gemm")),
                    [[int(m), n, k, "fp16", repr(float(ms[m]))] for m in train])
    table = load_table_csv(csv, "gemm", "measured: Vidur a100 Llama-2-7b mlp.csv, mlp_up_proj, TP 1")
    cm = CostModel(HW, tables={"gemm": table})
    measured = np.array([ms[m] for m in held])
    table_s = np.array([cm.seconds(Gemm(int(m), n, k)) for m in held])
    roof_s = np.array([ROOF.seconds(Gemm(int(m), n, k)) for m in held])
    assert all(cm.cost(Gemm(int(m), n, k)).detail.startswith("table: interpolated") for m in held)
    table_err = float(np.median(np.abs(table_s / measured - 1)) * 100)
    roof_err = float(np.median(np.abs(roof_s / measured - 1)) * 100)
    with capsys.disabled():
        print(f"\nVidur A100 Llama-2-7b mlp_up_proj TP1, {len(held)} held-out token counts "
              f"({len(train)} in the table): median abs error table {table_err:.2f}%, "
              f"roofline {roof_err:.2f}%")
    record_property("table_median_abs_pct", round(table_err, 2))
    record_property("roofline_median_abs_pct", round(roof_err, 2))
    assert table_err < roof_err
