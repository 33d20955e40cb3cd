"""Continuous batching through the engine: every strategy's batch host, closed-form checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.batching import Scheduler, ServingConfig
from simulator.engine import SimRuntime
from simulator.hardware import load_hardware
from simulator.jobs import make_strategy
from simulator.model import load_model
from simulator.workload import Request, open_loop

HW = load_hardware("a100-sxm4-80gb")
MODEL = load_model("llama-2-7b").with_layers(4)
STRATEGIES = {"tp": {"name": "tp"}, "pp": {"name": "pp", "tp": 1}, "iso": {"name": "iso"},
              "liger": {"name": "liger"}}


def _run(spec, reqs, devices=2, kv_blocks=100_000, segments=True, mirror=True, **cfg):
    strategy = make_strategy(spec, MODEL, devices, "test", "strategy")
    rt = SimRuntime(HW, devices, segments=segments, mirror=mirror)
    sched = None
    if cfg is not None:
        sched = Scheduler(ServingConfig(scheduler="continuous", **cfg), kv_blocks)
    return rt.run(strategy, open_loop(reqs), sched)


def _static(spec, reqs, devices=2):
    strategy = make_strategy(spec, MODEL, devices, "test", "strategy")
    return SimRuntime(HW, devices).run(strategy, open_loop(reqs))


def _times(trace):
    return {r.request: (r.first_token_s - r.arrival_s, r.finish_s - r.arrival_s)
            for r in trace.requests}


@pytest.mark.parametrize("name", ["tp", "pp", "iso"])
def test_a_lone_request_gives_the_static_result(name):
    """One request, a prompt within the budget: the same steps, ops and times as static serving
    (iso splits the prompt into the same chunks either way; liger's window differs by design)."""
    reqs = [Request(0, 0.0, 300, 5)]
    cont = _times(_run(STRATEGIES[name], reqs, max_num_batched_tokens=512))
    stat = _times(_static(STRATEGIES[name], reqs))
    assert cont.keys() == stat.keys()
    for rid in stat:
        assert cont[rid] == pytest.approx(stat[rid], rel=1e-9)


def test_liger_alone_matches_tp():
    """A single micro-batch in the window launches as tp does (liger's lone-request rule)."""
    reqs = [Request(0, 0.0, 300, 4)]
    liger = _times(_run(STRATEGIES["liger"], reqs, max_num_batched_tokens=1024))  # 512 a part
    tp = _times(_run(STRATEGIES["tp"], reqs, max_num_batched_tokens=1024))
    assert liger[0] == pytest.approx(tp[0], rel=1e-9)


def _compositions(trace):
    return [(s.seqs, s.tokens, s.prefill_tokens) for s in trace.steps]


def test_step_compositions_per_strategy():
    """Four requests of 48 prompt and 3 output tokens at once, 64 tokens and 4 sequences a step.
    tp and iso (one step in flight): A's prompt + 16 of B's; A decodes + B's last 32 + 31 of C;
    A, B decode + C's last 17 + 45 of D (A has its 3 tokens); B, C decode + D's last 3."""
    reqs = [Request(i, 0.0, 48, 3) for i in range(4)]
    cfg = dict(max_num_batched_tokens=64, max_num_seqs=4)
    tp = _run(STRATEGIES["tp"], reqs, **cfg)
    assert _compositions(tp)[:4] == [(2, 64, 64), (3, 64, 63), (4, 64, 62), (3, 5, 3)]
    assert _compositions(_run(STRATEGIES["iso"], reqs, **cfg)) == _compositions(tp)
    # pp, two stages in flight: the second step may only take requests the first does not hold
    pp = _run(STRATEGIES["pp"], reqs, **cfg)
    steps = pp.steps
    assert (steps[0].seqs, steps[0].tokens) == (2, 64)
    assert (steps[1].seqs, steps[1].tokens, steps[1].prefill_tokens) == (2, 64, 64)  # C, D
    # liger, two micro-batches: each at most half the budget (32 tokens, 2 sequences)
    liger = _run(STRATEGIES["liger"], reqs, **cfg)
    assert all(s.tokens <= 32 and s.seqs <= 2 for s in liger.steps)
    assert (liger.steps[0].tokens, liger.steps[1].tokens) == (32, 32)
    for trace in (tp, pp, liger):
        assert {r.request for r in trace.requests if r.finish_s is not None} == {0, 1, 2, 3}
        assert sum(s.tokens for s in trace.steps) == 4 * (48 + 2)


@pytest.mark.parametrize("name", ["tp", "pp", "iso", "liger"])
def test_segments_and_mirror_do_not_change_results(name):
    reqs = [Request(i, 0.01 * i, 40 + 30 * i, 3 + i) for i in range(5)]
    cfg = dict(max_num_batched_tokens=96, max_num_seqs=4)
    fast = _run(STRATEGIES[name], reqs, **cfg)
    slow = _run(STRATEGIES[name], reqs, segments=False, mirror=False, **cfg)
    assert _compositions(fast) == _compositions(slow)
    a, b = _times(fast), _times(slow)
    for rid in a:
        assert a[rid] == pytest.approx(b[rid], rel=1e-9)


def _decode_rate(max_num_seqs, kv_blocks=100_000, n=32):
    """Output tokens per second of n identical requests, all at once, on tp."""
    reqs = [Request(i, 0.0, 64, 64) for i in range(n)]
    trace = _run(STRATEGIES["tp"], reqs, kv_blocks=kv_blocks, max_num_seqs=max_num_seqs,
                 max_num_batched_tokens=4096, block_size=16)
    end = max(r.finish_s for r in trace.requests)
    return n * 64 / end, trace


def test_decode_throughput_rises_with_max_num_seqs_until_kv_bounds_it():
    rates = [_decode_rate(s)[0] for s in (1, 2, 4, 8, 16)]
    assert all(b > a * 1.3 for a, b in zip(rates, rates[1:]))
    # 40 blocks of 16 tokens: a request takes 4 at admission (64 prompt tokens) and 8 at its
    # longest (127 tokens). Five running requests fit to the end: no preemption; six do not.
    # Admission stops at 40 / 4 = 10 running whatever max_num_seqs allows, so 16 and 32 run the
    # very same steps: the KV cache, not max_num_seqs, is the bound.
    five, six, sixteen, thirtytwo = (_decode_rate(s, kv_blocks=40) for s in (5, 6, 16, 32))
    assert max(s.running for s in five[1].steps) == 5 and five[1].meta["preemptions"] == 0
    assert six[1].meta["preemptions"] > 0
    assert max(s.running for s in sixteen[1].steps) == 10
    assert _compositions(sixteen[1]) == _compositions(thirtytwo[1])
    assert sixteen[0] == thirtytwo[0]
    assert max(s.kv_blocks_used for s in sixteen[1].steps) <= 40


def test_itl_and_steps_are_recorded():
    reqs = [Request(i, 0.0, 32, 4) for i in range(3)]
    trace = _run(STRATEGIES["tp"], reqs, max_num_batched_tokens=256)
    assert len(trace.itl_s) == 3 * 3                      # 3 gaps per request
    gaps = np.asarray(trace.itl_s)
    assert np.all(gaps > 0)
    tpot = [(r.finish_s - r.first_token_s) / 3 for r in trace.requests]
    assert math.isclose(gaps.mean(), np.mean(tpot), rel_tol=1e-9)
    assert trace.steps[0].kv_blocks_used == 3 * 2 and trace.meta["kv_blocks"] == 100_000


def test_iso_cuts_a_step_into_equal_token_chunks():
    from simulator.batching import Batch, BatchEntry
    iso = make_strategy({"name": "iso", "chunks": 2, "min_chunk_tokens": 8}, MODEL, 2, "t", "s")
    decode = BatchEntry(0, 1, 1, 51, True, True)
    prompt = BatchEntry(1, 1, 99, 99, False, True)
    chunks = iso.batch_chunks(Batch(0, (decode, prompt), 100, "mixed"))
    # 50 tokens each: the decode and 49 of the prompt, then the prompt's last 50
    assert chunks == [[decode, BatchEntry(1, 1, 49, 49, False, False)],
                      [BatchEntry(1, 1, 50, 99, False, True)]]
    assert iso.batch_chunks(Batch(1, (decode,), 1, "decode")) is None     # too small to split


# ------------------------------------------------------------------------------ through a run
EXPERIMENT = """
name: cb
model: {preset: llama-3-8b, layers: 2}
hardware: h100-sxm5-80gb
devices: 2
strategies: [tp, {name: pp, tp: 1, label: pp2}]
serving: {scheduler: continuous, max_num_seqs: 8, max_num_batched_tokens: 256}
workload:
  requests: 12
  arrival: {kind: poisson, rate_rps: [5.0, 50.0]}
  prompt_tokens: {dist: uniform, low: 32, high: 300}
  output_tokens: {dist: uniform, low: 2, high: 12}
"""


def _write(tmp_path, text):
    path = tmp_path / "cb.yaml"
    path.write_text(text)
    return str(path)


def test_a_continuous_run_writes_steps_and_the_serving_plot(tmp_path):
    import pandas as pd

    from simulator.runner import run_experiment
    out = tmp_path / "out"
    run_experiment(_write(tmp_path, EXPERIMENT), str(out), progress=False)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["strategy"]) == {"tp", "pp2"} and (summary["error"].isna()).all()
    assert (summary["steps"] > 0).all() and (summary["itl_p99_s"] >= summary["itl_p50_s"]).all()
    steps = pd.read_csv(out / "steps.csv")
    for (label, rate), df in steps.groupby(["strategy", "workload.arrival.rate_rps"]):
        row = summary[(summary["strategy"] == label)
                      & (summary["workload.arrival.rate_rps"] == rate)].iloc[0]
        assert len(df) == row["steps"]
        assert (df["seqs"] <= 8).all() and (df["tokens"] <= 256).all()
    assert (out / "serving.png").stat().st_size > 10_000
    reqs = pd.read_csv(out / "requests.csv")
    assert (reqs["start_s"] >= reqs["arrival_s"]).all()


