"""Behaviour of the `iso` strategy (intra-sequence overlap, arXiv 2409.11155; strategies/iso.py).

Closed-form checks on whole prefills: with free communication ISO takes exactly the serial time of
its own (chunked) compute, and tp the serial time of its unchunked compute; with communication far
larger than compute ISO lands on the max(compute, communication) bound plus the one compute slot
that nothing can hide. Trace checks of the dependencies (KV of earlier chunks, all-reduce after its
producing GEMM, next block after its all-reduce), of the split policies and of parameter errors.
Models are cut to a few layers to keep the tests fast; every layer has the same shape.
"""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

import strategies
from simulator.engine import SimRuntime
from simulator.errors import ConfigError
from simulator.hardware import ContentionSpec, LinkParams, load_hardware
from simulator.model import load_model
from simulator.ops import Attention
from simulator.runner import make_strategy
from simulator.workload import Request
from strategies.iso import ISO, balanced_lengths, equal_token_lengths
from strategies.program import Step

A800 = load_hardware("a800-sxm4-80gb")
RTX = load_hardware("rtx4090")
OPT30 = load_model("opt-30b").with_layers(4)
DEVICES = 8
REL = 1e-9          # float summation of a few hundred op times


# ------------------------------------------------------------------------------------ helpers

class RecordingRuntime(SimRuntime):
    """A SimRuntime that also keeps every (device, stream, op) launch, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.launched: list = []

    def launch(self, op, device, stream=0, request=-1, phase=""):
        self.launched.append((device, stream, op))
        super().launch(op, device, stream, request, phase)

    def launch_seq(self, ops, devices, stream=0, request=-1, phase=""):
        self.launched.extend((d, stream, op) for op in ops for d in devices)
        super().launch_seq(ops, devices, stream, request, phase)


def strategy(name: str, params: dict | None = None, model=OPT30, devices: int = DEVICES):
    cls = strategies.get(name)
    return cls(model, devices, cls.Params.parse(params or {}, "test.yaml", "strategy"))


def run(name, params=None, *, hw=A800, model=OPT30, prompt=2048, output=1, devices=DEVICES):
    """One request of `prompt` tokens; returns (trace, runtime, strategy)."""
    strat = strategy(name, params, model, devices)
    rt = RecordingRuntime(hw, devices)

    def source(rt):
        rt.arrive(Request(0, 0.0, prompt, output))
        rt.sources_done()
        return
        yield

    return rt.run(strat, source), rt, strat


def jct(trace) -> float:
    r = trace.requests[0]
    return r.finish_s - r.arrival_s


def device_ops(trace, device=0):
    df = trace.ops()
    return df[df["device"] == device].sort_values(["start_s", "stream"], kind="stable")


def sums(trace, device=0) -> tuple[float, float]:
    """(compute, communication): isolated seconds of the non-comm ops and of the comm ops."""
    df = device_ops(trace, device)
    comm = df["op_class"] == "comm"
    return float(df.loc[~comm, "isolated_s"].sum()), float(df.loc[comm, "isolated_s"].sum())


def with_comm(hw, *, alpha_s: float, busbw_scale: float, contention: str | None = None):
    """`hw` with every collective's alpha set and bus bandwidth scaled; contention 'none' optional."""
    ic = hw.interconnect
    coll = {n: LinkParams(alpha_s, p.bandwidth_bytes_per_s * busbw_scale)
            for n, p in ic.collectives.items()}
    out = replace(hw, interconnect=replace(ic, collectives=MappingProxyType(coll)))
    if contention == "none":
        out = replace(out, contention=ContentionSpec("none", MappingProxyType({}), 1.0))
    return out


def occurrences(df, name: str):
    """Rows of op `name` in layer order (the k-th occurrence belongs to layer k)."""
    return df[df["name"] == name].reset_index(drop=True)


# ------------------------------------------------------------------------------------ (a) free comm

