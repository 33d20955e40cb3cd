"""`tp`: Megatron tensor parallelism over all devices, one stream per device.

Each request runs its steps (prefill, then decode steps) with every op launched on every device;
compute and the two all-reduces per layer are serialised on the one stream. Requests are served
FCFS, one after another. With `host_sync` (default) the host synchronises after each step of a
generative request, as a real decode loop must to sample the next token; the host's launch
overhead then shows up in the step time when kernels are short.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

from simulator.model import check_tp_degree

from .base import Params, Strategy
from .program import request_steps, step_ops


@dataclass(frozen=True)
class TPParams(Params):
    host_sync: bool = True


class TP(Strategy):
    name = "tp"
    Params = TPParams

    def validate(self, where: str, key: str) -> None:
        check_tp_degree(self.model, self.devices, where, key)

    def host(self, rt) -> Generator:
        group = tuple(range(self.devices))
        while True:
            req = yield from rt.next_request()
            if req is None:
                return
            yield from self.serve(rt, req, group)

    def serve(self, rt, req, group) -> Generator:
        steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
        tp = len(group)
        for i, step in enumerate(steps):
            for op in step_ops(self.model, tp, step, group):
                for d in group:
                    rt.launch(op, d, 0, req.id, step.phase)
            done = rt.new_event(f"r{req.id}.step{i}")
            rt.record(done, group[0], 0)
            if i == 0:
                rt.first_token_when(req.id, done)
            if i == len(steps) - 1:
                rt.finish_when(req.id, done)
            elif self.params.host_sync:
                yield from rt.synchronize(done)
