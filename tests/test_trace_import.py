"""`parasim import-trace` on real PyTorch profiler traces made here, on CPU (and on CUDA if present).

The two-rank trace comes from a script run in a subprocess (two gloo ranks spawned there, so no
process group outlives it): GEMMs, attention and elementwise ops of known shapes, gloo collectives
and a send, then an asynchronous all-reduce with GEMMs on the main thread beside it (overlap for the
contention estimates). Only the bad-input cases are hand-written files.
"""
from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from simulator.cli import main                                    # noqa: E402
from simulator.cost import CostModel                             # noqa: E402
from simulator.cost_tables import load_table_csv                 # noqa: E402
from simulator.hardware import load_hardware                     # noqa: E402
from simulator.ops import Gemm                                   # noqa: E402
from simulator.trace_import import import_trace                  # noqa: E402

TWO_RANKS = textwrap.dedent('''
    import os, socket, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.nn.functional as F
    from torch.profiler import profile, ProfilerActivity

    def rank(r, port, path):
        torch.set_num_threads(1)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=r, world_size=2)
        a, b = torch.randn(64, 128), torch.randn(128, 256)
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            for _ in range(3):
                torch.mm(a, b)                                           # 64 x 256 x 128 fp32
            torch.addmm(torch.randn(96, dtype=torch.bfloat16), torch.randn(32, 64, dtype=torch.bfloat16),
                        torch.randn(64, 96, dtype=torch.bfloat16))     # 32 x 96 x 64 bf16
            F.linear(torch.randn(2, 8, 128), torch.randn(48, 128))      # 16 x 48 x 128 fp32
            torch.bmm(torch.randn(1, 24, 40), torch.randn(1, 40, 56))   # 24 x 56 x 40 fp32
            torch.bmm(torch.randn(3, 8, 8), torch.randn(3, 8, 8))       # batched: left out
            q = torch.randn(2, 4, 16, 32, dtype=torch.bfloat16)
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
            q, kv = torch.randn(1, 8, 4, 64), torch.randn(1, 2, 24, 64)
            F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
            x = torch.randn(1000)
            torch.add(x, x)                                              # 12000 bytes
            torch.relu(x)                                                # 8000
            F.silu(torch.randn(500, dtype=torch.bfloat16))               # 2000
            dist.all_reduce(torch.ones(1024))                            # 4096 bytes, 2 devices
            dist.all_gather([torch.empty(256) for _ in range(2)], torch.ones(256))   # 2048
            if r == 0:
                dist.send(torch.ones(100), 1)                            # 400 bytes
            else:
                dist.recv(torch.empty(100), 0)
            big = torch.ones(1 << 21)
            dist.all_reduce(big)                                         # alone
            work = dist.all_reduce(big, async_op=True)                   # beside GEMMs
            while not work.is_completed():
                torch.mm(a, b)
            work.wait()
        if r == 0:
            p.export_chrome_trace(path)
        dist.destroy_process_group()

    if __name__ == "__main__":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(rank, args=(port, sys.argv[1]), nprocs=2)
''')

GEMMS = {(64, 256, 128, "fp32"), (32, 96, 64, "bf16"), (16, 48, 128, "fp32"), (24, 56, 40, "fp32")}
ATTENTION = {(2, 16, 16, 4, 4, 32, "true", "bf16"), (1, 4, 24, 8, 2, 64, "false", "fp32")}


@pytest.fixture(scope="module")
def two_rank_trace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trace")
    script, trace = folder / "make_trace.py", folder / "rank0.json"
    script.write_text(TWO_RANKS, encoding="utf-8")
    subprocess.run([sys.executable, str(script), str(trace)], check=True, timeout=300,
                   capture_output=True)
    return trace


def one_thread_trace(path: Path, ops) -> Path:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        ops()
    p.export_chrome_trace(str(path))
    return path


