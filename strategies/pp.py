"""`pp`: pipeline parallelism, with Megatron tensor parallelism inside each stage (the tp x pp hybrid).

The model's layers are split into `stages` consecutive stages; stage s runs on the `tp` devices
``s*tp .. s*tp + tp - 1`` (one stream each) and shards its layers over them exactly as `tp` does
(program.py: two all-reduces per layer over the stage's group). The first stage would hold the
embedding (a gather with no op in program.py, so it costs nothing here) and the last stage holds the
final norm and the LM head. GPipe (Huang et al. 2019) and Megatron-LM (Narayanan et al. 2021) place
layers the same way.

Stage to stage: device j of stage s sends the activation (batch * q_len * hidden * activation bytes: the
full tensor, every stage device holds it after its all-reduce) to device j of stage s+1 with a
SendRecv on both compute streams, blocking as torch.distributed send/recv on the current stream do in
Megatron's and vLLM's pipelined inference. The receiver's stream first waits on an event the sender
records when the activation is ready, so an idle receiver waits instead of spinning in its receive;
a busy receiver makes the sender's send spin (back-pressure). A stage is therefore busy for its
receive, its layers and its send per request, and a saturated pipeline delivers one request per
busiest-stage time.

Several requests are in flight, so different stages work on different requests: the stream FIFOs
order each stage's work in launch order. The host program (one generator plus `when` callbacks):
- it admits a request (``try_next_request`` / ``next_request``) while fewer than `max_in_flight`
  requests are being driven, and launches its first step (the prefill) through every stage at once;
- a request is driven until its last step has been launched: with `host_sync` (default) each further
  step is launched by a ``when`` callback on the previous step's token event (recorded on the last
  stage after the LM head: the host learns the token there), and stage 0's stream also waits on that
  event, the explicit token dependency. So while request A's step is on stage 1, stage 0 runs B's;
- when `max_in_flight` requests are being driven the host blocks in ``wait_any`` on their token
  events (a slot frees when a callback launches some request's last step); otherwise it blocks in
  ``next_request``, so arrivals are never held behind another request's decode loop.
A single-pass request's only step is its last, so it is launched on arrival and `max_in_flight` does
not bound it; the stream FIFOs queue it, as a CUDA host's launch queue would. With one stage and
one request in flight this is `tp`'s host program exactly (same launches, same trace).

Without `host_sync` every step is launched at admission and stage 0's stream waits on the previous
step's token event on the device (device-side sampling): a request's decode loop then holds stage 0's
FIFO and requests are served one after another, as in `tp` without `host_sync`.

Under continuous batching (`batch_host`) the host keeps up to `max_in_flight` steps in flight, each
over requests that no other in-flight step holds (the scheduler guarantees it), so the stages work
on different steps at once, as vLLM's virtual engines do; a step is launched through the stages as
above and its tokens exist when its token event completes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator, Sequence

from simulator.errors import ConfigError
from simulator.model import check_tp_degree
from simulator.ops import SendRecv

from .base import Params, Strategy
from .program import Step, batch_step_ops, head_ops, layer_ops, request_steps, step_ops


@dataclass(frozen=True)
class PPParams(Params):
    """`split` is a comma-separated string of layers per stage ("20,20"; an int for one stage):
    a YAML list there would be a sweep axis (one variant per value), so a list of strings such as
    ``split: ["10,30", "20,20"]`` sweeps over splits. Unquoted ``split: 20,20`` is a string in block
    style; inside a flow mapping (``{name: pp, split: "20,20"}``) quote it. Without `split` the
    layers are balanced by cost for a `balance_tokens`-token prefill. `stages` defaults to
    devices // tp, `max_in_flight` to stages."""
    stages: int | None = None
    tp: int = 1
    split: str | int | None = None
    max_in_flight: int | None = None
    host_sync: bool = True
    balance_tokens: int = 512

    def check(self) -> tuple[str, str] | None:
        for name in ("stages", "tp", "max_in_flight", "balance_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                return name, f"must be >= 1, got {value}"
        if self.split is not None:
            try:
                parse_split(self.split)
            except ValueError as exc:
                return "split", str(exc)
        return None


def parse_split(value: str | int) -> tuple[int, ...]:
    """Layers per stage from "20,20" (or an int, one stage); ValueError unless all are ints >= 1."""
    parts = [value] if isinstance(value, int) else [p.strip() for p in str(value).split(",")]
    try:
        counts = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected comma-separated layer counts such as \"20,20\", got {value!r}") \
            from None
    if not counts or min(counts) < 1:
        raise ValueError(f"every stage needs at least one layer, got {value!r}")
    return counts


