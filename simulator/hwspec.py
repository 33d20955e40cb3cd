"""The records of a hardware profile (frozen, SI units): the device, its interconnect, the
contention model's parameters and, where known, the numbers of `execution: graphs`. `hardware.py`
reads them from YAML; the cost model, the contention model and the engine read them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .cost_tables import MeasuredTable
from .errors import ConfigError

SOURCE_KINDS = ("datasheet", "measured", "fitted", "assumed")
TOPOLOGIES = ("nvswitch", "nvlink_mesh", "nvlink_pairs", "pcie_p2p", "pcie_host")
DTYPES = ("fp32", "fp16", "bf16", "fp8")
OP_CLASSES = ("compute", "memory", "comm")
CONTENTION_MODELS = ("factor", "none", "cores")


@dataclass(frozen=True)
class DeviceSpec:
    """One GPU, SI units. Efficiencies are fractions of peak reached by large, well-shaped ops."""
    name: str
    sms: int
    peak_flops: Mapping[str, float]          # per dtype, flop/s (dense tensor-core rate)
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    gemm_efficiency: float
    attention_efficiency: float
    memory_efficiency: float
    kernel_overhead_s: float                 # fixed cost of every kernel (launch-to-start on the GPU, tail)
    # Attention kernels' own floors (cost.py): the fraction of memory bandwidth their reads reach
    # (None: memory_efficiency), a fixed time above kernel_overhead_s (split-KV combine, prologue),
    # and the time of one wave of thread blocks however little each block does. Zero: no floor.
    attention_memory_efficiency: float | None = None
    attention_floor_s: float = 0.0
    attention_block_s: float = 0.0
    # FP8 GEMMs (cost.py): their own fraction of the fp8 peak (None: gemm_efficiency), and the fixed
    # time of quantising their 16-bit input (0: taken as fused into the producer, free).
    fp8_gemm_efficiency: float | None = None
    fp8_quantize_s: float = 0.0
    # a stream's own time per op beyond the kernel's (its thread's bookkeeping between ops:
    # TorchRuntime's CPU streams), added to every op's time; 0 on a GPU, whose launch-to-start
    # time is in kernel_overhead_s
    dispatch_s: float = 0.0
    # a stream blocked on another stream's event (Runtime.wait) resumes this long after it
    # completes (0 on GPUs, where the wait is the hardware's; a thread's wake-up on a CPU)
    event_wait_s: float = 0.0
    # an idle stream (it finished every item before) starts an item launched to it this long
    # after the launch (a worker thread's wake-up on TorchRuntime's CPU devices; 0 on a GPU, whose
    # launch-to-start time is in kernel_overhead_s), and a stream's own time to record an event
    # (the event completes as the stream reaches it; the stream's next item waits this long)
    idle_wakeup_s: float = 0.0
    record_s: float = 0.0
    # a collective's (or send/recv's) member stream ends this long after the group's transfer
    # ends (mean; `spreads["comm_lag"]`: the times each member draws from): the members of a
    # gloo collective finish each on its own thread, not at one instant
    comm_lag_s: float = 0.0
    # op family -> how its time varies from run to run (jitter.py): a coefficient of variation
    # (lognormal draws) or a tuple of time / mean ratios (draws from them); empty: none
    jitter: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Regime:
    """Alpha-beta parameters of one protocol regime (e.g. NCCL's LL or Simple)."""
    alpha_s: float
    bandwidth_bytes_per_s: float


@dataclass(frozen=True)
class LinkParams:
    """Alpha-beta parameters of one collective group size (or of point-to-point transfers).

    `regimes` are the protocol regimes; a transfer takes the fastest of them (the minimum over
    regimes of alpha + bytes / bandwidth). `alpha_s` and `bandwidth_bytes_per_s` are the
    large-message regime's (the highest bandwidth), what a single-regime reader sees."""
    alpha_s: float
    bandwidth_bytes_per_s: float             # bus bandwidth for collectives, plain bandwidth for p2p
    regimes: tuple = ()                      # of Regime; empty: the one regime (alpha_s, bandwidth)

    def __post_init__(self):
        if not self.regimes:
            object.__setattr__(self, "regimes", (Regime(self.alpha_s, self.bandwidth_bytes_per_s),))

    @classmethod
    def of_regimes(cls, regimes) -> "LinkParams":
        regimes = tuple(regimes)
        large = max(regimes, key=lambda r: r.bandwidth_bytes_per_s)
        return cls(large.alpha_s, large.bandwidth_bytes_per_s, regimes)


@dataclass(frozen=True)
class InterconnectSpec:
    topology: str
    collectives: Mapping[int, LinkParams]    # group size -> alpha and bus bandwidth, per regime
    p2p: LinkParams
    shared_link: bool                        # transfers of disjoint groups share one link (host memory, PCIe root)

    def collective_params(self, group_size: int) -> LinkParams:
        """Parameters for `group_size`: the entry itself, else the next larger size, else the largest."""
        sizes = sorted(self.collectives)
        i = bisect.bisect_left(sizes, group_size)
        return self.collectives[sizes[min(i, len(sizes) - 1)]]


@dataclass(frozen=True)
class ContentionSpec:
    """Parameters of the contention model (DESIGN §2).

    `slowdown[(a, b)]` >= 1: how much slower an op of class `a` runs while an op of class `b` runs
    beside it on the same device. `low_priority_share`: the fraction of a resource that an op on a
    lower-priority stream gets while an op of the same class runs on a higher-priority stream.
    Model ``cores`` (contention.CoreContention) uses neither: every device shares `cores` CPU
    cores, and each running op uses `threads_per_op` of them.
    """
    model: str
    slowdown: Mapping[tuple, float]
    low_priority_share: float
    cores: float = 0.0
    threads_per_op: float = 1.0


@dataclass(frozen=True)
class GraphsSpec:
    """What changes under ``execution: graphs`` (a serving engine's CUDA graphs and custom
    all-reduce): the host's time per kernel of a replayed graph, the device's fixed time per kernel
    inside a graph, and the collectives (custom all-reduce for small messages, NCCL for large)."""
    launch_overhead_s: float
    kernel_overhead_s: float
    collectives: Mapping[int, "LinkParams"]


EXECUTIONS = ("eager", "graphs")


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    max_devices: int
    device: DeviceSpec
    launch_overhead_s: float
    interconnect: InterconnectSpec
    contention: ContentionSpec
    sources: Mapping[str, str] = field(default_factory=dict)   # dotted key -> provenance
    path: str = ""
    # op family -> measured times the cost model prefers to its roofline (cost_tables.py)
    measured_tables: Mapping[str, MeasuredTable] = field(default_factory=lambda: MappingProxyType({}))
    graphs: GraphsSpec | None = None          # numbers for execution: graphs, where known
    database: object = None                   # aiconfigurator.DatabaseSpec the profile names
    execution: str = "eager"
    # the host's reaction to a completed event (0: at once): a blocked host (synchronize,
    # wait_any) resumes `wakeup_s` after it, a host callback (`when`) runs `callback_s` after it
    wakeup_s: float = 0.0
    callback_s: float = 0.0
    # how the host's and the streams' reactions vary (jitter.py): "wakeup", "event_wait",
    # "dispatch" or "comm_lag" -> values in seconds to draw from uniformly (their mean is the
    # field's value);
    # a reaction without an entry takes its mean every time
    spreads: Mapping[str, tuple] = field(default_factory=lambda: MappingProxyType({}))

    def for_execution(self, execution: str, where: str = "experiment",
                      key: str = "execution") -> "HardwareProfile":
        """This profile as a run in `execution` mode sees it. ``graphs`` swaps in the profile's
        `execution.graphs` numbers; a ConfigError if the profile has none."""
        from dataclasses import replace
        if execution not in EXECUTIONS:
            raise ConfigError(where, key, f"must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
        if execution == self.execution:
            return self
        if execution == "eager":
            raise ConfigError(where, key, f"profile {self.name!r} was already switched to "
                              f"{self.execution}; load it again for eager")
        if self.graphs is None:
            raise ConfigError(where, key, f"hardware {self.name!r} has no numbers for graphs "
                              "(its profile lacks execution.graphs); use execution: eager or add them")
        g = self.graphs
        collectives = dict(self.interconnect.collectives)
        collectives.update(g.collectives)
        ic = replace(self.interconnect, collectives=MappingProxyType(dict(sorted(collectives.items()))))
        return replace(self, launch_overhead_s=g.launch_overhead_s, interconnect=ic,
                       device=replace(self.device, kernel_overhead_s=g.kernel_overhead_s),
                       execution=execution)

    def with_contention(self, contention: ContentionSpec) -> "HardwareProfile":
        from dataclasses import replace
        return replace(self, contention=contention)
