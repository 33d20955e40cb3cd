"""The cost model: how long an op takes on one device of a profile, alone (DESIGN §3).

Compute ops follow a roofline with shape-dependent efficiency::

    t = max(flops / (peak * eff * wave_eff), bytes / (bw * eff_mem)) + kernel_overhead

where `wave_eff` is the tile and wave quantisation of the launch grid (Volkov's wave model as used
in CUTLASS/cuBLAS heuristics: a grid of B thread blocks on S SMs runs in ceil(B/S) waves, so only
B / (S * ceil(B/S)) of the machine does useful work). GEMMs pick the tile shape that minimises time
among a few cuBLAS-like tiles, smaller tiles paying a lower per-tile efficiency (assumed constants
below, documented as such).

Collectives follow the alpha-beta (Hockney) model with the standard algorithm factors (ring
all-reduce moves 2(n-1)/n of the buffer per device; all-gather, reduce-scatter and all-to-all move
(n-1)/n; Thakur, Rabenseifner and Gropp 2005; nccl-tests PERFORMANCE.md)::

    t = alpha(n) + factor(kind, n) * bytes / busbw(n)

The cost model knows ops and hardware, never strategies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .hardware import HardwareProfile
from .ops import DTYPE_BYTES, Attention, Collective, Elementwise, Gemm, Op, SendRecv

# (tile_m, tile_n, efficiency relative to the largest tile). Assumed: cuBLAS/CUTLASS main-loop
# efficiency drops with smaller tiles because each tile re-reads more operand data per flop.
GEMM_TILES = ((128, 256, 1.0), (128, 128, 0.95), (64, 128, 0.85), (64, 64, 0.70))
# FlashAttention-2 forward: one thread block per (sequence, head, 128-query tile) (Dao 2023).
ATTENTION_Q_TILE = 128


@dataclass(frozen=True)
class OpCost:
    """Isolated time of one op and why: `bound` is compute, memory, latency or bandwidth;
    `op_class` (compute, memory, comm) is what the contention model sees."""
    seconds: float
    bound: str
    op_class: str
    flops: float
    bytes: float


def collective_factor(kind: str, n: int) -> float:
    """Bytes moved over each device's link per byte of buffer, for ring algorithms."""
    if n <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


class CostModel:
    """Isolated op times for one hardware profile; results are cached per op description."""

    def __init__(self, hardware: HardwareProfile):
        self.hw = hardware
        self._cache: dict = {}

    def seconds(self, op: Op) -> float:
        return self.cost(op).seconds

    def cost(self, op: Op) -> OpCost:
        hit = self._cache.get(op)
        if hit is None:
            hit = self._cache[op] = self._compute(op)
        return hit

    # ------------------------------------------------------------------------------------ families
    def _compute(self, op: Op) -> OpCost:
        if isinstance(op, Gemm):
            return self._gemm(op)
        if isinstance(op, Attention):
            return self._attention(op)
        if isinstance(op, Elementwise):
            return self._memory(op.bytes)
        if isinstance(op, Collective):
            return self._collective(op)
        if isinstance(op, SendRecv):
            return self._p2p(op)
        raise TypeError(f"not an op: {op!r}")

    def _peak(self, dtype: str) -> float:
        peak = self.hw.device.peak_flops
        if dtype in peak:
            return peak[dtype]
        if dtype == "bf16":
            return peak["fp16"]
        raise ValueError(f"profile {self.hw.name} gives no peak rate for dtype {dtype}; it has "
                         + ", ".join(peak))

    def _roofline(self, compute_s: float, flops: float, nbytes: float) -> OpCost:
        dev = self.hw.device
        memory_s = nbytes / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
        if compute_s >= memory_s:
            return OpCost(compute_s + dev.kernel_overhead_s, "compute", "compute", flops, nbytes)
        return OpCost(memory_s + dev.kernel_overhead_s, "memory", "memory", flops, nbytes)

    def gemm_compute_seconds(self, op: Gemm) -> float:
        """Compute-bound time of a GEMM with the best tile's wave quantisation."""
        dev = self.hw.device
        rate = self._peak(op.dtype) * dev.gemm_efficiency
        best = math.inf
        for tm, tn, tile_eff in GEMM_TILES:
            blocks = math.ceil(op.m / tm) * math.ceil(op.n / tn) * op.count
            waves = math.ceil(blocks / dev.sms)
            # each wave runs `sms` tiles' worth of flops at the tile's efficiency
            t = waves * dev.sms * 2.0 * tm * tn * op.k / (rate * tile_eff)
            best = min(best, t)
        return best

    def _gemm(self, op: Gemm) -> OpCost:
        return self._roofline(self.gemm_compute_seconds(op), op.flops, op.bytes)

    def _attention(self, op: Attention) -> OpCost:
        dev = self.hw.device
        blocks = op.batch * op.heads * math.ceil(op.q_len / ATTENTION_Q_TILE)
        wave_eff = blocks / (dev.sms * math.ceil(blocks / dev.sms))
        compute_s = op.flops / (self._peak(op.dtype) * dev.attention_efficiency * wave_eff)
        return self._roofline(compute_s, op.flops, op.bytes)

    def _memory(self, nbytes: float) -> OpCost:
        dev = self.hw.device
        t = nbytes / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
        return OpCost(t + dev.kernel_overhead_s, "memory", "memory", 0.0, nbytes)

    def _collective(self, op: Collective) -> OpCost:
        n = len(op.group)
        if n <= 1:
            return OpCost(0.0, "latency", "comm", 0.0, 0.0)
        p = self.hw.interconnect.collective_params(n)
        moved = collective_factor(op.kind, n) * op.bytes
        transfer = moved / p.bandwidth_bytes_per_s
        bound = "bandwidth" if transfer >= p.alpha_s else "latency"
        return OpCost(p.alpha_s + transfer, bound, "comm", 0.0, moved)

    def _p2p(self, op: SendRecv) -> OpCost:
        p = self.hw.interconnect.p2p
        transfer = op.bytes / p.bandwidth_bytes_per_s
        bound = "bandwidth" if transfer >= p.alpha_s else "latency"
        return OpCost(p.alpha_s + transfer, bound, "comm", 0.0, op.bytes)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]
