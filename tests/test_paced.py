"""Paced launches (simulator/paced.py): the one-pass form must give exactly the host program it
stands for, including where it stops for an arriving request."""
from __future__ import annotations

import pytest

from simulator.engine import SimRuntime
from simulator.workload import Request, open_loop
from tests.test_engine import Program, StubCost, ar, op, profile

TABLE = {"a": (1.0, "compute"), "b": (0.25, "compute"), "c": (2.0, "compute"),
         "ar": (0.5, "comm"), "x": (1.0, "compute")}


class Flat(list):
    """Runs that also offer `flat()` (the ops in one list and the cut points), as Liger's Runs
    do; `wrong` = (i, d) moves cut i by d (a deliberately wrong flat form)."""

    def __init__(self, runs, wrong=(0, 0)):
        super().__init__(runs)
        self.ops, self.cuts = [], [0]          # one program list, as Liger's step's
        for run in self:
            self.ops += run
            self.cuts.append(len(self.ops))
        self.cuts[wrong[0]] += wrong[1]

    def flat(self):
        return self.ops, self.cuts


def program(results, until_arrival=True, flat=None):
    def host(rt):
        rt.mirror((0, 1))
        runs = [[op("a"), op("b")], [ar("ar", (0, 1))], [op("c"), op("b"), op("a")],
                [ar("ar", (0, 1))], [op("b")], [op("a"), op("c")]]
        if flat is not None:
            runs = Flat(runs, flat)
        n, waits, mains = yield from rt.launch_paced(runs, (0, 1), 0, 0, "decode",
                                                     until_arrival=until_arrival)
        results.append((n, rt.now, [e.name for e in waits]))
        req = rt.try_next_request()
        while req is None:
            req = yield from rt.next_request()
            if req is None:
                return
        yield from rt.synchronize(mains[0])
        x = op("x")
        for d in (0, 1):
            rt.launch(x, d, 0, req.id, "prefill")
        done = rt.new_event("x")
        rt.record(done, 0, 0)
        rt.first_token_when(req.id, done)
        rt.finish_when(req.id, done)
    return host


def run(segments, arrival_s, launch_s, until_arrival=True, flat=None):
    results = []
    rt = SimRuntime(profile(), 2, cost=StubCost(TABLE), launch_overhead_s=launch_s,
                    segments=segments)
    trace = rt.run(Program(program(results, until_arrival, flat)),
                   open_loop([Request(7, arrival_s, 16, 1)]))
    rows = sorted((r.device, r.stream, r.start_s, r.end_s, r.name, r.request) for r in trace.records())
    return rt, rows, results, trace


@pytest.mark.parametrize("launch_s", [0.0, 0.3, 1.5], ids=["no launch cost", "hidden", "host-bound"])
@pytest.mark.parametrize("arrival_s", [0.0, 0.9, 2.6, 4.0, 50.0])
def test_one_pass_equals_the_host_program(arrival_s, launch_s):
    rt, fast, fast_res, fast_trace = run(True, arrival_s, launch_s)
    _, slow, slow_res, slow_trace = run(False, arrival_s, launch_s)
    assert fast == slow
    assert fast_res == slow_res
    assert fast_trace.requests == slow_trace.requests


def test_it_stops_after_the_run_that_finds_a_request_waiting():
    """Launch cost 0: run j is launched when run j-1's last op starts: a [0,1] b [1,1.25], so run 1
    (ar) is launched at 1.0 and the host finds the request of t=0.9 waiting after it: 2 runs."""
    rt, rows, res, _ = run(True, 0.9, 0.0)
    assert res[0][0] == 2 and res[0][1] == 1.0
    rt, rows, res, _ = run(True, 0.9, 0.0, until_arrival=False)
    assert res[0][0] == 6


def test_the_one_pass_form_is_taken_where_it_applies():
    rt, *_ = run(True, 50.0, 0.3)
    assert rt.segment_counts.get("paced_runs", 0) == 5     # all but the last run, in one segment
    rt, *_ = run(False, 50.0, 0.3)
    assert rt.segment_counts.get("paced_runs", 0) == 0


@pytest.mark.parametrize("launch_s", [0.0, 0.3, 0.9, 1.5],
                         ids=["no launch cost", "hidden", "partly hidden", "host-bound"])
