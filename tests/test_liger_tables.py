"""Liger's step tables (strategies/liger_flight.py, StepTables): a request's program built from
tables shared by equal steps must be the program its steps define, op for op (values, classes,
profiled times, steps) with each step's runs and planned times as the host program sums them."""
from __future__ import annotations


from simulator.model import load_model
from simulator.workload import Request
from strategies.liger_flight import Flight, StepTables
from strategies.program import request_steps, step_ops, step_parts

MODEL = load_model({"preset": "llama-2-7b", "layers": 3})
GROUP = (0, 1)
FACTORS = {True: 0.8, False: 0.5}


def profiled(op):                      # any deterministic function of the op's value
    return 1e-6 * (len(op.name) + 7 * hash(op) % 97)


def literal(req):
    """The program as its steps define it, built without tables."""
    ops, step_of, starts = [], [], []
    for i, step in enumerate(request_steps(req.batch, req.prompt_tokens, req.output_tokens)):
        starts.append(len(ops))
        one = step_ops(MODEL, 2, step, GROUP)
        ops += one
        step_of += [i] * len(one)
    return ops, step_of, starts


def runs_of(comm, prof):
    """Maximal same-class runs and their planned times, summed op by op from 0.0."""
    out, a = [], 0
    for b in range(1, len(comm) + 1):
        if b == len(comm) or comm[b] != comm[a]:
            planned = 0.0
            for t in prof[a:b]:
                planned += t
            out.append((a, b, comm[a], planned, planned * FACTORS[comm[a]]))
            a = b
    return out


def check(tables, reqs):
    for req in reqs:
        f = Flight.build(req, tables)
        ops, step_of, starts = literal(req)
        assert f.ops == ops and f.step_of == step_of
        assert f.comm == [op.comm for op in ops] and f.prof == [profiled(op) for op in ops]
        for step, start in enumerate(starts):
            base, table = f.step_runs(step, FACTORS)
            assert base == start
            end = starts[step + 1] if step + 1 < len(starts) else len(ops)
            got = list(zip(*table[:5]))
            assert got == runs_of(f.comm[start:end], f.prof[start:end])
            assert f.tables[step].ops == ops[start:end]


def tables(key=lambda step: step):
    t = StepTables(lambda step: step_parts(MODEL, 2, step, GROUP), profiled)
    if key is not None:
        of = t.of
        t.of = lambda step: of(key(step))
    return t


REQS = [Request(0, 0.0, 40, 4), Request(1, 0.0, 41, 3), Request(2, 0.0, 40, 6), Request(3, 0.0, 42, 2)]


def test_programs_from_shared_step_tables_are_their_steps_programs():
    t = tables()
    check(t, REQS)
    # decode steps at equal KV lengths were one entry, and equal ops one object across steps
    assert len(t.entries) < sum(r.output_tokens for r in REQS)
    ops = [op for e in t.entries.values() for op in e.ops]
    assert len({id(op) for op in ops}) == len(set(ops))


def test_tables_shared_by_steps_that_differ_are_caught():
    """The comparison can fail: tables keyed by the phase alone (decode steps at different KV
    lengths sharing one entry) are seen."""
    import pytest
    from strategies.program import Step
    with pytest.raises(AssertionError):
        check(tables(lambda step: Step(step.batch, step.q_len, 41 if step.phase == "decode"
                                       else step.kv_len, step.phase)), REQS)


def test_bounded_tables_rebuild_what_they_dropped():
    t = tables()
    t.limit = 3
    check(t, REQS)
    assert len(t.entries) <= 3
