"""The continuous-batching scheduler (simulator/batching.py), step by step on hand-worked cases.

Each case drives the scheduler with a stand-in clock: every step is scheduled at t and committed
at t + 1, so the times are step numbers. The expected compositions are worked out by hand in the
comments (vLLM V1 semantics, docs/serving.md)."""
from __future__ import annotations

import pytest

from simulator.batching import (Batch, BatchEntry, Scheduler, ServingConfig, blocks_for,
                                check_workload_fits, kv_cache_blocks, parse_serving)
from simulator.errors import ConfigError
from simulator.model import load_model
from simulator.serving import Serving
from simulator.workload import Request


class _Clock:
    now = 0.0


def _setup(requests, kv_blocks=1000, **cfg):
    serving = Serving(_Clock())
    for r in requests:
        serving.arrive(r)
    sched = Scheduler(ServingConfig(scheduler="continuous", **cfg), kv_blocks, serving)
    return serving, sched


def _run(serving, sched, limit=100):
    """Schedule and commit one step per time unit until every request is served; returns the
    steps' entries as (request, q_tokens, context_tokens, decode, samples) tuples."""
    steps = []
    t = 0.0
    while not sched.idle() or serving.waiting():
        batch = sched.schedule(t)
        assert batch is not None, f"nothing schedulable at step {t} with requests left"
        steps.append([tuple(e)[:1] + tuple(e)[2:] for e in batch.entries])
        sched.commit(batch, t + 1)
        t += 1
        assert len(steps) < limit
    return steps


def _req(i, prompt, output, batch=1):
    return Request(i, 0.0, prompt, output, batch)


def test_budget_and_chunked_prefill():
    # budget 100: step 0 takes A's whole prompt (70) and 30 of B's 50 (a chunk: no sample);
    # step 1: A's first decode (context 71) and the rest of B's prompt (20, samples);
    # step 2: both decode; each then has its output tokens (A 3, B 2).
    serving, sched = _setup([_req(0, 70, 3), _req(1, 50, 2)], max_num_batched_tokens=100)
    steps = _run(serving, sched)
    assert steps == [
        [(0, 70, 70, False, True), (1, 30, 30, False, False)],
        [(0, 1, 71, True, True), (1, 20, 50, False, True)],
        [(0, 1, 72, True, True), (1, 1, 51, True, True)],
    ]
    recs = {r.request: r for r in serving.records(lambda _r: None)}
    assert (recs[0].first_token_s, recs[0].finish_s) == (1.0, 3.0)
    assert (recs[1].first_token_s, recs[1].finish_s) == (2.0, 3.0)
    assert recs[0].start_s == recs[1].start_s == 0.0
    assert sorted(sched.itl_s) == [1.0, 1.0, 1.0]        # A: 1->2->3, B: 2->3
    assert sched.free == sched.kv_blocks                  # everything released


def test_without_chunked_prefill_a_prompt_waits_for_a_step_it_fits():
    # B's 50 tokens do not fit the 30 left after A's 70: B waits one step (A decodes beside it)
    serving, sched = _setup([_req(0, 70, 2), _req(1, 50, 1)], max_num_batched_tokens=100,
                            chunked_prefill=False)
    assert _run(serving, sched) == [
        [(0, 70, 70, False, True)],
        [(0, 1, 71, True, True), (1, 50, 50, False, True)],
    ]


def test_long_prefill_threshold_caps_each_step():
    serving, sched = _setup([_req(0, 70, 2)], max_num_batched_tokens=100,
                            long_prefill_token_threshold=32)
    assert _run(serving, sched) == [
        [(0, 32, 32, False, False)], [(0, 32, 64, False, False)], [(0, 6, 70, False, True)],
        [(0, 1, 71, True, True)],
    ]


def test_max_num_seqs_holds_requests_back():
    serving, sched = _setup([_req(0, 10, 2), _req(1, 10, 1)], max_num_seqs=1,
                            max_num_batched_tokens=100)
    assert _run(serving, sched) == [
        [(0, 10, 10, False, True)], [(0, 1, 11, True, True)], [(1, 10, 10, False, True)],
    ]


