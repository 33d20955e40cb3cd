"""The cost model: how long an op takes on one device of a profile, alone (DESIGN §3).

Compute ops follow a roofline with shape-dependent efficiency::

    t = max(flops / (peak * eff * wave_eff), bytes / (bw * eff_mem)) + kernel_overhead

where `wave_eff` is the tile and wave quantisation of the launch grid (Volkov's wave model as used
in CUTLASS/cuBLAS heuristics: a grid of B thread blocks on S SMs runs in ceil(B/S) waves, so only
B / (S * ceil(B/S)) of the machine does useful work). GEMMs pick the plan (tile shape and split-K
factor) that minimises time among a few cuBLAS-like tiles, smaller tiles paying a lower per-tile
efficiency (assumed constants below, documented as such).

Split-K (as in cuBLAS and CUTLASS): a GEMM with few output tiles and a long k splits k into s slices,
so that s times as many blocks, each s times shorter, fill the machine. Each slice writes an fp32
partial output tile, and a reduction then reads them back, so a plan with s > 1 pays
``2 * m * n * s * 4`` bytes (partials written, then read) at the memory bandwidth (with
`memory_efficiency`), after the main loop; nothing else is charged (the reduction kernel's own launch
and the final output write are neglected). Splits are s in {1, 2, 4, 8, 16} with k / s >= 128::

    t_gemm = min over (tile, s) of  max(main(tile, s), bytes / (bw * eff_mem)) + reduce(s) + overhead

Collectives follow the alpha-beta (Hockney) model with the standard algorithm factors (ring
all-reduce moves 2(n-1)/n of the buffer per device; all-gather, reduce-scatter and all-to-all move
(n-1)/n; Thakur, Rabenseifner and Gropp 2005; nccl-tests PERFORMANCE.md), per protocol regime r of
the group size's profile entry (e.g. NCCL's LL: small alpha, low bandwidth; Simple: large alpha, full
bandwidth). NCCL picks the protocol its own cost model predicts to be fastest, so the time is the
minimum over regimes, a continuous, concave curve with no size threshold::

    t = min over r of  alpha_r(n) + factor(kind, n) * bytes / busbw_r(n)

Attention (FlashAttention-style) adds, where the profile gives them, a fixed floor, a time per wave
of thread blocks (one per query tile and head in prefill, one per sequence and KV head in decode)
and its own memory efficiency (docs/hardware.md); FP8 GEMMs may have their own efficiency and pay
their input's dynamic quantisation (`fp8_gemm_efficiency`, `fp8_quantize_us`).

Measured-table mode (cost_tables.py): where the profile (or the `tables` argument) has a table for
the op's family, its measured time wins: an exact row, else the interpolation between the nearest
measured rows along the family's axis. Outside the measured range, or with no row of the op's other
columns, the roofline / alpha-beta time above answers. `OpCost.detail` says which. A table time
keeps the roofline's `bound` and `op_class`, so the contention model still sees compute or memory.

The cost model knows ops and hardware, never strategies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

from .cost_tables import MeasuredTable, merge_tables, table_query
from .hardware import HardwareProfile
from .ops import (ATTENTION_Q_TILE, DTYPE_BYTES, Attention, Collective, Elementwise, Gemm, Op,
                  RaggedAttention, SendRecv)

# (tile_m, tile_n, efficiency relative to the largest tile). Assumed: cuBLAS/CUTLASS main-loop
# efficiency drops with smaller tiles because each tile re-reads more operand data per flop.
GEMM_TILES = ((128, 256, 1.0), (128, 128, 0.95), (64, 128, 0.85), (64, 64, 0.70))
# Split-K factors tried, the shortest k slice allowed, and the bytes of one partial-sum element
# (fp32 accumulators). Assumed: the cuBLAS/CUTLASS split-K range; a slice shorter than 128 is a few
# main-loop iterations of a 32- or 64-deep k tile, which no heuristic picks.
SPLIT_K = (1, 2, 4, 8, 16)
MIN_SPLIT_K_DEPTH = 128
PARTIAL_BYTES = 4
# Bytes moved per element of an FP8 GEMM's 16-bit input by its dynamic per-tensor quantisation, where
# the profile says it is paid (device.fp8_quantize_us): read for the absmax, read again and written
# as fp8 (2 + 2 + 1). vLLM, SGLang and TensorRT-LLM's FP8 linear layers run it before the GEMM.
FP8_QUANT_BYTES_PER_ELEMENT = 5


@dataclass(frozen=True)
class OpCost:
    """Isolated time of one op and why: `bound` is compute, memory, latency or bandwidth;
    `op_class` (compute, memory, comm) is what the contention model sees."""
    seconds: float
    bound: str
    op_class: str
    flops: float
    bytes: float
    detail: str = ""         # the plan behind the time: GEMM tile and split-K, collective regime,
                             # or which table rows ("table: ...", "roofline: outside table ...")


@dataclass(frozen=True)
class GemmPlan:
    """One way to run a GEMM: tile shape, split-K factor, and its parts in seconds (without the
    fixed kernel overhead): `main` the main loop (waves of tiles), `reduce` the split-K reduction."""
    tile_m: int
    tile_n: int
    split_k: int
    main_s: float
    reduce_s: float


def collective_factor(kind: str, n: int) -> float:
    """Bytes moved over each device's link per byte of buffer, for ring algorithms."""
    if n <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