def rows(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def imported(two_rank_trace, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    return import_trace(str(two_rank_trace), str(out), date="2030-01-02"), out


# ------------------------------------------------------------------------------- the tables

def test_gemm_table_has_exactly_the_traced_shapes(imported):
    result, out = imported
    got = {(int(r["m"]), int(r["n"]), int(r["k"]), r["dtype"]) for r in rows(out / "gemm.csv")}
    assert got == GEMMS
    assert all(float(r["seconds"]) > 0 for r in rows(out / "gemm.csv"))
    assert any("batched GEMM (batch 3)" in reason for reason in result.skipped)
    mm = next(r for r in rows(out / "gemm.csv") if r["m"] == "64")
    assert int(mm["samples"]) >= 4                      # three alone, the rest beside the all-reduce


def test_attention_table_reads_shapes_causality_and_dtype(imported):
    _, out = imported
    cols = ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal", "dtype")
    got = {tuple(int(r[c]) if c not in ("causal", "dtype") else r[c] for c in cols)
           for r in rows(out / "attention.csv")}
    assert got == ATTENTION
    assert all(float(r["seconds"]) > 0 for r in rows(out / "attention.csv"))
    # the KV cache's dtype is k's (SDPA takes q, k and v in one dtype)
    assert all(r["kv_dtype"] == r["dtype"] for r in rows(out / "attention.csv"))


def test_elementwise_and_communication_sizes(imported):
    _, out = imported
    assert {float(r["bytes"]) for r in rows(out / "elementwise.csv")} == {12000, 8000, 2000}
    ar = {(int(r["devices"]), float(r["bytes"])) for r in rows(out / "all_reduce.csv")}
    assert ar == {(2, 4096.0), (2, 4.0 * (1 << 21))}
    assert [(r["devices"], float(r["bytes"])) for r in rows(out / "all_gather.csv")] == [("2", 2048.0)]
    assert [float(r["bytes"]) for r in rows(out / "send_recv.csv")] == [400.0]


def test_every_file_states_its_provenance(imported, two_rank_trace):
    import hashlib
    result, out = imported
    digest = hashlib.sha256(two_rank_trace.read_bytes()).hexdigest()
    assert result.source.startswith(f"measured: imported from {two_rank_trace} (sha256 {digest})")
    assert result.source.endswith(", 2030-01-02")
    for f in result.files:
        text = Path(f).read_text(encoding="utf-8")
        assert digest in text and "2030-01-02" in text, f
    for f in out.glob("*.csv"):
        assert all(r["source"] == result.source for r in rows(f))


def test_tables_load_and_a_profile_naming_them_answers_from_them(imported):
    result, out = imported
    snippet = yaml.safe_load((out / "measured_tables.yaml").read_text(encoding="utf-8"))
    assert set(snippet["measured_tables"]) == set(result.tables)
    for family, entry in snippet["measured_tables"].items():
        load_table_csv(str(out / entry["csv"]), family, entry["source"])
    profile = yaml.safe_load(resources.files("hwprofiles").joinpath("a100-sxm4-80gb.yaml")
                             .read_text("utf-8"))
    profile["name"] = "a100-imported"
    profile.update(snippet)
    path = out / "a100-imported.yaml"
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    hw = load_hardware(str(path))
    assert set(hw.measured_tables) == set(result.tables)
    mm = next(r for r in rows(out / "gemm.csv") if r["m"] == "64")
    cost = CostModel(hw).cost(Gemm(64, 256, 128, "fp32"))
    assert cost.seconds == pytest.approx(float(mm["seconds"]))
    assert cost.detail == "table: measured at m=64"
    assert "table" not in CostModel(hw).cost(Gemm(64, 512, 128, "fp32")).detail.split(":")[0]


def test_contention_is_estimated_from_the_overlapping_all_reduce(imported):
    result, out = imported
    doc = yaml.safe_load((out / "contention.yaml").read_text(encoding="utf-8"))
    assert doc["overlap_found"] is True and "median" in doc["method"]
    pairs = {e["pair"]: e for e in doc["estimates"]}
    assert "compute_by_comm" in pairs
    e = pairs["compute_by_comm"]
    assert e["ratio"] > 0 and e["shapes"] >= 1 and e["overlapped_samples"] >= 1
    assert doc["slowdown"]["compute_by_comm"]["value"] >= 1.0
    assert doc["slowdown"]["compute_by_comm"]["source"].startswith("measured: imported from")


# ------------------------------------------------------------------------------- the command line

def test_cli_writes_every_file_atomically_and_gz_works(tmp_path, monkeypatch, capsys):
    trace = one_thread_trace(tmp_path / "t.json", lambda: [torch.mm(torch.randn(8, 16),
                                                                     torch.randn(16, 4))
                                                           for _ in range(3)])
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(trace.read_bytes()))
    import simulator.io as sio
    renamed, real = [], os.replace
    monkeypatch.setattr(sio.os, "replace", lambda a, b: (renamed.append((a, b)), real(a, b))[1])
    out = tmp_path / "out"
    assert main(["import-trace", str(gz), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no overlap in the trace to estimate from" in text
    written = sorted(os.listdir(out))
    assert written == ["contention.yaml", "gemm.csv", "measured_tables.yaml"]
    assert sorted(os.path.basename(b) for _, b in renamed) == written
    assert all(os.path.dirname(a) == os.path.dirname(b) and os.path.basename(a).startswith(".tmp-")
               for a, b in renamed)
    assert [(r["m"], r["n"], r["k"], r["dtype"], r["samples"]) for r in rows(out / "gemm.csv")] == \
        [("8", "4", "16", "fp32", "3")]
    doc = yaml.safe_load((out / "contention.yaml").read_text(encoding="utf-8"))
    assert doc["overlap_found"] is False and "no overlap" in doc["note"]


def test_cli_dtype_keeps_only_that_dtype(imported, two_rank_trace, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["import-trace", str(two_rank_trace), "--out", str(out), "--dtype", "bf16"]) == 0
    assert {r["dtype"] for r in rows(out / "gemm.csv")} == {"bf16"}
    assert {r["dtype"] for r in rows(out / "attention.csv")} == {"bf16"}
    assert "left out by --dtype" in capsys.readouterr().out


def bad_inputs(tmp_path: Path) -> dict:
    files = {"not-json.json": b"this is not json\n", "no-events.json": b'{"schemaVersion": 1}',
             "list.json": b"[1, 2]", "bad.json.gz": b"\x1f\x8b\x08garbage",
             "latin1.json": "{\"traceEvents\": [\"\xe9\"]}".encode("latin-1")}
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    out["no-ops.json"] = one_thread_trace(tmp_path / "no-ops.json", lambda: torch.empty(10))
    return out


@pytest.mark.parametrize("name, message", [
    ("not-json.json", "not valid JSON"), ("no-events.json", "traceEvents: missing"),
    ("list.json", "traceEvents: missing"), ("bad.json.gz", "not a readable gzip file"),
    ("latin1.json", "not UTF-8"), ("no-ops.json", "no op parasim can use"),
    ("absent.json", "cannot read the trace")])
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, name, message):
    path = bad_inputs(tmp_path).get(name, tmp_path / name)
    out = tmp_path / "out"
    assert main(["import-trace", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"parasim: error: {path}") and message in err
    assert not out.exists()


# ------------------------------------------------------------------------------- CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trace_times_gemms_by_their_kernels(tmp_path):
    from torch.profiler import ProfilerActivity, profile
    a = torch.randn(256, 512, device="cuda", dtype=torch.float16)
    b = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    torch.mm(a, b)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as p:
        for _ in range(5):
            torch.mm(a, b)
            torch.relu(a)
        torch.cuda.synchronize()
    trace = tmp_path / "cuda.json"
    p.export_chrome_trace(str(trace))
    result = import_trace(str(trace), str(tmp_path / "out"))
    gemm = rows(tmp_path / "out" / "gemm.csv")
    assert [(r["m"], r["n"], r["k"], r["dtype"], r["samples"]) for r in gemm] == \
        [("256", "1024", "512", "fp16", "5")]
    assert 0 < float(gemm[0]["seconds"]) < 0.01
    assert [float(r["bytes"]) for r in rows(tmp_path / "out" / "elementwise.csv")] == [4 * 256 * 512]
    assert result.rows["gemm"] == (1, 5)