@pytest.mark.parametrize("arrival_s", [0.0, 0.9, 2.6, 4.0, 50.0])
@pytest.mark.parametrize("until_arrival", [True, False])
def test_the_whole_array_pass_equals_the_loop(arrival_s, launch_s, until_arrival, monkeypatch):
    """`_host_ahead` (the host ahead of the stream: whole-array steps) gives the loop's plan
    exactly, and declines where the host is behind (then the loop decides)."""
    from simulator import paced
    taken = []
    ahead = paced._host_ahead

    def spy(*args):
        got = ahead(*args)
        taken.append(got is not None)
        return got
    monkeypatch.setattr(paced, "_host_ahead", spy)
    _, fast, fast_res, fast_trace = run(True, arrival_s, launch_s, until_arrival)
    monkeypatch.setattr(paced, "_host_ahead", lambda *args: None)
    _, loop, loop_res, loop_trace = run(True, arrival_s, launch_s, until_arrival)
    assert fast == loop and fast_res == loop_res
    assert fast_trace.requests == loop_trace.requests
    if launch_s == 0.0 and arrival_s > 1.0:
        assert any(taken)                                  # the pass applies here...
    if launch_s >= 1.5:
        assert not any(taken)                              # ...and never where the host is behind


def test_a_wrong_whole_array_pass_is_caught(monkeypatch):
    """The comparison above can fail: a pass whose stream starts a nanosecond late is seen."""
    from simulator import paced
    ahead = paced._host_ahead

    def late(m, dev, stream, runs, checked, group, free_s, h, now, launch_s, arrival):
        return ahead(m, dev, stream, runs, checked, group, free_s + 1e-9, h, now, launch_s,
                     arrival)
    monkeypatch.setattr(paced, "_host_ahead", late)
    _, fast, fast_res, _ = run(True, 50.0, 0.0)
    monkeypatch.undo()
    _, loop, loop_res, _ = run(True, 50.0, 0.0)
    assert (fast, fast_res) != (loop, loop_res)


@pytest.mark.parametrize("launch_s", [0.0, 0.3, 0.9], ids=["no launch cost", "hidden", "partly hidden"])
@pytest.mark.parametrize("arrival_s", [0.9, 2.6, 50.0])
@pytest.mark.parametrize("until_arrival", [True, False])
def test_runs_offering_flat_give_the_host_program(arrival_s, launch_s, until_arrival):
    """Runs with `flat()` (Liger's, read as one op list and cut points by the whole-array pass)
    give the plain lists' result, and the op-level program's."""
    _, flat, flat_res, flat_trace = run(True, arrival_s, launch_s, until_arrival, flat=(0, 0))
    _, plain, plain_res, plain_trace = run(True, arrival_s, launch_s, until_arrival)
    _, slow, slow_res, _ = run(False, arrival_s, launch_s, until_arrival, flat=(0, 0))
    assert flat == plain == slow and flat_res == plain_res == slow_res
    assert flat_trace.requests == plain_trace.requests


@pytest.mark.parametrize("wrong, arrival_s", [((1, -1), 0.9), ((0, 1), 50.0)],
                         ids=["an op moved to the next run", "the first op left out"])
def test_a_wrong_flat_form_is_caught(wrong, arrival_s):
    """The comparison above can fail: cut points that move an op between runs (the host stops
    for the arrival after a different run) or leave one out are seen."""
    _, bad, bad_res, _ = run(True, arrival_s, 0.0, flat=wrong)
    _, plain, plain_res, _ = run(True, arrival_s, 0.0)
    assert (bad, bad_res) != (plain, plain_res)


def twice(results, runs_of):
    """A host that paces the same runs (one program list) twice, the second after the first's
    last Main event."""
    def host(rt):
        rt.mirror((0, 1))
        runs = runs_of()
        for _ in range(2):
            n, waits, mains = yield from rt.launch_paced(runs, (0, 1), 0, 0, "decode",
                                                         until_arrival=False)
            results.append((n, rt.now))
            yield from rt.synchronize(mains[0])
    return host


def run_twice(segments, runs_of):
    results = []
    rt = SimRuntime(profile(), 2, cost=StubCost(TABLE), launch_overhead_s=0.0, segments=segments)
    trace = rt.run(Program(twice(results, runs_of)), open_loop([]))
    rows = sorted((r.device, r.stream, r.start_s, r.end_s, r.name) for r in trace.records())
    return rt, rows, results


def _runs():
    return Flat([[op("a"), op("b")], [ar("ar", (0, 1))], [op("c"), op("b"), op("a")],
                 [ar("ar", (0, 1))], [op("b")], [op("a"), op("c")]])


def test_a_program_paced_again_reuses_its_table_exactly():
    """Runs offering flat() over one program list: its table (costs, collectives) is built once
    and found again; both passes give the op-level program's trace."""
    rt, fast, fast_res = run_twice(True, _runs)
    _, slow, slow_res = run_twice(False, _runs)
    assert fast == slow and fast_res == slow_res
    assert rt.machine.segment_counts.get("paced_runs", 0) == 10
    assert len(rt.machine.paced_programs) == 1