class CostModel:
    """Isolated op times for one hardware profile; results are cached per op description.

    `tables` (op family -> MeasuredTable) add to the profile's `measured_tables`, replacing the
    profile's table of the same family: measured times given in code, e.g. by calibration."""

    def __init__(self, hardware: HardwareProfile,
                 tables: Mapping[str, MeasuredTable] | None = None):
        self.hw = hardware
        self.tables = merge_tables(getattr(hardware, "measured_tables", None), tables)
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
        model = self._model(op)
        query = table_query(op) if self.tables else None
        table = self.tables.get(query[0]) if query else None
        if table is None:
            return model
        seconds, why = table.lookup(query[1], query[2])
        if seconds is None:
            return replace(model, detail=f"roofline: {why}" + (f"; {model.detail}" if model.detail else ""))
        return replace(model, seconds=seconds, detail=why)

    def _model(self, op: Op) -> OpCost:
        """The roofline (compute, memory) or alpha-beta (communication) cost of `op`."""
        if isinstance(op, Gemm):
            return self._gemm(op)
        if isinstance(op, Attention):
            return self._attention(op)
        if isinstance(op, RaggedAttention):
            return self._ragged_attention(op)
        if isinstance(op, Elementwise):
            return self._memory(op.bytes)
        if isinstance(op, Collective):
            return self._collective(op)
        if isinstance(op, SendRecv):
            return self._p2p(op)
        raise TypeError(f"not an op: {op!r}")

    def _peak(self, dtype: str) -> float:
        """The profile's dense rate for `dtype`; a dtype the profile does not list is unsupported
        (no silent stand-in: V100 has no bf16 tensor cores, and an fp16 rate would hide that)."""
        peak = self.hw.device.peak_flops
        if dtype in peak:
            return peak[dtype]
        raise ValueError(f"hardware profile {self.hw.name!r} does not support dtype {dtype!r}: its "
                         "peak_tflops lists only " + ", ".join(peak))

    def gemm_plans(self, op: Gemm) -> list[GemmPlan]:
        """For each allowed split-K factor, the plan with the fastest tile (the tile choice does not
        depend on the efficiencies: every tile's time scales with 1 / gemm_efficiency)."""
        dev = self.hw.device
        eff = dev.fp8_gemm_efficiency if op.dtype == "fp8" and dev.fp8_gemm_efficiency else \
            dev.gemm_efficiency
        rate = self._peak(op.dtype) * eff
        mem_rate = dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency
        plans = []
        for s in SPLIT_K:
            if s > 1 and op.k / s < MIN_SPLIT_K_DEPTH:
                break
            best = None
            for tm, tn, tile_eff in GEMM_TILES:
                blocks = math.ceil(op.m / tm) * math.ceil(op.n / tn) * s * op.count
                waves = math.ceil(blocks / dev.sms)
                # each wave runs `sms` tiles' worth of flops (k / s deep) at the tile's efficiency
                t = waves * dev.sms * 2.0 * tm * tn * (op.k / s) / (rate * tile_eff)
                if best is None or t < best[2]:
                    best = (tm, tn, t)
            reduce_s = 2.0 * op.m * op.n * s * PARTIAL_BYTES * op.count / mem_rate if s > 1 else 0.0
            plans.append(GemmPlan(best[0], best[1], s, best[2], reduce_s))
        return plans

    def gemm_plan(self, op: Gemm) -> GemmPlan:
        """The plan that minimises max(main, memory) + reduce (the memory time, the operands'
        bytes at the memory bandwidth, is the same for every plan)."""
        memory_s = op.bytes / (self.hw.device.memory_bandwidth_bytes_per_s
                               * self.hw.device.memory_efficiency)
        return min(self.gemm_plans(op), key=lambda p: max(p.main_s, memory_s) + p.reduce_s)

    def gemm_compute_seconds(self, op: Gemm) -> float:
        """Compute-bound time of a GEMM: the best plan's main loop plus its split-K reduction,
        ignoring the operands' memory time."""
        return min(p.main_s + p.reduce_s for p in self.gemm_plans(op))

    def _gemm(self, op: Gemm) -> OpCost:
        dev = self.hw.device
        memory_s = op.bytes / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
        plan = self.gemm_plan(op)
        bound = "compute" if plan.main_s >= memory_s else "memory"
        seconds = max(plan.main_s, memory_s) + plan.reduce_s + dev.kernel_overhead_s
        detail = f"tile {plan.tile_m}x{plan.tile_n}, split-k {plan.split_k}"
        if op.dtype == "fp8" and dev.fp8_quantize_s:
            # dynamic per-tensor quantisation of the 16-bit input: an absmax pass and a quantising
            # pass over A (read twice at 16 bits, written once at 8), plus their fixed time
            quant_s = (FP8_QUANT_BYTES_PER_ELEMENT * op.m * op.k * op.count
                       / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
                       + dev.fp8_quantize_s)
            seconds += quant_s
            detail += f", fp8 input quantisation {quant_s * 1e6:.1f} us"
        return OpCost(seconds, bound, bound, op.flops, op.bytes, detail)

    def _attention(self, op: Attention) -> OpCost:
        tiles = op.batch * op.heads * math.ceil(op.q_len / ATTENTION_Q_TILE)
        blocks = op.batch * op.kv_heads if op.q_len == 1 else tiles
        return self._attention_time(op.flops, op.bytes, op.dtype, tiles, blocks)

    def _ragged_attention(self, op: RaggedAttention) -> OpCost:
        """As `_attention`, with the thread blocks of each sequence's own query tiles."""
        tiles = op.q_tiles * op.heads
        blocks = op.seqs * op.kv_heads if op.q_tokens == op.seqs else tiles
        return self._attention_time(op.flops, op.bytes, op.dtype, tiles, blocks)

    def _attention_time(self, flops: float, nbytes: float, dtype: str, tiles: int,
                        blocks: int) -> OpCost:
        """FlashAttention-style kernel: the larger of its compute time and its memory time, plus
        the attention floor and the kernel overhead. Compute: the math (one thread block per
        128-query tile and head, wave-quantised) plus `attention_block_s` per wave of `blocks`
        thread blocks (one per query tile and head in prefill, one per sequence and KV head in
        decode): each block's fixed prologue and epilogue, whatever its work. Memory: the bytes
        at the attention kernels' own bandwidth efficiency."""
        dev = self.hw.device
        wave_eff = tiles / (dev.sms * math.ceil(tiles / dev.sms))
        math_s = flops / (self._peak(dtype) * dev.attention_efficiency * wave_eff)
        block_s = math.ceil(blocks / dev.sms) * dev.attention_block_s
        mem_eff = dev.attention_memory_efficiency or dev.memory_efficiency
        memory_s = nbytes / (dev.memory_bandwidth_bytes_per_s * mem_eff)
        fixed = dev.kernel_overhead_s + dev.attention_floor_s
        if math_s + block_s < memory_s:
            return OpCost(memory_s + fixed, "memory", "memory", flops, nbytes)
        if block_s > math_s:        # waves of nearly idle blocks: latency, not the tensor cores
            return OpCost(math_s + block_s + fixed, "latency", "memory", flops, nbytes)
        return OpCost(math_s + block_s + fixed, "compute", "compute", flops, nbytes)

    def _memory(self, nbytes: float) -> OpCost:
        dev = self.hw.device
        t = nbytes / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
        return OpCost(t + dev.kernel_overhead_s, "memory", "memory", 0.0, nbytes)

    def _collective(self, op: Collective) -> OpCost:
        n = len(op.group)
        if n <= 1:
            return OpCost(0.0, "latency", "comm", 0.0, 0.0)
        moved = collective_factor(op.kind, n) * op.bytes
        regimes = self.hw.interconnect.collective_params(n).regimes
        times = [r.alpha_s + moved / r.bandwidth_bytes_per_s for r in regimes]
        i = min(range(len(times)), key=times.__getitem__)
        r = regimes[i]
        bound = "bandwidth" if moved / r.bandwidth_bytes_per_s >= r.alpha_s else "latency"
        detail = (f"regime {i} of {len(regimes)}: alpha {r.alpha_s * 1e6:.1f} us, busbw "
                  f"{r.bandwidth_bytes_per_s / 1e9:.1f} GB/s") if len(regimes) > 1 else ""
        return OpCost(times[i], bound, "comm", 0.0, moved, detail)

    def _p2p(self, op: SendRecv) -> OpCost:
        p = self.hw.interconnect.p2p
        transfer = op.bytes / p.bandwidth_bytes_per_s
        bound = "bandwidth" if transfer >= p.alpha_s else "latency"
        return OpCost(p.alpha_s + transfer, bound, "comm", 0.0, op.bytes)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]
