"""TorchRuntime (simulator/torchrt): the strategies, unchanged, on real torch work on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from simulator.batching import Scheduler, ServingConfig
from simulator.engine import SimRuntime
from simulator.errors import DeadlockError
from simulator.hardware import load_hardware
from simulator.jobs import make_strategy
from simulator.model import load_model
from simulator.ops import Collective, Gemm, SendRecv
from simulator.runtime import RUNTIME_VERBS, Runtime
from simulator.torchrt.clock import RealClock
from simulator.workload import Request, open_loop

torch = pytest.importorskip("torch")
from simulator.torchrt.comm import Comm  # noqa: E402
from simulator.torchrt.runtime import TorchRuntime  # noqa: E402
from simulator.torchrt.work import Work, ragged_shape, torch_dtype  # noqa: E402

HW = load_hardware("a100-sxm4-80gb")
TINY = load_model({"preset": "llama-2-7b", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4,
                   "ffn": 512, "vocab": 1000})
SPECS = {"tp": {"name": "tp"}, "pp": {"name": "pp", "tp": 1}, "iso": {"name": "iso"},
         "liger": {"name": "liger"}}


def _torch_run(name, reqs, continuous=False, devices=2):
    strategy = make_strategy(SPECS[name], TINY, devices, "test", "strategy")
    sched = Scheduler(ServingConfig(scheduler="continuous", max_num_batched_tokens=128),
                      100_000) if continuous else None
    return TorchRuntime(HW, devices, stall_s=30).run(strategy, open_loop(reqs), sched)


def _sim_run(name, reqs, continuous=False, devices=2):
    strategy = make_strategy(SPECS[name], TINY, devices, "test", "strategy")
    sched = Scheduler(ServingConfig(scheduler="continuous", max_num_batched_tokens=128),
                      100_000) if continuous else None
    return SimRuntime(HW, devices, mirror=False, segments=False).run(strategy, open_loop(reqs),
                                                                       sched)


def _requests(n=3):
    return [Request(i, 0.002 * i, 48, 3) for i in range(n)]


def _per_stream(trace):
    seqs = defaultdict(list)
    for r in sorted(trace.rows, key=lambda r: (r.device, r.stream, r.start_s)):
        seqs[(r.device, r.stream)].append((r.name, r.request, r.phase))
    return dict(seqs)


def test_torch_runtime_implements_the_protocol():
    rt = TorchRuntime(HW, 2)
    try:
        assert isinstance(rt, Runtime)
        assert all(hasattr(rt, verb) for verb in RUNTIME_VERBS)
    finally:
        rt.close()


@pytest.mark.parametrize("continuous", [False, True], ids=["static", "continuous"])
@pytest.mark.parametrize("name", list(SPECS))
def test_every_strategy_runs_unchanged_and_finishes_every_request(name, continuous):
    trace = _torch_run(name, _requests(), continuous)
    assert len(trace.requests) == 3
    for r in trace.requests:
        assert r.finish_s is not None and r.arrival_s <= r.first_token_s <= r.finish_s
    assert trace.meta["runtime"] == "torch" and trace.rows
    assert {r.device for r in trace.rows} == {0, 1}
    if continuous:
        assert trace.steps


@pytest.mark.parametrize("name,n,continuous", [("tp", 3, False), ("iso", 2, False),
                                               ("pp", 1, False), ("liger", 1, False),
                                               ("tp", 1, True), ("iso", 1, True)])
def test_the_same_host_program_launches_the_same_ops_on_both_runtimes(name, n, continuous):
    """Per (device, stream), the ops in stream order (name, request, phase) are identical between
    SimRuntime (every device simulated) and TorchRuntime, where the program is deterministic."""
    reqs = [Request(i, 0.0, 48, 3) for i in range(n)]
    sim = _per_stream(_sim_run(name, reqs, continuous))
    real = _per_stream(_torch_run(name, reqs, continuous))
    assert sim.keys() == real.keys()
    for key in sim:
        assert sim[key] == real[key], key


def _threads(fn, n=2):
    out, errors = {}, []

    def body(rank):
        try:
            out[rank] = fn(rank)
        except BaseException as exc:     # pragma: no cover - reported below
            errors.append(exc)
    ts = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors
    return out


@pytest.mark.parametrize("emulate", [False, True], ids=["gloo", "emulated"])
def test_collectives_really_move_and_reduce_values(emulate):
    comm = Comm(timeout_s=20)
    if emulate:
        comm.emulated.add("reduce_scatter")
    group = (0, 1)
    ar = Collective("all_reduce", 16, group, "ar")           # 4 float32 elements
    ag = Collective("all_gather", 16, group, "ag")           # 2 from each member
    rs = Collective("reduce_scatter", 16, group, "rs")
    a2a = Collective("all_to_all", 16, group, "a2a")
    p2p = SendRecv(12, 0, 1, "p2p")

    def member(dev):
        res = {}
        for op, data in ((ar, torch.full((4,), dev + 1.0)), (ag, torch.full((2,), float(dev))),
                         (rs, torch.arange(4.0) * (dev + 1)), (a2a, torch.arange(4.0) + 10 * dev),
                         (p2p, torch.full((3,), 7.0) if dev == 0 else torch.zeros(3))):
            _note, run, _key = comm.prepare(op, dev, 0, data=data)
            res[op.name] = run().tolist()
        return res
    out = _threads(member)
    assert out[0]["ar"] == out[1]["ar"] == [3.0] * 4
    assert out[0]["ag"] == out[1]["ag"] == [0.0, 0.0, 1.0, 1.0]
    assert out[0]["rs"] == [0.0, 3.0] and out[1]["rs"] == [6.0, 9.0]
    assert out[0]["a2a"] == [0.0, 1.0, 10.0, 11.0] and out[1]["a2a"] == [2.0, 3.0, 12.0, 13.0]
    assert out[1]["p2p"] == [7.0] * 3


class _Program:
    """A hand-written host program (strategies' shape) for the event and timing tests."""

    def __init__(self, host, setup=None):
        self._host, self._setup = host, setup

    def setup(self, rt):
        if self._setup:
            self._setup(rt)

    def host(self, rt):
        return self._host(rt)


def _no_requests(serving):
    serving.sources_done()
    return
    yield


def test_a_wait_on_an_event_really_waits():
    """Device 0's second stream waits on an event recorded after a long op on device 1: its op
    starts only after that op ended (without the wait it would start at once)."""
    big, small = Gemm(384, 384, 384, "fp32", "big"), Gemm(8, 8, 8, "fp32", "small")

    def host(rt):
        ev = rt.new_event("after_big")
        for _ in range(6):
            rt.launch(big, 1, 0)
        rt.record(ev, 1, 0)
        rt.wait(0, 1, ev)
        rt.launch(small, 0, 1)
        rt.launch(small, 0, 0)               # not gated: runs at once
        yield from rt.synchronize(ev)
        assert rt.query(ev) and rt.now >= 0
    trace = TorchRuntime(HW, 2, stall_s=30).run(
        _Program(host, lambda rt: rt.create_stream(0, -1)), _no_requests)
    rows = {(r.device, r.stream, r.name, r.start_s): r for r in trace.rows}
    last_big = max(r.end_s for r in rows.values() if r.name == "big")
    gated = next(r for r in rows.values() if r.device == 0 and r.stream == 1)
    free = next(r for r in rows.values() if r.device == 0 and r.stream == 0)
    assert gated.start_s >= last_big
    assert free.start_s < last_big


def test_a_run_log_records_how_late_the_host_and_streams_react():
    """RunLog: one blocking synchronize (its wake-up after the event), one event with a host
    callback, one blocked stream wait, and the launches (an op launched on both devices in turn
    is one SPMD launch)."""
    from simulator.torchrt.runtime import RunLog
    big, small = Gemm(384, 384, 384, "fp32", "big"), Gemm(8, 8, 8, "fp32", "small")
    seen = []

    def host(rt):
        ev = rt.new_event("after_big")
        for _ in range(4):
            rt.launch(big, 1, 0)
        rt.launch_seq([small], (0, 1))        # one SPMD launch
        rt.record(ev, 1, 0)
        rt.when(ev, seen.append)
        rt.wait(0, 1, ev)
        rt.launch(small, 0, 1)
        yield from rt.synchronize(ev)
        seen.append(rt.now)
    rt = TorchRuntime(HW, 2, stall_s=30)
    rt.run_log = log = RunLog()
    rt.run(_Program(host, lambda r: r.create_stream(0, -1)), _no_requests)
    assert (log.host.launches, log.host.spmd_launches) == (7, 6)
    assert len(log.host.wakeups_s) == 1 and 0 <= log.host.wakeups_s[0] < 1.0
    assert len(log.host.callbacks_s) == 1 and 0 <= log.host.callbacks_s[0] < 1.0
    assert len(log.host.event_waits_s) == 1 and 0 <= log.host.event_waits_s[0] < 1.0
    assert len(log.host.records_s) == 1 and 0 <= log.host.records_s[0] < 1.0
    # every stream starts idle: at least one wake-up per stream, none of them negative
    assert len(log.host.idle_wakeups_s) >= 3 and min(log.host.idle_wakeups_s) >= 0
    assert len(log.host.dispatches_s) == 7 and min(log.host.dispatches_s) >= 0
    assert seen[1] >= seen[0] + log.host.wakeups_s[0] - 1e-9     # resumed that long after
    assert log.host.busy_s > 0


def test_host_costs_spread_busy_time_over_the_spmd_launches():
    from simulator.calibrate.inrun import host_costs
    from simulator.torchrt.runtime import HostLog
    log = HostLog(0.03, 2000, 1000, [100e-6, 300e-6], [50e-6])
    out = host_costs(log, "measured: test")
    assert out["launch_overhead_us"]["value"] == pytest.approx(30.0)    # 0.03 s / 1000
    assert out["wakeup_us"]["value"] == pytest.approx(200.0)
    assert out["callback_us"]["value"] == pytest.approx(50.0)
    assert "1000 of 2000" in out["launch_overhead_us"]["source"]
    quiet = host_costs(HostLog(0.01, 100, 100), "measured: test")
    assert set(quiet) == {"launch_overhead_us"}                        # nothing seen, nothing said
    total = HostLog()
    total.add(log)
    total.add(HostLog(0.01, 5, 5, [1e-6], []))
    assert (total.launches, total.spmd_launches, len(total.wakeups_s)) == (2005, 1005, 3)


def test_measured_times_are_positive_and_ordered_per_stream():
    trace = _torch_run("iso", _requests(2))
    by_stream = defaultdict(list)
    for r in trace.rows:
        assert 0 <= r.start_s <= r.end_s and r.start_s <= r.transfer_start_s <= r.end_s
        by_stream[(r.device, r.stream)].append(r)
    for rows in by_stream.values():
        rows.sort(key=lambda r: r.start_s)
        for a, b in zip(rows, rows[1:]):
            assert b.start_s >= a.end_s
    assert any(r.op_class == "comm" for r in trace.rows)
    assert trace.meta["makespan_s"] > 0 and all(d.busy_s > 0 for d in trace.devices)


def test_a_stuck_program_is_reported_as_a_deadlock():
    def host(rt):
        rt.wait(0, 0, rt.new_event("never"))
        rt.launch(Gemm(8, 8, 8, "fp32", "g"), 0, 0)
        return
        yield
    with pytest.raises(DeadlockError, match="waiting on event 'never'"):
        TorchRuntime(HW, 1, stall_s=0.3).run(_Program(host), _no_requests)


def test_a_run_keeps_the_heap_it_started_with_out_of_the_garbage_collector():
    """The objects alive when a run starts are frozen for the run (clock.frozen_heap): a full
    collection over them stopped every thread for 0.3-0.6 s in a measured run. Unfrozen again
    after the run, whether it ended or failed; what the run itself makes is still collected."""
    import gc
    before = []                                     # a tracked object alive before the run
    seen = []

    def collected(obj) -> bool:
        return any(o is obj for o in gc.get_objects())

    def host(rt):
        during = []
        seen.append((collected(before), collected(during)))
        rt.launch(Gemm(8, 8, 8, "fp32", "g"), 0, 0)
        if len(seen) > 1:
            rt.wait(0, 0, rt.new_event("never"))
            rt.launch(Gemm(8, 8, 8, "fp32", "g"), 0, 0)
        return
        yield
    TorchRuntime(HW, 1, stall_s=5).run(_Program(host), _no_requests)
    assert seen == [(False, True)] and collected(before) and gc.get_freeze_count() == 0
    seen.append("a second run gets stuck")
    with pytest.raises(DeadlockError):
        TorchRuntime(HW, 1, stall_s=0.3).run(_Program(host), _no_requests)
    assert seen[2] == (False, True) and collected(before) and gc.get_freeze_count() == 0


def test_the_clock_sleeps_calls_later_and_does_not_spin():
    clock = RealClock()
    seen = []

    def gen():
        yield from clock.sleep(0.05)
        seen.append(("slept", clock.now))
        clock.call_later(0.05, lambda: seen.append(("later", clock.now)))
    clock.driver.spawn(gen())
    cpu0 = time.process_time()
    clock.driver.run(lambda: True, 10.0, lambda: None)
    assert [k for k, _ in seen] == ["slept", "later"]
    assert seen[0][1] >= 0.05 and seen[1][1] >= 0.1
    assert time.process_time() - cpu0 < 0.05        # it slept, it did not spin


def test_ops_as_work():
    assert torch_dtype("fp16") == torch.float32 and torch_dtype("fp16", "cuda") == torch.float16
    work = Work()
    assert work.prepare(Gemm(4, 6, 5, "fp32"))().shape == (4, 6)
    assert tuple(work.prepare(Gemm(4, 6, 5, "fp32", count=3))().shape) == (3, 4, 6)
    from simulator.ops import Attention, Elementwise, RaggedAttention
    out = work.prepare(Attention(2, 3, 10, 4, 2, 16, True, "fp32"))()   # GQA, lower-right causal
    assert tuple(out.shape) == (2, 4, 3, 16)
    rag = RaggedAttention(3, 7, 20.0, 40, 3, 4, 4, 16, "fp32")
    assert ragged_shape(rag) == (3, 3, 14)
    assert tuple(work.prepare(rag)().shape) == (3, 4, 3, 16)
    assert work.prepare(Elementwise(1200))().numel() == 100


def test_the_simulator_does_not_import_torch():
    code = ("import sys, simulator.engine, simulator.runner, simulator.cli, simulator.torchrt.clock;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def _experiment(tmp_path, model, requests=3):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\n"
        f"model: {model}\n"
        "hardware: a100-sxm4-80gb\ndevices: 2\nseed: 0\n"
        "strategies: [tp, {name: pp, tp: 1}]\n"
        f"workload: {{requests: {requests}, batch: 1, arrival: {{kind: poisson, rate_rps: 100}}, "
        "prompt_tokens: 32, output_tokens: 3}\n")
    return str(path)


def test_parasim_run_with_the_torch_runtime(tmp_path, capsys):
    from simulator.cli import main
    model = ("{preset: llama-2-7b, layers: 2, hidden: 256, heads: 4, kv_heads: 4, ffn: 512, "
             "vocab: 1000}")
    out = tmp_path / "out"
    assert main(["run", _experiment(tmp_path, model), "--runtime", "torch", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "runtime: torch" in printed and "pp[tp=1]" in printed
    import pandas as pd
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["requests"]) == [3, 3] and (summary["jct_mean_s"] > 0).all()
    assert not (out / ".cache").exists() or not list((out / ".cache").iterdir())


def test_a_model_too_big_for_this_machine_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """llama-2-13b fits two simulated A100s but not half of a 16 GiB machine."""
    from simulator import jobs
    from simulator.cli import main
    from simulator.experiment import load_experiment
    monkeypatch.setattr(jobs, "host_memory_bytes", lambda: 16 * 2**30)
    path = _experiment(tmp_path, "llama-2-13b")
    built = jobs.build(load_experiment(path)[0])
    problem = jobs.torch_fit_problem(built)
    assert problem.startswith("model: llama-2-13b needs") and "--runtime torch" in problem
    assert jobs.torch_fit_problem(built, memory_bytes=2**50) is None
    assert main(["run", path, "--runtime", "torch", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no point can run with --runtime torch" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
@pytest.mark.parametrize("name", ["tp", "iso"])
def test_the_cuda_path_runs_a_strategy(name):          # pragma: no cover - needs CUDA
    strategy = make_strategy(SPECS[name], TINY, 2, "test", "strategy")
    trace = TorchRuntime(HW, 2, device_type="cuda", stall_s=60).run(strategy,
                                                                   open_loop(_requests()))
    assert all(r.finish_s is not None for r in trace.requests)
    assert all(0 <= r.start_s <= r.end_s for r in trace.rows)