def test_preemption_happens_exactly_when_blocks_run_out():
    # 6 blocks of 4 tokens. Step 0: A and B take 2 blocks each (8 tokens). Step 1: contexts 9
    # take a third block each: 0 free. Steps 2-4: contexts 10-12 fit. Step 5: A needs a 4th
    # block for context 13: B (the most recent) is preempted (3 blocks back), A takes one, and
    # nothing is admitted in that step. Step 6: B would prefill its 8 + 5 tokens (4 blocks) but
    # only 2 are free: it waits until A finishes at step 9 (context 17, a 5th block). Step 10:
    # B recomputes 13 tokens and samples its 6th token; steps 11-14 decode its 7th-10th.
    serving, sched = _setup([_req(0, 8, 10), _req(1, 8, 10)], kv_blocks=6, block_size=4,
                            max_num_batched_tokens=100)
    steps = _run(serving, sched)
    a = [(0, 8, 8, False, True)] + [(0, 1, c, True, True) for c in range(9, 18)]
    b = [(1, 8, 8, False, True)] + [(1, 1, c, True, True) for c in range(9, 13)]
    assert steps[:5] == [[a[0], b[0]]] + [[a[k], b[k]] for k in range(1, 5)]
    assert steps[5:10] == [[a[k]] for k in range(5, 10)]
    assert steps[10:] == [[(1, 13, 13, False, True)]] + \
        [[(1, 1, c, True, True)] for c in range(14, 18)]
    assert [s.preempted for s in sched.steps] == [0] * 5 + [1] + [0] * 9
    assert [s.kv_blocks_used for s in sched.steps][:6] == [4, 6, 6, 6, 6, 4]
    assert sched.preemptions == 1
    recs = {r.request: r for r in serving.records(lambda _r: None)}
    assert recs[1].finish_s == 15.0 and recs[0].finish_s == 10.0
    assert 6.0 in sched.itl_s                  # B's token 5 at t=5, token 6 after recompute at 11


def test_preemption_takes_the_most_recent_and_never_one_in_flight():
    # three running requests; the third (most recent) is in flight in another micro-batch, so
    # when the first cannot grow, the second is preempted instead
    serving, sched = _setup([_req(i, 4, 10) for i in range(3)], kv_blocks=3, block_size=4,
                            max_num_batched_tokens=100)
    first = sched.schedule(0.0)
    assert [e.request for e in first.entries] == [0, 1, 2] and sched.free == 0
    sched.commit(first, 1.0)
    # request 2 alone in flight (a batch the test makes by hand)
    sched.in_flight.add(2)
    nxt = sched.schedule(1.0)
    assert [e.request for e in nxt.entries] == [0]          # 1 was preempted for 0's block
    assert [s.id for s in sched.running] == [0, 2] and sched.waiting[0].id == 1
    assert sched.waiting[0].computed == 0 and sched.waiting[0].blocks == 0


def test_a_request_that_is_the_most_recent_preempts_itself():
    serving, sched = _setup([_req(0, 4, 10), _req(1, 4, 10)], kv_blocks=2, block_size=4,
                            max_num_batched_tokens=100)
    sched.commit(sched.schedule(0.0), 1.0)
    sched.in_flight.add(0)                          # 0 cannot be a victim
    assert sched.schedule(1.0) is None              # 1 needs a block, the only victim is itself
    assert [s.id for s in sched.waiting] == [1] and sched.preemptions == 1


def test_in_flight_batches_hold_disjoint_requests():
    serving, sched = _setup([_req(0, 10, 3), _req(1, 10, 3)], max_num_batched_tokens=10)
    one = sched.schedule(0.0)
    two = sched.schedule(0.0)
    three = sched.schedule(0.0)
    assert [e.request for e in one.entries] == [0]
    assert [e.request for e in two.entries] == [1]
    assert three is None                            # both requests are in flight
    sched.commit(one, 1.0)
    assert [e.request for e in sched.schedule(1.0).entries] == [0]


def test_batch_records_and_phase():
    serving, sched = _setup([_req(0, 10, 3, batch=2), _req(1, 6, 1)], max_num_batched_tokens=64)
    b = sched.schedule(0.0)
    assert isinstance(b, Batch) and b.entries[0] == BatchEntry(0, 2, 10, 10, False, True)
    assert b.tokens == 26 and b.phase == "prefill"
    sched.commit(b, 1.0)
    serving.arrive(_req(2, 5, 1))
    b = sched.schedule(1.0)
    assert b.phase == "mixed" and b.tokens == 2 + 5
    step = sched.steps[-1]
    assert (step.seqs, step.tokens, step.prefill_tokens, step.running) == (3, 7, 5, 2)
    assert step.kv_blocks_used == blocks_for(11, 16) * 2 + blocks_for(5, 16)