def test_a_wrong_program_table_is_caught(monkeypatch):
    """The comparison above can fail: a table whose seconds are a nanosecond off is seen."""
    from simulator import paced
    table = paced._program

    def off(m, program, group):
        entries, secs, comm_at, groups = table(m, program, group)
        return entries, secs + 1e-9, comm_at, groups
    monkeypatch.setattr(paced, "_program", off)
    _, fast, fast_res = run_twice(True, _runs)
    monkeypatch.undo()
    _, slow, slow_res = run_twice(False, _runs)
    assert (fast, fast_res) != (slow, slow_res)


def _both(numbered):
    """A paced segment built by `_segment` from lists and by `_numbered` from arrays, over the
    same ops (collectives of one group among them), each on a fresh machine."""
    import numpy as np

    from simulator import paced
    ops = [op("a"), ar("ar", (0, 1)), op("b"), op("c"), ar("ar", (0, 1)), op("b"), ar("ar", (0, 1))]
    segs = []
    for lists in (True, False):
        rt = SimRuntime(profile(), 2, cost=StubCost(TABLE))
        m = rt.machine
        key = (0,) + paced.group_key(ops[1])
        m.coll_seq[key] = 5                        # collectives launched before
        entries = [m.cost_entry(o) for o in ops]
        secs = np.array([e[4] for e in entries])
        starts = np.add.accumulate(np.concatenate(([0.5], secs)))
        readys = np.arange(len(ops)) * 0.1
        comms = np.array([1, 4, 6])
        if lists:
            seg = paced._segment(m, 0, 0, ops, entries, readys, 0.5, starts[:-1].tolist(),
                                 starts[1:].tolist(), secs.tolist(), comms.tolist())
        else:
            seg = numbered(m, 0, 0, ops, entries, readys, 0.5, starts[:-1], starts[1:], secs,
                           comms, paced.group_key(ops[1]))
        segs.append((seg, m.coll_seq[key]))
    return segs


def _read(seg):
    n = len(seg.ops)
    return ([seg.seqs[k] for k in range(n)], [seg.fixed[1][k] for k in range(n)],
            [seg.fixed[2][k] for k in range(n)], list(seg.secs), seg.totals, seg.fixed[0],
            [type(seg.fixed[2][k]) for k in range(n)], len(seg.seqs), len(seg.fixed[2]))


def test_the_array_segment_reads_as_the_list_segment():
    """`_numbered` (the whole-array pass's segment: times, seconds and collective numbers read
    from arrays when asked) gives what `_segment` gives, value for value and type for type, and
    advances the collective counter alike."""
    from simulator import paced
    (lists, after_lists), (arrays, after_arrays) = _both(paced._numbered)
    assert _read(arrays) == _read(lists)
    assert lists.seqs == [0, 5, 0, 0, 6, 0, 7] and after_lists == after_arrays == 8


def test_a_wrong_array_segment_is_caught():
    """The comparison above can fail: collective numbers counted from one too many are seen."""
    from simulator import paced

    def off(m, *args):
        seg = paced._numbered(m, *args)
        seg.seqs.first += 1
        return seg
    (lists, _), (arrays, _) = _both(off)
    assert _read(arrays) != _read(lists)


@pytest.mark.parametrize("flat", [None, (0, 0)], ids=["lists", "flat"])
@pytest.mark.parametrize("arrival_s", [2.6, 50.0])
@pytest.mark.parametrize("launch_s", [0.1, 0.24])
def test_a_host_behind_for_the_first_run_only_gives_the_host_program(launch_s, arrival_s, flat):
    """With the stream idle the host is behind for the first run (its ops wait for their
    launches) and ahead after it: the loop takes that run and the whole-array pass the rest, as
    two segments, and the op-level program's trace comes out."""
    rt, fast, fast_res, _ = run(True, arrival_s, launch_s, flat=flat)
    _, slow, slow_res, _ = run(False, arrival_s, launch_s, flat=flat)
    assert rt.segment_counts["run"] == 2 and rt.segment_counts.get("paced_runs", 0) >= 3
    assert fast == slow and fast_res == slow_res


def test_a_wrong_rest_after_the_first_run_is_caught(monkeypatch):
    """The comparison above can fail: a rest that leaves out an op is seen."""
    from simulator import paced

    def short(runs):
        rest = [list(r) for r in runs][1:]
        rest[1] = rest[1][1:]
        return rest
    monkeypatch.setattr(paced, "_after_first", short)
    _, fast, fast_res, _ = run(True, 50.0, 0.1)
    monkeypatch.undo()
    _, slow, slow_res, _ = run(False, 50.0, 0.1)
    assert (fast, fast_res) != (slow, slow_res)