@pytest.mark.parametrize("chunks,split", [(2, "equal_tokens"), (2, "balanced"), (3, "equal_tokens")])
def test_free_communication_iso_takes_its_serial_compute_and_tp_its_own(chunks, split):
    """With collectives costing ~1e-12 s and no contention there is nothing to overlap: both run
    their compute back to back, so JCT = launch overhead of the first op + the serial sum of the
    strategy's own compute ops (+ the ~0 communication). The two differ only by what chunking does
    to compute (smaller GEMMs and attention pieces, wave quantisation): iso / tp equals the ratio
    of their compute sums, not 1 (here the chunked program has 2-14% more compute, by split)."""
    hw = with_comm(A800, alpha_s=1e-12, busbw_scale=1e9, contention="none")
    tp_trace, _, _ = run("tp", hw=hw)
    iso_trace, _, _ = run("iso", {"chunks": chunks, "split": split}, hw=hw)
    tp_compute, tp_comm = sums(tp_trace)
    iso_compute, iso_comm = sums(iso_trace)
    assert tp_comm < 1e-9 and iso_comm < 1e-9
    # absolute tolerance: all communication together costs < 1e-9 s
    assert jct(tp_trace) == pytest.approx(hw.launch_overhead_s + tp_compute, abs=1e-9)
    assert jct(iso_trace) == pytest.approx(hw.launch_overhead_s + iso_compute, abs=1e-9)
    launch = hw.launch_overhead_s
    assert (jct(iso_trace) - launch) / (jct(tp_trace) - launch) == pytest.approx(
        iso_compute / tp_compute, rel=1e-6)


# ------------------------------------------------------------------------------------ (b) comm-bound

def test_comm_bound_iso_reaches_the_bound_plus_one_unhidden_slot_without_contention():
    """Bus bandwidth / 20: communication is several times compute. Without contention the comm
    stream never idles once the first all-reduce can start, so ISO = first op's launch + chunk 0's
    first attention block (nothing to overlap it with) + all communication + the LM head compute
    after the last all-reduce; in particular ISO >= max(compute, comm) and ISO < tp."""
    hw = with_comm(A800, alpha_s=30e-6, busbw_scale=1 / 20, contention="none")
    tp_trace, _, _ = run("tp", hw=hw)
    iso_trace, _, _ = run("iso", hw=hw)
    compute, comm = sums(iso_trace)
    assert comm > 3 * compute
    df = device_ops(iso_trace)
    first_slot = df[df["name"].isin(["norm_attn.c0", "qkv.c0", "attn.c0", "out_proj.c0"])]
    first_slot = first_slot.groupby("name")["isolated_s"].first().sum()
    head = df[df["name"].isin(["final_norm", "lm_head"])]["isolated_s"].sum()
    expected = hw.launch_overhead_s + first_slot + comm + head
    assert jct(iso_trace) == pytest.approx(expected, rel=REL)
    assert max(compute, comm) <= jct(iso_trace) < jct(tp_trace)


@pytest.mark.parametrize("hw", [A800, RTX], ids=["a800", "rtx4090"])
def test_comm_bound_iso_never_beats_max_of_compute_and_comm_with_contention(hw):
    """With the profile's contention model overlapped ops slow each other: ISO stays above the
    bound (each stream's ops are serial, contention only lengthens them), below tp, and within
    one unhidden slot plus 15% of the bound (comm_by_compute <= 1.10 on either profile)."""
    hw = with_comm(hw, alpha_s=30e-6, busbw_scale=1 / 20)
    tp_trace, _, _ = run("tp", hw=hw)
    iso_trace, _, _ = run("iso", hw=hw)
    compute, comm = sums(iso_trace)
    bound = max(compute, comm)
    assert comm > 3 * compute
    assert bound <= jct(iso_trace) < jct(tp_trace)
    assert jct(iso_trace) < 1.15 * bound


# ------------------------------------------------------------------------------------ (c) dependencies

