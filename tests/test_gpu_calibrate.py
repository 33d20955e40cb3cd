"""`parasim calibrate --device cuda` (simulator/calibrate/gpu.py, gpu_profile.py) without a GPU:
every benchmark and the profile writer driven through HostTiming, which implements CudaTiming's
calls for synchronous CPU work; the runs on a real GPU are in test_validation.py (skipped
without CUDA)."""
from __future__ import annotations

import math

import pytest
import yaml

torch = pytest.importorskip("torch")
from simulator.calibrate import gpu  # noqa: E402
from simulator.calibrate.gpu_profile import (calibrate_gpu, factor_contention,  # noqa: E402
                                             gpu_profile_data, matching_builtin, single_gpu_links)
from simulator.calibrate.shapes import Grid, model_shapes  # noqa: E402
from simulator.cli import main  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402
from simulator.model import load_model  # noqa: E402
from simulator.ops import Elementwise, Gemm  # noqa: E402

TINY = {"preset": "llama-2-7b", "name": "tiny", "layers": 1, "hidden": 64, "heads": 4,
        "kv_heads": 4, "ffn": 128, "vocab": 100, "dtype": "fp32"}
GRID = Grid(max_tokens=8, max_context=32, bytes_hi=2**12, elementwise_hi=2**14)
GIB = 2**30


def tiny():
    return load_model(TINY, "test", "model")


class CountingTiming(gpu.HostTiming):
    """HostTiming that notes what the benchmarks asked of it."""

    def __init__(self):
        super().__init__()
        self.holds = self.syncs = 0
        self.streams: list = []

    def stream(self, high_priority: bool = False):
        self.streams.append(high_priority)
        return len(self.streams)

    def hold(self, stream, seconds: float = gpu.HOLD_S) -> None:
        self.holds += 1

    def sync(self) -> None:
        self.syncs += 1


def test_series_times_each_call_behind_one_hold():
    timing = CountingTiming()
    calls = []
    times = gpu.series(timing, timing.stream(), lambda: calls.append(1), 5)
    assert len(times) == 5 and len(calls) == 5 and all(t >= 0 for t in times)
    assert timing.holds == 1 and timing.syncs == 1


def test_time_ops_medians_and_order():
    ops = [Gemm(64, 64, 64, "fp32"), Elementwise(float(2**16)), Gemm(256, 256, 256, "fp32")]
    seen = []
    timed = gpu.time_ops(gpu.HostTiming(), ops, 3, progress=lambda i, n: seen.append((i, n)))
    assert [t.op for t in timed] == ops and all(t.seconds > 0 and t.samples == 3 for t in timed)
    assert timed[2].seconds > timed[0].seconds          # 64x the flops takes longer
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_contention_measures_both_class_pairs_and_the_low_priority_share():
    timing = CountingTiming()
    cont = gpu.contention(timing, 64, "fp32", 3)
    assert set(k for k in cont if isinstance(k, tuple)) == {("compute", "memory"),
                                                             ("memory", "compute")}
    assert all(r > 0 and math.isfinite(r) for k, r in cont.items() if isinstance(k, tuple))
    assert 0 < cont["low_priority_share"] <= 1
    assert set(cont["alone"]) == {"compute", "memory"}
    assert True in timing.streams                       # a high-priority stream was asked for


def test_factor_contention_takes_comm_pairs_from_the_matching_profile():
    cont = {("compute", "memory"): 1.3, ("memory", "compute"): 0.9, "low_priority_share": 0.2}
    h200 = matching_builtin({"name": "NVIDIA H200", "memory_bytes": 140.4 * GIB})
    out = factor_contention(cont, h200)
    assert out["model"] == "factor"
    s = out["slowdown"]
    assert s["compute_by_memory"]["value"] == 1.3 and s["memory_by_compute"]["value"] == 1.0
    assert s["compute_by_memory"]["source"].startswith("measured:")
    assert s["compute_by_comm"]["value"] == 1.19
    assert "built-in profile h200-sxm-141gb" in s["compute_by_comm"]["source"]
    alone = factor_contention(cont, None)["slowdown"]
    assert alone["comm_by_compute"]["value"] == 1.0
    assert alone["comm_by_compute"]["source"].startswith("assumed:")
    assert out["low_priority_share"]["value"] == 0.2
    even = factor_contention({**cont, "low_priority_share": 1.0}, None)["low_priority_share"]
    assert even["value"] == 0.5 and "kept within" in even["source"]


@pytest.mark.parametrize("name, gib, builtin", [
    ("NVIDIA H200", 140.4, "h200-sxm-141gb"),
    ("NVIDIA H100 80GB HBM3", 79.6, "h100-sxm5-80gb"),
    ("NVIDIA H100 PCIe", 79.6, "h100-pcie-80gb"),
    ("NVIDIA H100 NVL", 93.6, "h100-nvl-94gb"),
    ("NVIDIA A100-SXM4-80GB", 80, "a100-sxm4-80gb"),
    ("Tesla V100-SXM2-32GB", 32, "v100-sxm2-32gb"),
    ("AMD Instinct MI300X", 191, "mi300x-192gb"),
    ("NVIDIA A100 80GB PCIe", 80, None),         # no built-in of that form factor and memory
    ("NVIDIA A10", 22, None),
    ("NVIDIA H200", None, None),                 # memory unknown: no match
])
def test_matching_builtin(name, gib, builtin):
    got = matching_builtin({"name": name, "memory_bytes": gib * GIB if gib else None})
    assert (got and got["_name"]) == builtin