def balance_layers(layers: int, layer_s: float, extra_s: Sequence[float]) -> tuple[int, ...]:
    """Layers per stage minimising the slowest stage's time ``n_s * layer_s + extra_s[s]`` (every
    layer costs the same; `extra_s` is what a stage does besides its layers: transfers, LM head).

    Linear partition by enumeration: the optimum is one of the candidate times n * layer_s + e; the
    smallest candidate at which the stages' capacities hold all layers wins, then surplus layers are
    taken from the slowest stage (on ties the one with most layers, then the latest), so equal
    extras give `split_layers`' split."""
    stages = len(extra_s)
    if not 1 <= stages <= layers:
        raise ValueError(f"need 1 <= stages <= layers, got {stages} stages for {layers} layers")
    caps: list[int] = []
    for period in sorted({n * layer_s + e for e in extra_s for n in range(1, layers + 1)}):
        caps = [min(layers, math.floor((period - e) / layer_s + 1e-9)) for e in extra_s]
        if min(caps) >= 1 and sum(caps) >= layers:
            break
    counts = caps
    for _ in range(sum(counts) - layers):
        times = [(n * layer_s + e, n, s) for s, (n, e) in enumerate(zip(counts, extra_s)) if n > 1]
        counts[max(times)[2]] -= 1
    return tuple(counts)