@pytest.mark.parametrize("chunks", [2, 3])
def test_trace_respects_kv_allreduce_and_residual_dependencies(chunks):
    trace, _, _ = run("iso", {"chunks": chunks}, hw=RTX, prompt=1024)
    for device in range(DEVICES):
        df = device_ops(trace, device)
        layers = OPT30.layers
        for c in range(chunks):
            s = f".c{c}"
            attn, qkv = occurrences(df, "attn" + s), occurrences(df, "qkv" + s)
            ar_a, ar_m = occurrences(df, "ar_attn" + s), occurrences(df, "ar_mlp" + s)
            out, down = occurrences(df, "out_proj" + s), occurrences(df, "ffn_down" + s)
            add_norm, norm = occurrences(df, "add_norm_mlp" + s), occurrences(df, "norm_attn" + s)
            assert len(attn) == len(ar_a) == len(ar_m) == layers
            for layer in range(layers):
                for earlier in range(c):    # KV of every earlier chunk of the same layer
                    prev_qkv = occurrences(df, f"qkv.c{earlier}")
                    assert attn.start_s[layer] >= prev_qkv.end_s[layer]
                assert attn.start_s[layer] >= qkv.end_s[layer]
                assert ar_a.start_s[layer] >= out.end_s[layer]          # AR after its GEMM
                assert ar_m.start_s[layer] >= down.end_s[layer]
                assert add_norm.start_s[layer] >= ar_a.end_s[layer]     # residual needs the sum
                if layer + 1 < layers:
                    assert norm.start_s[layer + 1] >= ar_m.end_s[layer]
            assert set(ar_a.stream) == set(ar_m.stream) != {0}
            assert set(attn.stream) == {0}
        # attention prioritised over MLP: every chunk's attention block before any chunk's MLP
        first_mlp = occurrences(df, "ffn_up.c0").start_s[0]
        assert all(occurrences(df, f"attn.c{c}").end_s[0] <= first_mlp for c in range(chunks))


def test_kv_dependency_is_an_explicit_event_wait_in_the_program():
    """The later chunk's attention is preceded, on its stream, by a wait on the event recorded
    right after the earlier chunk's QKV GEMM of the same layer (not left to stream order alone)."""
    strat = strategy("iso", {"chunks": 3})
    step = Step(1, 96, 96, "prefill")
    prog = strat.prefill_program(step, (32, 32, 32), tuple(range(DEVICES)), "r0")
    recorded_after_qkv = {}
    last_launch = None
    for i, (verb, stream, x) in enumerate(prog):
        if verb == "record" and last_launch is not None and last_launch.name.startswith("qkv"):
            recorded_after_qkv[x] = last_launch.name
        if verb == "launch":
            if isinstance(x, Attention) and x.name != "attn.c0":
                c = int(x.name.split(".c")[1])
                waits = []
                j = i - 1
                while prog[j][0] == "wait":
                    waits.append(prog[j][2])
                    j -= 1
                assert sorted(recorded_after_qkv[w] for w in waits) == [f"qkv.c{e}" for e in range(c)]
            last_launch = x


# ------------------------------------------------------------------------------------ (d) (e) splits

def test_balanced_gives_the_first_chunk_more_tokens_for_long_causal_prompts():
    strat = strategy("iso", {"split": "balanced"})
    rt = SimRuntime(A800, DEVICES)
    strat.setup(rt)
    for prompt in (4096, 8192):
        lengths = strat.chunk_lengths(rt, 1, prompt)
        equal = equal_token_lengths(prompt, 2)
        assert sum(lengths) == prompt and lengths[0] > equal[0]
        step = Step(1, prompt, prompt, "prefill")
        cost = lambda a, b: strat.chunk_compute_seconds(rt, step, a, b)  # noqa: E731
        # causal attention: equal tokens leave the second chunk dearer; balanced evens them out
        eq0, eq1 = cost(0, equal[0]), cost(equal[0], prompt)
        b0, b1 = cost(0, lengths[0]), cost(lengths[0], prompt)
        assert eq1 > eq0
        assert max(b0, b1) < max(eq0, eq1)     # the objective: the dearer chunk gets cheaper


def test_balanced_with_several_chunks_keeps_min_tokens_and_evens_a_toy_cost():
    cost = lambda a, b: (b * b - a * a) / 2.0          # pure causal attention: quadratic  # noqa: E731
    lengths = balanced_lengths(cost, 1000, 4, 16)
    assert sum(lengths) == 1000 and min(lengths) >= 16
    assert list(lengths) == sorted(lengths, reverse=True)
    costs = [cost(a, a + n) for a, n in zip([0, *_prefix(lengths)], lengths)]
    assert max(costs) / min(costs) < 1.02
    # the ideal cuts of a quadratic cost are 1000 * sqrt(i / 4): 500, 707, 866
    assert [round(x, -1) for x in _prefix(lengths)[:3]] == [500, 710, 870]


def _prefix(lengths):
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out