def test_one_gpu_copies_the_builtin_links_with_their_sources():
    h200 = matching_builtin({"name": "NVIDIA H200", "memory_bytes": 140.4 * GIB})
    links = single_gpu_links(h200)
    assert links["topology"] == "nvswitch" and "fitted:" in str(links["collectives"][2])
    placeholder = single_gpu_links(None)
    assert placeholder["p2p"]["alpha_us"]["source"].startswith("assumed:")


def _fake_measurements(model):
    compute = [gpu.Timed(Gemm(512, 512, 512, "fp16"), 2e-6, 3),
               gpu.Timed(Gemm(64, 512, 512, "fp16"), 1e-6, 3),
               gpu.Timed(Elementwise(float(2**24)), 5e-6, 3)]
    cont = {("compute", "memory"): 1.2, ("memory", "compute"): 1.4, "low_priority_share": 0.1}
    overheads = {"tiny_op_s": 3e-6, "launch_s": 6e-6, "gap_s": 1e-6}
    return compute, cont, overheads


def test_gpu_profile_data_is_the_gpus_own(tmp_path):
    model = load_model({**TINY, "dtype": "fp16"}, "test", "model")
    compute, cont, overheads = _fake_measurements(model)
    facts = {"name": "NVIDIA H200", "sms": 132, "memory_bytes": 140.4 * GIB,
             "source": "torch.cuda.get_device_properties"}
    data = gpu_profile_data(model, 1, compute, [], cont, overheads, {"fp16": 900e12,
                                                                      "fp32": 50e12}, facts)
    dev = data["device"]
    assert data["name"] == "nvidia-h200-calibrated" and dev["name"] == "NVIDIA H200"
    assert dev["sms"]["value"] == 132 and abs(dev["memory_gib"]["value"] - 140.4) < 1e-6
    assert dev["peak_tflops"]["fp16"]["value"] == 900
    assert dev["memory_bandwidth_gb_per_s"]["value"] == pytest.approx(2**24 / 5e-6 / 1e9, 1e-4)
    assert "kernels" in dev["dispatch_us"]["source"]
    assert data["interconnect"]["topology"] == "nvswitch"        # the H200 profile's
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    hw = load_hardware(str(path))                                # every number has a source
    assert hw.device.sms == 132 and hw.contention.model == "factor"
    assert hw.contention.slowdown[("memory", "compute")] == 1.4


def test_calibrate_gpu_on_host_timing_one_device(tmp_path):
    model = tiny()
    shapes = model_shapes(model, 1, GRID)
    lines = []
    out = tmp_path / "host.yaml"
    cal = calibrate_gpu(model, 1, str(out), shapes, reps=2, log=lines.append,
                        timing=gpu.HostTiming())
    hw = load_hardware(str(out))
    assert set(hw.measured_tables) == {"gemm", "attention", "elementwise"}
    assert hw.contention.model == "factor" and hw.max_devices == 1
    assert hw.interconnect.p2p is not None                       # placeholders, said as assumed
    assert "assumed:" in hw.sources["interconnect.p2p.alpha_us"]
    assert cal.rows["gemm"] == len(shapes.gemm)
    assert any("peak GEMM rates" in line for line in lines)
    assert any("two-stream contention" in line for line in lines)


def test_calibrate_gpu_on_host_timing_two_devices_measures_links(tmp_path):
    model = tiny()
    shapes = model_shapes(model, 2, GRID)
    out = tmp_path / "host2.yaml"
    calibrate_gpu(model, 2, str(out), shapes, reps=2, log=lambda line: None,
                  timing=gpu.HostTiming())
    hw = load_hardware(str(out))
    assert "fitted:" in hw.sources["interconnect.collectives.2.alpha_us"]
    assert {"all_reduce", "send_recv"} <= set(hw.measured_tables)
    assert hw.interconnect.topology == "pcie_p2p"                # no built-in matches this CPU


def test_calibrate_cuda_devices_must_be_positive(tmp_path, capsys):
    out = tmp_path / "p" / "g.yaml"
    assert main(["calibrate", "--device", "cuda", "--devices", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--devices" in err and ">= 1" in err
    assert not (tmp_path / "p").exists()


def test_calibrate_cpu_still_needs_two_devices(tmp_path, capsys):
    assert main(["calibrate", "--device", "cpu", "--devices", "1",
                 "--out", str(tmp_path / "c.yaml")]) == 2
    assert ">= 2" in capsys.readouterr().err


def test_run_device_cuda_needs_the_torch_runtime(capsys):
    assert main(["run", "experiments/quickstart.yaml", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runtime torch" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_device_cuda_without_a_gpu(capsys):
    assert main(["run", "experiments/quickstart.yaml", "--runtime", "torch",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_validate_device_cuda_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["validate", "experiments/validation/validate-cpu.yaml", "--device", "cuda",
                 "--out", str(out)]) == 2
    assert "no CUDA" in capsys.readouterr().err and not out.exists()


def test_gpu_fit_problem_counts_one_device_against_one_gpu():
    from simulator.experiment import load_experiment
    from simulator.jobs import build, torch_fit_problem
    job = load_experiment("experiments/quickstart.yaml")[0]
    built = build(job)
    assert torch_fit_problem(built, memory_bytes=1e15, runtime="torch-cuda") is None
    problem = torch_fit_problem(built, memory_bytes=1e6, runtime="torch-cuda")
    assert problem.startswith("model:") and "per device" in problem
