"""`tp`: Megatron tensor parallelism over all devices, one stream per device.

Each request runs its steps (prefill, then decode steps) with every op launched on every device;
compute and the two all-reduces per layer are serialised on the one stream. Requests are served
FCFS, one after another. With `host_sync` (default) the host synchronises after each step of a
generative request, as a real decode loop must to sample the next token; the host's launch
overhead then shows up in the step time when kernels are short.

Under continuous batching (`batch_host`) there is one step in flight: the host takes the
scheduler's batch, launches its ops on every device, and synchronises on the step's end before
asking for the next (the scheduler needs the sampled tokens), as vLLM's engine loop does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

from simulator.model import check_tp_degree

from .base import Params, Strategy
from .program import batch_step_ops, request_steps, step_ops


@dataclass(frozen=True)
class TPParams(Params):
    host_sync: bool = True


class TP(Strategy):
    name = "tp"
    Params = TPParams

    def validate(self, where: str, key: str) -> None:
        check_tp_degree(self.model, self.devices, where, key)

    def setup(self, rt) -> None:
        rt.mirror(tuple(range(self.devices)))      # every device runs the same program

    def host(self, rt) -> Generator:
        group = tuple(range(self.devices))
        while True:
            req = yield from rt.next_request()
            if req is None:
                return
            yield from self.serve(rt, req, group)

    def serve(self, rt, req, group) -> Generator:
        steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
        for i, step in enumerate(steps):
            self.launch_step(rt, req, group, step)
            yield from self.end_step(rt, req, group, i, len(steps))

    def launch_step(self, rt, req, group, step, stream: int = 0) -> None:
        """Every op of one forward step on every device of `group`, in order, on `stream`."""
        rt.launch_seq(step_ops(self.model, len(group), step, group), group, stream, req.id, step.phase)

    def end_step(self, rt, req, group, i: int, n_steps: int, stream: int = 0) -> Generator:
        """Mark step i's end: first token after the prefill, finish after the last step; with
        `host_sync` the host waits for a step before launching the next (sampling)."""
        done = rt.new_event(f"r{req.id}.step{i}")
        rt.record(done, group[0], stream)
        if i == 0:
            rt.first_token_when(req.id, done)
        if i == n_steps - 1:
            rt.finish_when(req.id, done)
        elif self.params.host_sync:
            yield from rt.synchronize(done)

    def batch_host(self, rt) -> Generator:
        group = tuple(range(self.devices))
        while True:
            batch = yield from rt.next_batch()
            if batch is None:
                return
            rt.launch_seq(batch_step_ops(self.model, len(group), batch, group), group, 0, -1,
                          batch.phase)
            done = rt.new_event(f"batch{batch.id}")
            rt.record(done, group[0], 0)
            rt.batch_done_when(batch, done)
            yield from rt.synchronize(done)