@pytest.mark.parametrize("fraction,prompt", [(0.3, 1000), (0.75, 2048)])
def test_explicit_fraction_sets_the_chunk_shapes(fraction, prompt):
    _, rt, _ = run("iso", {"split": fraction}, prompt=prompt)
    first = round(fraction * prompt)
    attn = {op.name: op for d, _, op in rt.launched if d == 0 and isinstance(op, Attention)}
    assert (attn["attn.c0"].q_len, attn["attn.c0"].kv_len) == (first, first)
    assert (attn["attn.c1"].q_len, attn["attn.c1"].kv_len) == (prompt - first, prompt)


# ------------------------------------------------------------------------------------ (f) (h) vs tp

def _timeline(trace):
    """Per device, ops in start order as (name without chunk suffix, start, end, isolated)."""
    df = trace.ops().sort_values(["device", "start_s", "end_s"], kind="stable")
    return [(d, n.split(".c")[0], round(s, 12), round(e, 12), round(i, 12))
            for d, n, s, e, i in zip(df.device, df.name, df.start_s, df.end_s, df.isolated_s)]


def test_decode_steps_are_identical_to_tp():
    tp_trace, _, _ = run("tp", hw=RTX, prompt=512, output=4)
    iso_trace, _, _ = run("iso", hw=RTX, prompt=512, output=4)

    def decode(trace):
        df = trace.ops()
        df = df[df["phase"] == "decode"].sort_values(["device", "start_s"], kind="stable")
        t0 = df["start_s"].min()
        return [(d, s, n, round(a - t0, 12), round(b - t0, 12))
                for d, s, n, a, b in zip(df.device, df.stream, df.name, df.start_s, df.end_s)]

    assert len(decode(tp_trace)) == 3 * DEVICES * (OPT30.layers * 10 + 3)
    assert decode(iso_trace) == decode(tp_trace)
    tp_req, iso_req = tp_trace.requests[0], iso_trace.requests[0]
    assert iso_req.finish_s - iso_req.first_token_s == pytest.approx(
        tp_req.finish_s - tp_req.first_token_s, rel=REL)


def test_one_chunk_is_tp():
    tp_trace, _, _ = run("tp", hw=RTX, prompt=1024)
    iso_trace, _, _ = run("iso", {"chunks": 1}, hw=RTX, prompt=1024)
    assert _timeline(iso_trace) == _timeline(tp_trace)
    assert jct(iso_trace) == jct(tp_trace)


def test_short_prompt_falls_back_to_tp():
    tp_trace, _, _ = run("tp", prompt=31)
    iso_trace, _, _ = run("iso", {"chunks": 2, "min_chunk_tokens": 16}, prompt=31)
    assert _timeline(iso_trace) == _timeline(tp_trace)
    assert not any(".c" in n for n in iso_trace.ops()["name"])


def test_single_device_runs_chunks_serially():
    trace, _, _ = run("iso", prompt=1024, devices=1)
    compute, comm = sums(trace)
    assert comm == 0.0
    assert jct(trace) == pytest.approx(A800.launch_overhead_s + compute, rel=REL)


# ------------------------------------------------------------------------------------ (g) params

@pytest.mark.parametrize("params,key", [
    ({"chunks": 0}, "chunks"),
    ({"chunks": -2}, "chunks"),
    ({"split": 0.0}, "split"),
    ({"split": 1.0}, "split"),
    ({"split": 1.5}, "split"),
    ({"split": -0.2}, "split"),
    ({"split": "halves"}, "split"),
    ({"split": 0.5, "chunks": 3}, "split"),
    ({"min_chunk_tokens": 0}, "min_chunk_tokens"),
    ({"chunk": 2}, "chunk"),
])
def test_bad_params_name_the_key(params, key):
    with pytest.raises(ConfigError) as info:
        make_strategy({"name": "iso", **params}, OPT30, DEVICES, "exp.yaml", "strategies[1]")
    assert info.value.key == f"strategies[1].{key}"
    assert info.value.where == "exp.yaml"


def test_good_params_parse():
    s = make_strategy({"name": "iso", "chunks": 4, "split": "balanced", "min_chunk_tokens": 8},
                      OPT30, DEVICES, "exp.yaml", "strategies[1]")
    assert isinstance(s, ISO) and (s.params.chunks, s.params.split) == (4, "balanced")
    assert make_strategy({"name": "iso", "split": 0.6}, OPT30, DEVICES, "e", "s").params.split == 0.6
