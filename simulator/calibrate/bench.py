"""Micro-benchmarks of what TorchRuntime runs: compute ops through `torchrt.work.Work`,
collectives and send/recv through `torchrt.comm.Comm` (in-process gloo groups), contention between
op classes on two threads per device, and the runtime's own per-op costs (host launch, stream
dispatch) measured on a `TorchRuntime`.

Every compute op is timed as TorchRuntime times it (perf_counter around the prepared kernel alone)
on every device thread at once after a barrier (an SPMD step, as tp runs it), so each thread's time
includes what the other devices' threads take from the shared cores and memory. A measurement is
the median over `reps` repetitions (and over the device threads) after one warm-up call.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from simulator.ops import Collective, Elementwise, Gemm, SendRecv
from simulator.torchrt.comm import Comm
from simulator.torchrt.work import Work

CLASS_OPS = ("compute", "memory", "comm")


@dataclass(frozen=True)
class Timed:
    """One measured op: its median time in seconds over `samples` timed calls."""
    op: object
    seconds: float
    samples: int


def run_threads(fn: Callable[[int], object], ids: Sequence[int]) -> list:
    """fn(i) on one new thread per id, joined; results in `ids` order; a thread's error re-raised."""
    out: list = [None] * len(ids)
    errors: list = []

    def body(k: int, i: int) -> None:
        try:
            out[k] = fn(i)
        except BaseException as exc:              # re-raised on the calling thread
            errors.append(exc)
    threads = [threading.Thread(target=body, args=(k, i), name=f"calib-{i}")
               for k, i in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


class DeviceThreads:
    """`devices` simulated devices, each with its own `Work` (tensor caches) kept across runs;
    `run(fn)` runs fn(d, work) on one thread per device and returns their results."""

    def __init__(self, devices: int):
        self.devices = devices
        self.works = [Work("cpu") for _ in range(devices)]

    def run(self, fn: Callable[[int, Work], object]) -> list:
        return run_threads(lambda d: fn(d, self.works[d]), range(self.devices))


def time_compute(pool: DeviceThreads, ops: Sequence, reps: int,
                 progress: Callable[[int, int], None] | None = None) -> list[Timed]:
    """Each op on every device thread at once (a barrier before each call): median seconds."""
    barrier = threading.Barrier(pool.devices)

    def body(d: int, work: Work) -> list:
        times = []
        for i, op in enumerate(ops):
            fn = work.prepare(op)
            fn()                                           # warm-up: first-use costs
            ts = []
            for _ in range(reps):
                barrier.wait()
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times.append(ts)
            if d == 0 and progress is not None:
                progress(i + 1, len(ops))
        return times
    per_device = pool.run(body)
    return [Timed(op, statistics.median(t for dev in per_device for t in dev[i]),
                  reps * pool.devices) for i, op in enumerate(ops)]


def time_comm(devices: int, ops: Sequence, reps: int, comm: Comm | None = None,
              stream: int = 0, before=None, device_type: str = "cpu") -> list[Timed]:
    """Each collective / send-recv on its members' threads (a barrier before each call). One
    sample: the median member's end minus the last member's start (the transfer once everyone has
    joined, what a trace row's transfer time is). `before`: a compute op each member runs between
    the barrier and the call (untimed), so the transfer starts as in a strategy's step, right
    after a kernel, rather than from threads that were all waiting at the barrier.
    `device_type` "cuda": member d is GPU d, the transfers are NCCL's, and a call ends when its
    GPU has finished it."""
    cuda = device_type == "cuda"
    if comm is None:
        comm = Comm("nccl", torch.float16, 120.0, lambda d: torch.device("cuda", d)) if cuda \
            else Comm("gloo", torch.float32, 120.0)
    done = (lambda d: torch.cuda.synchronize(d)) if cuda else (lambda d: None)
    members = sorted({d for op in ops for d in op.group})
    barriers = {tuple(sorted(op.group)): None for op in ops}
    barriers = {g: threading.Barrier(len(g)) for g in barriers}
    starts: dict = {}
    lock = threading.Lock()
    works = {d: Work(torch.device("cuda", d) if cuda else "cpu") for d in members}

    def body(d: int) -> list:
        if cuda:                                          # pragma: no cover - needs CUDA
            torch.cuda.set_device(d)
        mine = []
        for i, op in enumerate(ops):
            if d not in op.group:
                continue
            barrier = barriers[tuple(sorted(op.group))]
            run = comm.prepare(op, d, stream)[1]
            run()                                          # warm-up (connections)
            done(d)
            pre = works[d].prepare(before) if before is not None else None
            for r in range(reps + 1):
                barrier.wait()
                if pre is not None:
                    pre()
                    done(d)
                t0 = time.perf_counter()
                run()
                done(d)
                t1 = time.perf_counter()
                if r:                                      # the first timed call warms too
                    with lock:
                        starts.setdefault((i, r), []).append(t0)
                    mine.append((i, r, t1))
        return mine
    per_op: dict = {}
    for mine in run_threads(body, members):
        for i, r, t1 in mine:
            per_op.setdefault((i, r), []).append(t1)
    out = []
    for i, op in enumerate(ops):
        samples = [statistics.median(per_op[(i, r)]) - max(starts[(i, r)])
                   for r in range(1, reps + 1)]
        out.append(Timed(op, max(1e-7, statistics.median(samples)), reps))
    return out


def class_op(cls: str, hidden: int, devices: int, dtype: str) -> object:
    """The op standing for an op class in the contention runs."""
    if cls == "compute":
        return Gemm(256, 4 * hidden, hidden, dtype, "contention_gemm")
    if cls == "memory":
        return Elementwise(float(24 * 2**20), "contention_add")
    return Collective("all_reduce", float(2**20), tuple(range(devices)), "contention_ar")


def _loop(op, d: int, work: Work, comm: Comm, stream: int) -> Callable[[], object]:
    if isinstance(op, (Collective, SendRecv)):
        return comm.prepare(op, d, stream)[1]
    return work.prepare(op)


def contention(devices: int, hidden: int, dtype: str, reps: int) -> dict:
    """Per class pair (a, b): median time of a class-a op with a class-b op looping beside it on a
    second thread of every device, over its time alone (both with every device running the same).
    Also 'same': two class-a (compute) ops at once on each device, alone-time / together-time
    (the share each gets). Returns {(a, b): ratio, 'share': ratio, 'alone': {cls: seconds}}."""
    comm = Comm("gloo", torch.float32, 120.0)
    works = [[Work("cpu"), Work("cpu")] for _ in range(devices)]
    ops = {c: class_op(c, hidden, devices, dtype) for c in CLASS_OPS}
    alone: dict = {}

    def measure(fg: str, bg: str | None) -> float:
        fg_op, bg_op = ops[fg], ops[bg] if bg else None
        barrier = threading.Barrier(devices * (2 if bg else 1))
        bg_iters = 0
        if bg:
            bg_iters = max(3, math.ceil(1.5 * (reps + 2) * alone[fg] / alone[bg]))
        running = threading.Event()
        done_bg = [0]
        samples: list = []
        lock = threading.Lock()

        def fg_body(d):
            fn = _loop(fg_op, d, works[d][0], comm, 0)
            fn()
            barrier.wait()
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if bg is None or running.is_set():
                    with lock:
                        samples.append(dt)

        def bg_body(d):
            fn = _loop(bg_op, d, works[d][1], comm, 1)
            fn()
            barrier.wait()
            running.set()
            for _ in range(bg_iters):
                fn()
            with lock:
                done_bg[0] += 1
                if done_bg[0] == devices:
                    running.clear()
        threads = [threading.Thread(target=fg_body, args=(d,)) for d in range(devices)]
        if bg:
            threads += [threading.Thread(target=bg_body, args=(d,)) for d in range(devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.median(samples) if samples else float("nan")

    for c in CLASS_OPS:
        alone[c] = measure(c, None)
    out: dict = {"alone": dict(alone)}
    for a in CLASS_OPS:
        for b in CLASS_OPS:
            if a != b:
                t = measure(a, b)
                out[(a, b)] = t / alone[a] if math.isfinite(t) else float("nan")
    together = measure("compute", "compute")
    out["share"] = alone["compute"] / together if math.isfinite(together) else float("nan")
    return out


class _Probe:
    """A minimal host program for TorchRuntime: `n` tiny elementwise ops on device 0, launched
    back to back, then a synchronize; notes the host time the launches took."""

    def __init__(self, n: int):
        self.n, self.launch_s = n, 0.0

    def setup(self, rt) -> None:
        pass

    def host(self, rt):
        op = Elementwise(1200.0, "probe")
        t0 = time.perf_counter()
        for _ in range(self.n):
            rt.launch(op, 0)
        self.launch_s = (time.perf_counter() - t0) / self.n
        ev = rt.new_event("probe_done")
        rt.record(ev, 0)
        yield from rt.synchronize(ev)


def runtime_overheads(hardware, devices: int, n: int = 400, device_type: str = "cpu") -> dict:
    """Host launch cost per `launch` call and the stream's gap between back-to-back ops (the
    thread's own bookkeeping and the next op's preparation; on a GPU, the gap between the
    kernels), measured on a TorchRuntime run."""
    from simulator.torchrt.runtime import TorchRuntime

    def source(serving):
        serving.sources_done()
        return
        yield                                             # noqa: unreachable (a generator)
    probe = _Probe(n)
    trace = TorchRuntime(hardware, devices, stall_s=60, device_type=device_type).run(probe,
                                                                                    source)
    rows = sorted(trace.rows, key=lambda r: r.start_s)[n // 10:]      # past the first ops
    gaps = [b.start_s - a.end_s for a, b in zip(rows, rows[1:])]
    kernels = [r.end_s - r.start_s for r in rows]
    return {"launch_s": probe.launch_s, "gap_s": statistics.median(gaps),
            "tiny_op_s": statistics.median(kernels)}
