"""Ops as real torch work (reusable outside TorchRuntime, e.g. by a calibration command).

`Work(device)` turns a compute op into a ready-to-run closure: ``fn = work.prepare(op)`` allocates
(or reuses) its tensors, and ``fn()`` runs the kernel(s) alone, so a caller can time just that.
Tensors are cached per role in growing flat buffers (a view of the first numel elements per
shape), so a run whose shapes change every step (decode's kv_len, continuous batching's m) does not
allocate per op; GEMM weights are cached per (k, n, dtype). A `Work` is not shared between threads.
`POOL` keeps each (device, stream)'s Work across TorchRuntime runs of one process, so a run after
a warm-up finds its tensors allocated and filled, as a serving engine's are (jobs.py warms up).

What runs (docs/torch_runtime.md):
- Gemm: ``torch.matmul(A[m,k], B[k,n], out=C)``; count > 1: ``torch.bmm`` over count instances.
- Attention: ``scaled_dot_product_attention`` on q[batch, heads, q_len, d], k/v[batch, kv_heads,
  kv_len, d]; GQA by ``enable_gqa`` (kv heads are not copied); causal with q_len == kv_len is
  ``is_causal``; causal with q_len < kv_len (a prompt chunk after earlier ones) is the
  bottom-right mask ``causal_lower_right``; decode (q_len 1) sees every key and needs no mask.
- RaggedAttention: only sums are known (sequences, query tokens, key tokens), so it runs as
  Attention over `seqs` sequences of ceil(q_tokens / seqs) queries and max(that,
  ceil(kv_tokens / seqs)) keys, causal bottom-right when more than one query per sequence.
- Elementwise: ``torch.add(a, b, out=c)`` in float32 over bytes / 12 elements (two reads and a
  write of 4 bytes each: the op's `bytes` touched).

Dtypes (`torch_dtype`): on CPU fp32 -> float32, fp16 -> float32 (CPU half matmuls are slow or
missing), bf16 -> bfloat16 if a probe matmul works else float32, fp8 -> float32; on CUDA fp16 ->
float16, bf16 -> bfloat16, fp8 -> float16 (no scaled-matmul path), fp32 -> float32. Shapes are the
op's whatever the dtype.
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

from simulator.ops import Attention, Elementwise, Gemm, RaggedAttention

try:                                    # torch >= 2.2
    from torch.nn.attention.bias import causal_lower_right
except ImportError:                     # pragma: no cover - older torch
    causal_lower_right = None

ELEMENTWISE_BYTES_PER_ELEMENT = 12      # float32 add: two reads and one write


@lru_cache(maxsize=None)
def _cpu_bf16_works() -> bool:
    try:
        a = torch.ones(8, 8, dtype=torch.bfloat16)
        return bool(torch.allclose((a @ a).float(), torch.full((8, 8), 8.0)))
    except RuntimeError:
        return False


def torch_dtype(name: str, device_type: str = "cpu") -> torch.dtype:
    """The torch dtype that runs an op of simulated dtype `name` on `device_type` (module doc)."""
    if name == "fp32":
        return torch.float32
    if device_type == "cuda":
        return torch.bfloat16 if name == "bf16" else torch.float16
    if name == "bf16" and _cpu_bf16_works():
        return torch.bfloat16
    return torch.float32


def ragged_shape(op: RaggedAttention) -> tuple[int, int, int]:
    """(batch, q_len, kv_len) of the uniform attention a RaggedAttention runs as."""
    seqs = max(1, op.seqs)
    q_len = max(1, math.ceil(op.q_tokens / seqs))
    kv_len = max(q_len, math.ceil(op.kv_tokens / seqs))
    return seqs, q_len, kv_len


class Work:
    """Prepared real work for the compute ops of one device (module docstring)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._flat: dict = {}
        self._weights: dict = {}
        self._gqa = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")

    def buffer(self, role: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape`: a view of the role's flat buffer (grown when too small, filled
        with small random values so no kernel meets denormals or a zero fast path)."""
        numel = max(1, math.prod(shape))
        key = (role, dtype)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < numel:
            size = max(numel, int(flat.numel() * 1.5) if flat is not None else 0)
            flat = torch.empty(size, dtype=dtype, device=self.device).uniform_(-0.5, 0.5)
            self._flat[key] = flat
        return flat[:numel].view(shape)

    def prepare(self, op) -> Callable[[], object]:
        """A closure that runs `op`'s kernel(s) on prepared tensors."""
        if isinstance(op, Gemm):
            return self._gemm(op)
        if isinstance(op, Attention):
            return self._attention(op.batch, op.heads, op.kv_heads, op.q_len, op.kv_len,
                                   op.head_dim, op.causal, op.dtype)
        if isinstance(op, RaggedAttention):
            batch, q_len, kv_len = ragged_shape(op)
            return self._attention(batch, op.heads, op.kv_heads, q_len, kv_len, op.head_dim,
                                   True, op.dtype)
        if isinstance(op, Elementwise):
            n = max(1, int(op.bytes // ELEMENTWISE_BYTES_PER_ELEMENT))
            a, b = self.buffer("ew_a", (n,), torch.float32), self.buffer("ew_b", (n,), torch.float32)
            c = self.buffer("ew_c", (n,), torch.float32)
            return lambda: torch.add(a, b, out=c)
        raise TypeError(f"{type(op).__name__} is not a compute op; collectives run in comm.py")

    def _gemm(self, op: Gemm) -> Callable[[], object]:
        dt = torch_dtype(op.dtype, self.device.type)
        if op.count == 1:
            w = self._weight((op.k, op.n), dt)
            a = self.buffer("gemm_a", (op.m, op.k), dt)
            c = self.buffer("gemm_c", (op.m, op.n), dt)
            return lambda: torch.matmul(a, w, out=c)
        a = self.buffer("gemm_a", (op.count, op.m, op.k), dt)
        b = self.buffer("gemm_b", (op.count, op.k, op.n), dt)
        c = self.buffer("gemm_c", (op.count, op.m, op.n), dt)
        return lambda: torch.bmm(a, b, out=c)

    def _weight(self, shape: tuple, dt: torch.dtype) -> torch.Tensor:
        key = (shape, dt)
        w = self._weights.get(key)
        if w is None:
            w = self._weights[key] = torch.empty(shape, dtype=dt, device=self.device).uniform_(-0.05, 0.05)
        return w

    def _attention(self, batch, heads, kv_heads, q_len, kv_len, head_dim, causal, dtype):
        dt = torch_dtype(dtype, self.device.type)
        q = self.buffer("attn_q", (batch, heads, q_len, head_dim), dt)
        k = self.buffer("attn_k", (batch, kv_heads, kv_len, head_dim), dt)
        v = self.buffer("attn_v", (batch, kv_heads, kv_len, head_dim), dt)
        kw: dict = {}
        if causal and q_len > 1:
            if q_len == kv_len:
                kw["is_causal"] = True
            elif causal_lower_right is not None:
                kw["attn_mask"] = causal_lower_right(q_len, kv_len)
            else:                                         # pragma: no cover - older torch
                kw["attn_mask"] = torch.ones(q_len, kv_len, dtype=torch.bool,
                                             device=self.device).tril(kv_len - q_len)
        if heads != kv_heads:
            if self._gqa:
                kw["enable_gqa"] = True
            else:                                         # pragma: no cover - torch < 2.5
                k = k.repeat_interleave(heads // kv_heads, 1)
                v = v.repeat_interleave(heads // kv_heads, 1)
        return lambda: F.scaled_dot_product_attention(q, k, v, **kw)


class WorkPool:
    """Works kept across runs, per (simulated device, stream index) and torch device (on the CPU
    every simulated device is torch's "cpu"): `take` hands out the one an earlier run gave back
    (or a new one), `give` takes it back. A Work in use is never handed out twice: a second
    runtime at the same time gets a new one."""

    def __init__(self):
        self._free: dict = {}
        self._lock = threading.Lock()

    def take(self, on: torch.device, device: int, stream: int) -> Work:
        with self._lock:
            work = self._free.pop((str(on), device, stream), None)
        return work if work is not None else Work(on)

    def give(self, work: Work, device: int, stream: int) -> None:
        with self._lock:
            self._free.setdefault((str(work.device), device, stream), work)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


POOL = WorkPool()