def test_static_runs_write_no_steps(tmp_path):
    from simulator.runner import run_experiment
    out = tmp_path / "out"
    (out).mkdir()
    (out / "steps.csv").write_text("stale")
    text = EXPERIMENT.replace("serving: {scheduler: continuous, max_num_seqs: 8, "
                              "max_num_batched_tokens: 256}", "serving: {scheduler: static}")
    run_experiment(_write(tmp_path, text), str(out), progress=False)
    assert not (out / "steps.csv").exists() and not (out / "serving.png").exists()


@pytest.mark.parametrize("change, words", [
    (("max_num_batched_tokens: 256", "max_num_batched_tokens: 4"), "smaller than one KV block"),
    (("max_num_seqs: 8,", "max_num_seqs: 8, chunked_prefill: false,"), "longest prefill"),
    (("max_num_seqs: 8,", "max_num_seqs: 8, kv_cache_memory_fraction: 0.0,"), "must be > 0"),
])
def test_bad_serving_input_is_one_line(tmp_path, capsys, change, words):
    from simulator.cli import main
    path = _write(tmp_path, EXPERIMENT.replace(*change))
    code = main(["run", path, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "serving" in err[0] and words in err[0]
    assert not (tmp_path / "o").exists()


def test_a_kv_cache_too_small_for_the_longest_request_is_infeasible(tmp_path):
    from simulator.errors import PointError
    from simulator.experiment import load_experiment
    from simulator.jobs import build
    text = EXPERIMENT.replace("max_num_seqs: 8,", "max_num_seqs: 8, kv_cache_memory_fraction: 1.0e-7,")
    job = load_experiment(_write(tmp_path, text))[0]
    with pytest.raises(PointError, match="longest request needs"):
        build(job)


@pytest.mark.parametrize("parts, budget, seqs", [(2, 128, 6), (3, 192, 6), (2, 64, 2), (4, 256, 8)])
def test_liger_paced_iterations_match_the_plain_loop_under_continuous_batching(parts, budget, seqs):
    """Liger hands iterations that fill nothing to launch_paced, which stops only for arrivals;
    under continuous batching a step that ends also frees requests for a new micro-batch, so the
    fast path must give exactly the iteration-by-iteration loop's steps and times."""
    from strategies.liger import Liger

    class Plain(Liger):
        def _quiet_runs(self, rt, window, f):
            return []

    reqs = [Request(i, 0.004 * i, 30 + 37 * i, 3 + 2 * i) for i in range(8)]
    cfg = ServingConfig(scheduler="continuous", max_num_batched_tokens=budget, max_num_seqs=seqs)
    out = []
    for cls in (Liger, Plain):
        strategy = cls(MODEL, 2, cls.Params(micro_batches=parts))
        out.append(SimRuntime(HW, 2).run(strategy, open_loop(reqs), Scheduler(cfg, 100_000)))
    fast, plain = out
    assert _compositions(fast) == _compositions(plain)
    a, b = _times(fast), _times(plain)
    for rid in b:
        assert a[rid] == pytest.approx(b[rid], rel=1e-9)
