"""TorchRuntime: the `Runtime` verbs (simulator/runtime.py) on real torch work, in real time.

One process. The host program and the workload source run as generators on the calling thread
(`Driver`, clock.py); each (device, stream) is a worker thread running its FIFO (device.py); ops
are real torch work (work.py) and collectives run over in-process process groups (comm.py). Op
rows go into the same `TraceRecorder` rows SimRuntime writes and requests through the same
`Serving` layer, so metrics, outputs and the Perfetto export read a TorchRuntime trace unchanged.
`mirror` is a no-op (every device runs); `launch_paced` is paced.literal, the verb's host program;
`profiled_seconds` / `profiled_slowdown` answer from the hardware profile's cost and contention
models, as SimRuntime's do. docs/torch_runtime.md says what runs where.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Generator

import torch

from simulator import paced
from simulator.contention import ContentionModel, make_contention
from simulator.cost import CostModel
from simulator.errors import DeadlockError, SimulationError
from simulator.hardware import HardwareProfile
from simulator.ops import Op, is_comm
from simulator.serving import Serving, ServingVerbs
from simulator.trace import KEEP_ALL, Trace, TraceRecorder

from .clock import RealClock, frozen_heap
from .comm import Comm
from .cuda import CudaParts
from .device import OP, RECORD, WAIT, Completer, Item, Stream, TorchEvent, op_row
from .work import POOL, Work

_INFO_ENTRIES = 100_000


class _Probe:
    __slots__ = ("op_class", "priority")

    def __init__(self, op_class: str):
        self.op_class, self.priority = op_class, 0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class HostLog:
    """What the host did in real runs: its thread's busy seconds (the host program's steps and
    callbacks), its launches, its SPMD launches (an op launched on several devices one after
    the other, as `launch_seq` and liger do, counts once; any other launch counts once too), and
    how late it reacted to completed events: per blocking wait (synchronize, wait_any) the
    seconds from the event that ended it to the host resuming, per event with host callbacks the
    seconds from the event to its callbacks running; and per stream wait on an event that
    blocked, the seconds from the event to the stream resuming, and per op its dispatch delay
    (CPU: the streams' reactions, kept with the host's as properties of one program's run)."""
    busy_s: float = 0.0
    launches: int = 0
    spmd_launches: int = 0
    wakeups_s: list = field(default_factory=list)
    callbacks_s: list = field(default_factory=list)
    event_waits_s: list = field(default_factory=list)   # a stream's blocked wait: event to resume
    # per op: its start minus when its stream could have started it (the later of its launch and
    # the stream's previous item; for an op launched to an idle stream, the moment it woke)
    dispatches_s: list = field(default_factory=list)
    # per item (op, event record or wait) launched to an idle stream: launch to the stream's
    # thread waking for it; per event record: the stream's time recording it
    idle_wakeups_s: list = field(default_factory=list)
    records_s: list = field(default_factory=list)

    def add(self, other: "HostLog") -> None:
        self.busy_s += other.busy_s
        self.launches += other.launches
        self.spmd_launches += other.spmd_launches
        self.wakeups_s += other.wakeups_s
        self.callbacks_s += other.callbacks_s
        self.event_waits_s += other.event_waits_s
        self.dispatches_s += other.dispatches_s
        self.idle_wakeups_s += other.idle_wakeups_s
        self.records_s += other.records_s


@dataclass
class RunLog:
    """What calibration runs log: every op run (op, device, stream, start, end, transfer start)
    and the host (`HostLog`, with each op's dispatch delay): over all runs in `host`, and per
    strategy label in `host_by_label` (calibrate/inrun.py fills that)."""
    ops: list = field(default_factory=list)
    host: HostLog = field(default_factory=HostLog)
    host_by_label: dict = field(default_factory=dict)   # label -> HostLog


class TorchRuntime(CudaParts, ServingVerbs):
    """`devices` devices of `device_type` ("cpu": worker threads on this machine; "cuda": GPUs
    0..devices-1) as a Runtime; `hardware` only answers profiled_* and classifies ops.
    `stall_s`: a run whose devices make no progress for this long is reported as a deadlock."""

    def __init__(self, hardware: HardwareProfile, devices: int, *, device_type: str = "cpu",
                 cost: CostModel | None = None, contention: ContentionModel | None = None,
                 keep_ops: int = KEEP_ALL, stall_s: float = 120.0, threads: int | None = None):
        if devices < 1:
            raise ValueError("devices must be >= 1")
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be cpu or cuda, got {device_type!r}")
        self.cuda = device_type == "cuda"
        if self.cuda and torch.cuda.device_count() < devices:
            raise SimulationError(f"{devices} CUDA devices asked for, "
                                  f"{torch.cuda.device_count()} available")
        self.hw, self.devices, self.device_type = hardware, devices, device_type
        self.cost = cost or CostModel(hardware)
        self.contention = contention or make_contention(hardware.contention)
        self.stall_s = stall_s
        self.keep_ops = keep_ops
        # calibration runs (calibrate/inrun.py): a RunLog gets every op's (op, device, stream,
        # start, end, transfer start) and the host thread's busy time and launches; None: nothing
        self.run_log: RunLog | None = None
        self.launches = self.spmd_launches = 0      # HostLog's counts
        self._last_launch: tuple = (None, -1)       # (op, device) launched last
        self.clock = RealClock()
        self.driver = self.clock.driver
        self.serving = Serving(self.clock)
        self._threads_before = torch.get_num_threads()
        if not self.cuda:
            torch.set_num_threads(threads or max(1, cpu_count() // devices))
        self.comm = Comm("nccl" if self.cuda else "gloo",
                         torch.float16 if self.cuda else torch.float32, stall_s,
                         (lambda d: torch.device("cuda", d)) if self.cuda else None)
        self._info: dict = {}
        self._error: BaseException | None = None
        self._cuda_streams: dict = {}
        self._completers: dict = {}
        self._timed: list = []                   # CUDA: (stream, item, info, start ev, end ev)
        self._base: dict = {}                    # CUDA: device -> (base event, clock time)
        self.streams: list[list[Stream]] = [[Stream(self, d, 0, 0)] for d in range(devices)]

    # ------------------------------------------------------------------------------ threads
    def make_work(self, device: int, index: int) -> Work:
        """The stream's Work from the process's pool (work.POOL; given back by `close`)."""
        return POOL.take(torch.device("cuda", device) if self.cuda else torch.device("cpu"),
                         device, index)

    def enter_thread(self, device: int) -> None:
        if self.cuda:                                              # pragma: no cover
            torch.cuda.set_device(device)

    def fail(self, exc: BaseException, stream: Stream) -> None:
        """A stream thread failed: the host thread raises it as a SimulationError."""
        if self._error is None:
            self._error = exc

        def boom():
            raise SimulationError(f"device {stream.device} stream {stream.index} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self.driver.post(self.clock.now, boom)

    def run_op(self, stream: Stream, item: Item) -> None:
        op, clock = item.op, self.clock
        if self.cuda:                                              # pragma: no cover
            return self._run_op_cuda(stream, item)
        if is_comm(op):
            note, run, skey = self.comm.prepare(op, stream.device, stream.index)
            start = clock.now
            note(start)
            run()
            end = clock.now
            xfer = self.comm.joined(skey, len(op.group))
        else:
            fn = stream.work.prepare(op)
            start = clock.now
            fn()
            end = xfer = clock.now
        # when the stream could have started it: the later of its launch and the end of the
        # stream's previous item (or, launched to an idle stream, the moment its thread woke)
        ready = stream.woke_s if stream.woke_s is not None else max(item.launched_s,
                                                                    stream.free_s)
        stream.free_s = end           # what follows (this row, the FIFO's turn) is the next op's
        stream.rows.append(op_row(stream, item, start, end, xfer))
        if self.run_log is not None:                # calibration runs (calibrate/inrun.py)
            self.run_log.ops.append((op, stream.device, stream.index, start, end, xfer))
            self.run_log.host.dispatches_s.append(start - ready)

    def reach(self, ev: TorchEvent, stream: Stream) -> None:
        """Stream thread: `stream` got to `ev`'s record."""
        if self.cuda:                                              # pragma: no cover
            ev.cuda = torch.cuda.Event(enable_timing=True)
            ev.cuda.record(self.cuda_stream(stream))
            ev.issued.set()
            self._completers[(stream.device, stream.index)].put(ev)
            return
        self.reached(ev, self.clock.now)

    def reached(self, ev: TorchEvent, t: float) -> None:
        ev.time = t
        ev.reached.set()
        self.driver.post(t, lambda: self._complete(ev))

    def _complete(self, ev: TorchEvent) -> None:
        """Host thread: `ev` is done; its callbacks run now."""
        ev.done = True
        callbacks, ev.callbacks = ev.callbacks, []
        if self.run_log is not None and callbacks:
            self.run_log.host.callbacks_s.append(self.clock.now - ev.time)
        for fn in callbacks:
            fn(ev.time)
        for sig in ev.waiters:
            sig.fire()
        ev.waiters = []

    # ------------------------------------------------------------------------------ verbs
    @property
    def now(self) -> float:
        return self.clock.now

    def create_stream(self, device: int, priority: int = 0) -> int:
        self._check_device(device)
        st = Stream(self, device, len(self.streams[device]), priority)
        self.streams[device].append(st)
        if self.cuda:                                              # pragma: no cover
            self._completers[(device, st.index)] = Completer(self, st)
        return st.index

    def _stream(self, device: int, stream: int) -> Stream:
        self._check_device(device)
        sts = self.streams[device]
        if not 0 <= stream < len(sts):
            raise SimulationError(f"device {device} has no stream {stream} (it has {len(sts)})")
        return sts[stream]

    def _check_device(self, device: int) -> None:
        if not 0 <= device < self.devices:
            raise SimulationError(f"device {device} out of range (0..{self.devices - 1})")

    def _classify(self, op) -> tuple:
        info = self._info.get(op)
        if info is None:
            if len(self._info) >= _INFO_ENTRIES:
                self._info.clear()
            c = self.cost.cost(op)
            info = self._info[op] = (op.family, c.op_class, c.seconds)
        return info

    def launch(self, op: Op, device: int, stream: int = 0, request: int = -1, phase: str = "") -> None:
        st = self._stream(device, stream)
        if is_comm(op) and device not in op.group:
            raise SimulationError(f"{op.name!r} launched on device {device}, not in its group "
                                  f"{op.group}")
        self.launches += 1
        last_op, last_device = self._last_launch
        if op is not last_op or device <= last_device:    # not the same op on the next device
            self.spmd_launches += 1
        self._last_launch = (op, device)
        st.put(Item(OP, op, None, self._classify(op), request, phase, self.clock.now))

    def launch_seq(self, ops, devices, stream: int = 0, request: int = -1, phase: str = "") -> None:
        for op in ops:
            for d in devices:
                self.launch(op, d, stream, request, phase)

    def launch_paced(self, runs, devices, stream: int = 0, request: int = -1, phase: str = "",
                     until_arrival: bool = True) -> Generator:
        return paced.literal(self, runs, tuple(devices), stream, request, phase, until_arrival)

    def mirror(self, group) -> None:
        """Every device runs for real: nothing to do."""

    def new_event(self, name: str = "") -> TorchEvent:
        return TorchEvent(name)

    def record(self, event: TorchEvent, device: int, stream: int = 0) -> None:
        st = self._stream(device, stream)
        if event.recorded:
            raise SimulationError(f"event {event.name!r} recorded twice (events are single-use)")
        event.recorded, event.device = True, device
        st.put(Item(RECORD, None, event, (), -1, "", self.clock.now))

    def record_all(self, name: str, devices, stream: int = 0) -> list:
        evs = [self.new_event(name) for _ in devices]
        for ev, d in zip(evs, devices):
            self.record(ev, d, stream)
        return evs

    def wait(self, device: int, stream: int, event: TorchEvent) -> None:
        self._stream(device, stream).put(Item(WAIT, None, event, (), -1, "", self.clock.now))

    def query(self, event: TorchEvent) -> bool:
        return event.done

    def when(self, event: TorchEvent, fn: Callable[[float], None]) -> None:
        if event.done:
            fn(event.time)
        else:
            event.callbacks.append(fn)

    def synchronize(self, event: TorchEvent) -> Generator:
        if not event.done:
            sig = self.clock.new_signal()
            event.waiters.append(sig)
            self.serving.host_state = f"blocked in synchronize on event {event.name!r}"
            yield from sig.wait()
            self.serving.host_state = "running"
            self._woken((event,))

    def wait_any(self, events) -> Generator:
        if any(e.done for e in events):
            return
        sig = self.clock.new_signal()
        for e in events:
            e.waiters.append(sig)
        self.serving.host_state = "blocked in wait_any on events " + ", ".join(
            repr(e.name) for e in events)
        yield from sig.wait()
        self.serving.host_state = "running"
        self._woken(events)

    def _woken(self, events) -> None:
        """The host resumed after blocking on `events`: log how long after the first of them
        completed (calibration runs: the host's wake-up latency)."""
        if self.run_log is not None:
            fired = min(e.time for e in events if e.done)
            self.run_log.host.wakeups_s.append(self.clock.now - fired)

    def profiled_seconds(self, op: Op) -> float:
        """The op's isolated time from the hardware profile's cost model, with the profile's
        per-op dispatch time (as SimRuntime)."""
        return self.cost.cost(op).seconds + self.hw.device.dispatch_s

    def profiled_slowdown(self, op_class: str, beside_class: str) -> float:
        return 1.0 / self.contention.rates([_Probe(op_class), _Probe(beside_class)])[0]

    # ------------------------------------------------------------------------------ driving
    def run(self, strategy, source: Callable[[Serving], Generator], scheduler=None) -> Trace:
        """Run `strategy.host(self)` (or `batch_host` with a batch `scheduler`) and
        `source(serving)` in real time until every request is done and the devices are idle."""
        with frozen_heap():
            return self._run(strategy, source, scheduler)

    def _run(self, strategy, source, scheduler) -> Trace:
        try:
            strategy.setup(self)
            self.clock.start()
            if self.cuda:                                          # pragma: no cover
                self._start_cuda()
            self.driver.spawn(source(self.serving))
            host = self.driver.spawn(self.serving.host_program(strategy, self, scheduler))
            self.driver.run(self._idle, self.stall_s, self._stalled)
            end_s = self.clock.now
            if self._error is not None:
                raise SimulationError(f"a device stream failed: {type(self._error).__name__}: "
                                      f"{self._error}") from self._error
            if not host.done:
                raise DeadlockError(f"deadlock at t={end_s:.6f}s: host: {self.serving.host_state}")
            unfinished = self.serving.unfinished()
            if unfinished:
                raise SimulationError(f"{len(unfinished)} request(s) never finished (first: "
                                      f"{unfinished[0]}); the strategy did not mark their completion")
            if self.cuda:                                          # pragma: no cover
                self._cuda_rows()
            if self.run_log is not None:
                self.run_log.host.busy_s += self.driver.busy_s
                self.run_log.host.add(HostLog(0.0, self.launches, self.spmd_launches))
        finally:
            self.close()
        return self._trace(end_s)

    def _idle(self) -> bool:
        return all(st.pending == 0 for sts in self.streams for st in sts) and \
            all(not c.queue for c in self._completers.values())

    def _stalled(self) -> None:
        stuck = []
        for sts in self.streams:
            for st in sts:
                item = st.head()
                if item is None:
                    continue
                what = {OP: lambda i: f"running {i.op.name!r}",
                        RECORD: lambda i: f"recording {i.event.name!r}",
                        WAIT: lambda i: f"waiting on event {i.event.name!r}"}[item.kind](item)
                stuck.append(f"device {st.device} stream {st.index}: {what}")
        stuck.append(f"host: {self.serving.host_state}")
        raise DeadlockError(f"no progress for {self.stall_s:g} s at t={self.clock.now:.3f}s: "
                            + "; ".join(stuck))

    def close(self) -> None:
        """Stop the stream threads and restore torch's thread count."""
        for sts in self.streams:
            for st in sts:
                st.stop()
        for c in self._completers.values():
            c.stop()
        for sts in self.streams:
            for st in sts:
                st.thread.join(timeout=2.0)
                if not st.thread.is_alive():
                    POOL.give(st.work, st.device, st.index)
        if not self.cuda:
            torch.set_num_threads(self._threads_before)

    def _trace(self, end_s: float) -> Trace:
        rows = sorted((r for sts in self.streams for st in sts for r in st.rows),
                      key=lambda r: r[9])
        rec = TraceRecorder(self.devices, self.keep_ops)
        rec.buffer.extend(rows)
        rec.fold(float("inf"))
        rec.close()
        makespan = max((r[9] for r in rows), default=0.0)
        meta = {"devices": self.devices, "hardware": self.hw.name, "makespan_s": makespan,
                "ops": rec.ops, "marks": rec.marks, "rows_from_s": 0.0, "runtime": "torch",
                "device_type": self.device_type, "wall_s": end_s}
        trace = Trace(rec.kept, self.serving.records(rec.first_start), meta, rec.device_stats())
        self.serving.add_batching(trace)
        return trace