class PP(Strategy):
    """Stage s runs layers ``sum(split[:s]) ..`` on devices ``groups[s]``; see the module docstring."""
    name = "pp"
    Params = PPParams

    def __init__(self, model, devices, params=None):
        super().__init__(model, devices, params)
        p = self.params
        self.tp = p.tp
        self.stages = p.stages if p.stages is not None else max(devices // p.tp, 1)
        self.max_in_flight = p.max_in_flight if p.max_in_flight is not None else self.stages
        self.groups = tuple(tuple(range(s * self.tp, (s + 1) * self.tp)) for s in range(self.stages))
        self.split: tuple[int, ...] | None = parse_split(p.split) if p.split is not None else None

    def validate(self, where: str, key: str) -> None:
        p = self.params
        if p.stages is None and self.devices % self.tp:
            raise ConfigError(where, f"{key}.tp", f"tp={self.tp} does not divide the {self.devices} "
                              "devices into stages")
        if self.stages * self.tp != self.devices:
            raise ConfigError(where, f"{key}.stages", f"stages ({self.stages}) x tp ({self.tp}) = "
                              f"{self.stages * self.tp} must equal the device count ({self.devices})")
        check_tp_degree(self.model, self.tp, where, f"{key}.tp")
        layers = self.model.layers
        if self.stages > layers:
            raise ConfigError(where, f"{key}.stages", f"{self.stages} stages exceed the "
                              f"{layers} layers of model {self.model.name}")
        if self.split is not None and (len(self.split) != self.stages or sum(self.split) != layers):
            raise ConfigError(where, f"{key}.split", f"{p.split!r} gives {len(self.split)} stage(s) "
                              f"and {sum(self.split)} layers; need {self.stages} stage(s) summing "
                              f"to the model's {layers} layers")

    def parallel_layout(self) -> tuple[int, int]:
        return self.tp, self.stages

    def stage_layers(self) -> tuple[int, ...] | None:
        return self.split

    def resident_requests(self) -> int:
        """Generative requests in flight, or one per stage for single-pass ones."""
        return max(self.max_in_flight, self.stages)

    # ------------------------------------------------------------------------------ host program
    def setup(self, rt) -> None:
        """Fix the layer split (the weights' placement) before the first request."""
        self.layers_per_stage = self.split if self.split is not None else self.balanced_split(rt)

    def balanced_split(self, rt) -> tuple[int, ...]:
        """The split that minimises the slowest stage of a `balance_tokens`-token prefill, from the
        profiled times of one layer, the LM head and a stage-to-stage transfer."""
        if self.stages == 1:
            return (self.model.layers,)
        step = Step(1, self.params.balance_tokens, self.params.balance_tokens, "prefill")
        first, last = self.groups[0], self.groups[-1]
        layer_s = sum(rt.profiled_seconds(op) for op in layer_ops(self.model, self.tp, step, first))
        head_s = sum(rt.profiled_seconds(op) for op in head_ops(self.model, self.tp, step, last))
        xfer_s = rt.profiled_seconds(SendRecv(self.act_bytes(step), first[0], self.groups[1][0]))
        extra = [xfer_s * ((s > 0) + (s < self.stages - 1)) + head_s * (s == self.stages - 1)
                 for s in range(self.stages)]
        return balance_layers(self.model.layers, layer_s, extra)

    def host(self, rt) -> Generator:
        run = _HostState(self, rt)
        while True:
            if len(run.driving) >= self.max_in_flight:
                yield from rt.wait_any(list(run.driving.values()))
                continue
            req = rt.try_next_request()
            if req is None:
                req = yield from rt.next_request()
                if req is None:
                    return
            run.admit(req)

    def act_bytes(self, step: Step) -> float:
        """Bytes of the activation a stage hands to the next: batch * q_len * hidden * the
        activation dtype's bytes (16-bit under fp8 weights)."""
        return float(step.tokens * self.model.hidden * self.model.activation_dtype_bytes)

    @property
    def last(self) -> int:
        return self.stages - 1

    def launch_stages(self, rt, stage_ops, act_bytes: float, rid: int, phase: str, label: str,
                      after=None):
        """Launch `stage_ops(stage, devices)` through every stage, handing `act_bytes` from each
        stage to the next (module docstring); returns the token event recorded on the last stage
        after its ops. Stage 0's stream first waits on `after` unless it is None."""
        last = self.last
        handoff: list = []          # (event, op) per device of the previous stage
        for stage, devs in enumerate(self.groups):
            if after is not None and stage == 0:
                for d in devs:
                    rt.wait(d, 0, after)
            for d, (ready, op) in zip(devs, handoff):
                rt.wait(d, 0, ready)
                rt.launch(op, d, 0, rid, phase)
            rt.launch_seq(stage_ops(stage, devs), devs, 0, rid, phase)
            if stage < last:
                handoff = []
                for d, dst in zip(devs, self.groups[stage + 1]):
                    ready = rt.new_event(f"{label}.act{d}")
                    rt.record(ready, d, 0)
                    op = SendRecv(act_bytes, d, dst, "p2p_act")
                    rt.launch(op, d, 0, rid, phase)
                    handoff.append((ready, op))
        token = rt.new_event(label)
        rt.record(token, self.groups[-1][0], 0)
        return token

    def batch_host(self, rt) -> Generator:
        """Continuous batching: up to `max_in_flight` (default: stages) steps in flight at once,
        each over requests no other in-flight step holds (vLLM's pipeline-parallel batch queue):
        while stage 1 runs one step, stage 0 runs the next."""
        flight: list = []           # token events of steps in flight, oldest first
        while True:
            if len(flight) < self.max_in_flight:
                batch = yield from rt.next_batch(flight)
                if batch is not None:
                    flight.append(self.launch_batch(rt, batch))
                    continue
                if not flight:
                    return
            else:
                yield from rt.wait_any(flight)
            flight = [ev for ev in flight if not rt.query(ev)]

    def launch_batch(self, rt, batch):
        """One continuous-batching step through every stage; returns its token event."""
        token = self.launch_stages(
            rt, lambda stage, devs: batch_step_ops(self.model, self.tp, batch, devs,
                                                   self.layers_per_stage[stage],
                                                   stage == self.last),
            float(batch.tokens * self.model.hidden * self.model.activation_dtype_bytes), -1,
            batch.phase, f"batch{batch.id}")
        rt.batch_done_when(batch, token)
        return token


class _HostState:
    """One run's host state: `driving` maps each request whose steps are still being launched to
    the token event whose completion launches its next step."""

    def __init__(self, strategy: PP, rt):
        self.pp = strategy
        self.rt = rt
        self.driving: dict = {}

    def admit(self, req) -> None:
        steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
        if self.pp.params.host_sync:
            self._advance(req, steps, 0, None)
            return
        token = None
        for i in range(len(steps)):
            token = self._mark(req, steps, i, self.launch_step(req, steps[i], i, token))

    def _advance(self, req, steps, i: int, after) -> None:
        token = self._mark(req, steps, i, self.launch_step(req, steps[i], i, after))
        if i == len(steps) - 1:
            self.driving.pop(req.id, None)
            return
        self.driving[req.id] = token
        self.rt.when(token, lambda _t: self._advance(req, steps, i + 1, token))

    def _mark(self, req, steps, i: int, token):
        if i == 0:
            self.rt.first_token_when(req.id, token)
        if i == len(steps) - 1:
            self.rt.finish_when(req.id, token)
        return token

    def launch_step(self, req, step: Step, index: int, after):
        """Launch one step through every stage; returns its token event (on the last stage).
        Stage 0's stream first waits on `after`, the previous step's token event."""
        pp = self.pp
        return pp.launch_stages(
            self.rt, lambda stage, devs: step_ops(pp.model, pp.tp, step, devs,
                                                  pp.layers_per_stage[stage], stage == pp.last),
            pp.act_bytes(step), req.id, step.phase, f"r{req.id}.step{index}", after)
