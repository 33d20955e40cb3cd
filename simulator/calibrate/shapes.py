"""Which ops a calibration measures: a model's layer GEMMs and attention shapes over a range of
token counts (for every tensor-parallel degree up to the devices), elementwise sizes, collective
and send/recv sizes, plus (for `parasim validate`) every distinct op a simulated run of the
experiment costs, so that its tables hold those exact shapes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from simulator.cost import CostModel
from simulator.model import ModelSpec, valid_tp_degrees
from simulator.ops import COLLECTIVES, Attention, Collective, Elementwise, Gemm, SendRecv

from strategies.program import Step, head_ops, layer_ops


@dataclass
class ShapeSet:
    """Distinct ops to measure, by family (names dropped: tables key on shapes only)."""
    gemm: set = field(default_factory=set)
    attention: set = field(default_factory=set)
    elementwise: set = field(default_factory=set)
    comm: set = field(default_factory=set)

    def add(self, op) -> None:
        if isinstance(op, Gemm):
            if op.count == 1:
                self.gemm.add(replace(op, name="gemm"))
        elif isinstance(op, Attention):
            self.attention.add(replace(op, name="attn"))
        elif isinstance(op, Elementwise):
            self.elementwise.add(replace(op, name="elementwise"))
        elif isinstance(op, Collective):
            self.comm.add(replace(op, name="", group=tuple(range(len(op.group)))))
        elif isinstance(op, SendRecv):
            self.comm.add(SendRecv(op.bytes, 0, 1))

    def sizes(self) -> dict:
        return {k: len(getattr(self, k)) for k in ("gemm", "attention", "elementwise", "comm")}


def powers(lo: int, hi: int, step: int = 2) -> list[int]:
    out, x = [], lo
    while x < hi:
        out.append(x)
        x *= step
    return out + [hi]


@dataclass(frozen=True)
class Grid:
    """The ranges a calibration covers: token counts of a step (GEMM m, prefill length), decode
    context lengths, byte sizes of elementwise ops and of transfers."""
    max_tokens: int = 512
    max_context: int = 1024
    bytes_lo: int = 2**8
    bytes_hi: int = 2**24
    elementwise_hi: int = 2**26


CI_GRID = Grid(max_tokens=256, max_context=512, bytes_hi=2**22, elementwise_hi=2**24)


def model_shapes(model: ModelSpec, devices: int, grid: Grid) -> ShapeSet:
    """The model's ops for every tp degree <= devices, m over powers of two up to max_tokens,
    prefill of those lengths, decode of one sequence over contexts up to max_context; elementwise
    and transfer sizes over powers of four."""
    shapes = ShapeSet()
    tps = [t for t in valid_tp_degrees(model) if t <= devices] or [1]
    tokens = powers(1, grid.max_tokens)
    group = lambda tp: tuple(range(tp))                   # noqa: E731
    for tp in tps:
        for m in tokens:
            step = Step(1, m, m, "prefill")
            for op in layer_ops(model, tp, step, group(tp)) + head_ops(model, tp, Step(m, 1, 1, "decode"), group(tp)):
                if not isinstance(op, (Elementwise, Collective)):
                    shapes.add(op)
        for kv in powers(16, grid.max_context):
            shapes.add(Attention(1, 1, kv, model.heads // tp, max(model.kv_heads // tp, 1),
                                 model.head_dim, True, model.activation_dtype, "attn",
                                 model.kv_cache_dtype))
    for b in powers(2**10, grid.elementwise_hi, 4):
        shapes.add(Elementwise(float(b)))
    for n in range(2, devices + 1):
        for kind in COLLECTIVES:
            for b in powers(grid.bytes_lo, grid.bytes_hi, 4):
                shapes.add(Collective(kind, float(b), tuple(range(n))))
    for b in powers(grid.bytes_lo, grid.bytes_hi, 4):
        shapes.add(SendRecv(float(b), 0, 1))
    return shapes


class RecordingCost(CostModel):
    """A cost model that notes every distinct op it is asked about (the simulator asks once per
    op description), so a simulated run lists the shapes it ran."""

    def __init__(self, hardware, seen: ShapeSet):
        super().__init__(hardware)
        self.seen = seen

    def _compute(self, op):
        self.seen.add(op)
        return super()._compute(op)


def experiment_shapes(built_jobs, shapes: ShapeSet) -> ShapeSet:
    """Add to `shapes` every op the simulated runs of `built_jobs` (jobs.Built) cost."""
    import numpy as np

    from simulator.batching import Scheduler
    from simulator.engine import SimRuntime
    for built in built_jobs:
        rt = SimRuntime(built.hardware, built.devices, cost=RecordingCost(built.hardware, shapes),
                        keep_ops=0)
        source = built.workload.source(np.random.default_rng(built.seed))
        sched = Scheduler(built.serving, built.kv_blocks) if built.serving.continuous else None
        rt.run(built.strategy, source, sched)
    return shapes
