"""The runtime seam (DESIGN §1): the only verbs a strategy's host code may use.

A strategy talks to a runtime through `Runtime` alone, modelled on CUDA's host API: streams,
launches, events, synchronisation, host callbacks, the clock, and the profiled time of an op (as a
real scheduler reads its offline profile). The request verbs (`next_request`, `try_next_request`,
`first_token_when`, `finish_when`) and, with continuous batching, the batch verbs (`next_batch`,
`try_next_batch`, `batch_done_when`) reach the runtime-neutral serving layer (simulator/serving.py).
`SimRuntime` (simulator/engine.py) implements it over the SimPy machine; a real-hardware runtime
implements the same verbs with torch streams, events and collectives, so one strategy code runs on
both. tests/test_runtime.py checks that strategies call nothing else: no engine or SimPy object, no
event internals, no private names.

Events are opaque handles: a strategy creates, records, waits on, queries and synchronises on them,
and learns their completion time only through `when` callbacks.

A host program is a generator; a verb that blocks the host (`synchronize`, `wait_any`,
`next_request`, `next_batch`) is used as ``yield from rt.verb(...)``.
"""
from __future__ import annotations

from typing import Any, Callable, Generator, Optional, Protocol, Sequence, runtime_checkable

from .ops import Op


class EventHandle(Protocol):
    """An event created by `Runtime.new_event`; only its name is readable."""
    name: str


@runtime_checkable
class Runtime(Protocol):
    """The verbs of a runtime, as strategies see them."""

    @property
    def now(self) -> float:
        """Seconds since the start of the run."""

    def create_stream(self, device: int, priority: int = 0) -> int:
        """A new stream on `device` (lower priority number = higher priority); its index. Stream 0
        exists on every device, priority 0."""

    def launch(self, op: Op, device: int, stream: int = 0, request: int = -1, phase: str = "") -> None:
        """Enqueue `op` on (device, stream), on behalf of `request` in `phase`; costs host time.
        A collective or send/recv is launched on each member device (NCCL matching by order)."""

    def launch_seq(self, ops: Sequence[Op], devices: Sequence[int], stream: int = 0,
                   request: int = -1, phase: str = "") -> None:
        """``for op in ops: for d in devices: launch(op, d, stream, request, phase)`` (an SPMD
        launch, as a captured CUDA graph replayed on each device)."""

    def launch_paced(self, runs: Sequence[Sequence[Op]], devices: Sequence[int], stream: int = 0,
                     request: int = -1, phase: str = "", until_arrival: bool = True) -> Generator:
        """Exactly this host program: for each run, except the first, stop if `until_arrival`
        and a request is waiting, then synchronize on the previous run's `waits`; record `waits`
        (``record_all``) before the run's last op, launch the run on every device (op-major), record
        `mains` (``record_all``) after it. Returns (runs launched, the last run's waits, its mains).
        A simulator may compute it in one pass. `runs` may also offer ``flat() -> (ops, cuts)``:
        run j is ``ops[cuts[j]:cuts[j + 1]]`` (the same runs, as one list and cut points), and
        `ops` is not changed afterwards, so that a runtime may keep what it derived from it."""

    def mirror(self, group: Sequence[int]) -> None:
        """A promise, made before launching to `group`: every device of it gets the same launches,
        records and waits (on streams of the same index) as `group[0]`, each right after
        `group[0]`'s (an SPMD program issued leader first). A runtime may then run `group[0]`
        alone and copy its records; a real one ignores it."""

    def new_event(self, name: str = "") -> EventHandle:
        """A fresh event (single use: recorded once)."""

    def record(self, event: EventHandle, device: int, stream: int = 0) -> None:
        """The event completes when (device, stream) reaches this point."""

    def record_all(self, name: str, devices: Sequence[int], stream: int = 0) -> list:
        """Exactly ``evs = [new_event(name) for _ in devices]`` then ``for ev, d in zip(evs,
        devices): record(ev, d, stream)``; returns evs (an SPMD record). Where a `mirror` promise
        covers them, the handle of a follower recorded after its leader may be the leader's handle
        itself: the follower's own event would complete at that very time."""

    def wait(self, device: int, stream: int, event: EventHandle) -> None:
        """Later items on (device, stream) start only after `event` has completed."""

    def query(self, event: EventHandle) -> bool:
        """Whether `event` has completed, without blocking (cudaEventQuery)."""

    def synchronize(self, event: EventHandle) -> Generator:
        """Host blocks until `event` has completed (cudaEventSynchronize)."""

    def wait_any(self, events: Sequence[EventHandle]) -> Generator:
        """Host blocks until at least one of `events` has completed."""

    def when(self, event: EventHandle, fn: Callable[[float], None]) -> None:
        """Call fn(completion time) on the host when `event` completes (at once if it has)."""

    def profiled_seconds(self, op: Op) -> float:
        """The op's isolated time as the runtime's profile reports it."""

    def profiled_slowdown(self, op_class: str, beside_class: str) -> float:
        """How much slower an op of `op_class` runs beside one of `beside_class` on one device."""

    def next_request(self) -> Generator:
        """Host blocks until a request arrives; returns it, or None once no more will arrive."""

    def try_next_request(self) -> Optional[Any]:
        """The next arrived request without blocking, or None."""

    def waiting(self) -> int:
        """Requests that have arrived and not been taken by the host (the queue's length)."""

    def next_batch(self, wake: Sequence[EventHandle] = (), parts: int = 1) -> Generator:
        """Continuous batching: host blocks until the serving layer's scheduler has a step to
        run and returns its Batch (simulator/batching.py); returns None when one of `wake` has
        completed first, or once every request is served and no more will arrive. `parts` > 1:
        the batch is one of that many micro-batches run at once (1/parts of the step budget)."""

    def try_next_batch(self, parts: int = 1) -> Optional[Any]:
        """The next step's Batch without blocking, or None if no request can take part now."""

    def batch_done_when(self, batch: Any, event: EventHandle) -> None:
        """`batch`'s step has ended when `event` completes: its tokens exist, and its requests
        may be scheduled again."""

    def first_token_when(self, request: int, event: EventHandle) -> None:
        """`request`'s first token is out when `event` completes."""

    def finish_when(self, request: int, event: EventHandle) -> None:
        """`request` is finished when `event` completes."""


RUNTIME_VERBS = frozenset(name for name in vars(Runtime) if not name.startswith("_"))


class Signal(Protocol):
    """A one-shot wake-up: the host waits on it, someone fires it (idempotent)."""

    def wait(self) -> Generator: ...

    def fire(self) -> None: ...


class HostClock(Protocol):
    """Time as the serving layer and workload sources need it, from whichever runtime runs."""

    @property
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Generator:
        """For a source or host generator: let `seconds` pass."""

    def call_later(self, seconds: float, fn: Callable[[], None]) -> None: ...

    def new_signal(self) -> Signal: ...