# ------------------------------------------------------------------------------ configuration
def test_parse_defaults_and_static():
    assert parse_serving(None, "x.yaml") == ServingConfig()
    assert not parse_serving({"scheduler": "static"}, "x.yaml").continuous
    cfg = parse_serving({"scheduler": "continuous", "max_num_seqs": 8}, "x.yaml")
    assert cfg.continuous and cfg.max_num_seqs == 8 and cfg.block_size == 16


@pytest.mark.parametrize("value, key, words", [
    ({"scheduler": "dynamic"}, "serving.scheduler", "choose one of: static, continuous"),
    ({"max_num_seqs": 4}, "serving.max_num_seqs", "only with scheduler: continuous"),
    ({"scheduler": "continuous", "max_num_seqs": 0}, "serving.max_num_seqs", ">= 1"),
    ({"scheduler": "continuous", "block_size": 32, "max_num_batched_tokens": 16},
     "serving.max_num_batched_tokens", "smaller than one KV block"),
    ({"scheduler": "continuous", "max_num_seqs": 64, "max_num_batched_tokens": 32},
     "serving.max_num_batched_tokens", "smaller than max_num_seqs"),
    ({"scheduler": "continuous", "kv_cache_memory_fraction": 0}, "serving.kv_cache_memory_fraction",
     "> 0"),
    ({"scheduler": "continuous", "kv_cache_memory_fraction": 1.5},
     "serving.kv_cache_memory_fraction", "<= 1"),
    ({"scheduler": "continuous", "preemption": "swap"}, "serving.preemption", "recompute"),
    ({"scheduler": "continuous", "chunked_prefill": "yes"}, "serving.chunked_prefill", "boolean"),
    ({"scheduler": "continuous", "long_prefill_token_threshold": -1},
     "serving.long_prefill_token_threshold", ">= 0"),
    ({"scheduler": "continuous", "max_batch": 3}, "serving.max_batch", "unknown key"),
    ([1, 2], "serving", "expected a mapping"),
])
def test_bad_serving_values(value, key, words):
    with pytest.raises(ConfigError) as exc:
        parse_serving(value, "x.yaml")
    assert exc.value.key == key and words in exc.value.message


def test_unchunked_budget_must_hold_the_longest_prefill():
    cfg = ServingConfig(scheduler="continuous", max_num_batched_tokens=512, chunked_prefill=False)
    check_workload_fits(cfg, 512, 1, "x.yaml")
    with pytest.raises(ConfigError, match="longest prefill"):
        check_workload_fits(cfg, 513, 1, "x.yaml")
    chunked = ServingConfig(scheduler="continuous", max_num_batched_tokens=512)
    check_workload_fits(chunked, 10_000, 1, "x.yaml")
    with pytest.raises(ConfigError, match="sequences of one request"):
        check_workload_fits(chunked, 10, 513, "x.yaml")


def test_kv_cache_blocks_arithmetic():
    # llama-2-7b fp16 on one 80 GB device: what is left after weights and a 2048-token step's
    # activations, times the fraction, over 16 tokens x 2 (K, V) x 4096 x 2 bytes x 32 layers
    from simulator.model import memory_per_device
    model = load_model("llama-2-7b")
    cfg = ServingConfig(scheduler="continuous", kv_cache_memory_fraction=0.5)
    blocks, block_bytes = kv_cache_blocks(model, 80e9, 1, 1, None, cfg, 2048)
    assert block_bytes == 16 * 2 * 4096 * 2 * 32
    fp = memory_per_device(model, 1, 1, 1, 2048)
    assert blocks == int(0.5 * (80e9 - fp.weights_bytes - fp.activation_bytes) // block_bytes)
    # two pipeline stages: the block holds the fuller stage's layers; tp 2 halves the KV width
    _, pp_bytes = kv_cache_blocks(model, 80e9, 1, 2, (20, 12), cfg, 2048)
    _, tp_bytes = kv_cache_blocks(model, 80e9, 2, 1, None, cfg, 2048)
    assert pp_bytes == block_bytes * 20 / 32 and tp_bytes == block_bytes / 2
    assert kv_cache_blocks(model, 1e9, 1, 1, None, cfg, 2048)[0] == 0    # weights do not fit


def test_an_entry_cut_in_two_keeps_its_tokens_and_keys():
    e = BatchEntry(3, 1, 100, 150, False, True)
    head, tail = e.cut(40)
    assert head == BatchEntry(3, 1, 40, 90, False, False)
    assert tail == BatchEntry(3, 1, 60, 150, False, True)
