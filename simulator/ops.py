"""Op descriptions: what a kernel does, never how long it takes (DESIGN §3).

Ops are small frozen, hashable values so that the cost model can cache their isolated times and the
same description can be launched on many devices. Every op has a `name` (what the model calls it,
e.g. ``qkv`` or ``ar_mlp``) which ends up in traces; the cost model ignores it.

This module is the one place that knows the op types: each says its `family` (the trace's `kind`
and the measured-table family), whether it is communication (`comm`: it runs on every device of its
`group`, NCCL-style) and its key in a measured table (`table_query`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Tuple, Union

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
# FlashAttention-2 forward: one thread block per (sequence, head, 128-query tile) (Dao 2023).
ATTENTION_Q_TILE = 128


@dataclass(frozen=True, slots=True)
class Gemm:
    """C[m, n] = A[m, k] @ B[k, n], `count` independent instances (a batched GEMM).

    A and B are in `dtype`, which sets the tensor-core rate (fp8: W8A8, both operands quantised,
    as vLLM's and TensorRT-LLM's FP8 GEMMs); C is in `out_dtype` (None: `dtype`). An FP8 GEMM of
    a served model writes 16-bit activations, so it reads m*k + k*n bytes and writes 2*m*n."""
    m: int
    n: int
    k: int
    dtype: str = "fp16"
    name: str = "gemm"
    count: int = 1
    out_dtype: str | None = None
    comm: ClassVar[bool] = False
    family: ClassVar[str] = "gemm"

    def table_query(self):
        """(family, key, axis value) in a measured table (interpolated along m), or None."""
        return ("gemm", (self.n, self.k, self.dtype), self.m) if self.count == 1 else None

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count

    @property
    def bytes(self) -> float:
        """Operands read plus the output written, each in its own dtype."""
        out = DTYPE_BYTES[self.out_dtype or self.dtype]
        return float((self.m * self.k + self.k * self.n) * DTYPE_BYTES[self.dtype]
                     + self.m * self.n * out) * self.count

    def split_n(self, parts: int, taken: int) -> "Gemm":
        """The piece made of `taken` of `parts` equal slices along the output dimension n."""
        return replace(self, n=max(1, round(self.n * taken / parts)), name=f"{self.name}[{taken}/{parts}]")


@dataclass(frozen=True, slots=True)
class Attention:
    """Scaled dot-product attention of `q_len` new tokens over `kv_len` keys per sequence.

    Prefill has q_len > 1 (causal: query i sees keys up to kv_len - q_len + i); decode has q_len == 1.
    `heads` and `kv_heads` are the heads on this device (after tensor-parallel sharding).
    Q and O are in `dtype`, which also sets the compute rate; K and V are read from the KV cache
    in `kv_dtype` (None: `dtype`; fp8 halves what a memory-bound decode reads).
    """
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = True
    dtype: str = "fp16"
    name: str = "attn"
    kv_dtype: str | None = None
    comm: ClassVar[bool] = False
    family: ClassVar[str] = "attention"

    def table_query(self):
        return ("attention", (self.batch, self.q_len, self.heads, self.kv_heads, self.head_dim,
                              self.causal, self.dtype, self.kv_dtype or self.dtype), self.kv_len)

    @property
    def pairs(self) -> float:
        """Query-key pairs computed per sequence and head."""
        q, kv = self.q_len, self.kv_len
        if not self.causal:
            return float(q * kv)
        return causal_pairs(q, kv)

    @property
    def flops(self) -> float:
        return 4.0 * self.batch * self.heads * self.head_dim * self.pairs

    @property
    def bytes(self) -> float:
        q_o = 2 * self.q_len * self.heads * self.head_dim * DTYPE_BYTES[self.dtype]
        k_v = 2 * self.kv_len * self.kv_heads * self.head_dim * DTYPE_BYTES[self.kv_dtype or self.dtype]
        return float(self.batch * (q_o + k_v))


@dataclass(frozen=True, slots=True)
class RaggedAttention:
    """Attention over sequences of different lengths in one kernel (FlashAttention's varlen
    forward, or a paged decode kernel): the sums over its `seqs` sequences of query tokens, causal
    query-key pairs, keys read and 128-query tiles. With equal sequences it is `Attention`'s
    batch, flops and bytes exactly. A continuous-batching step has one for its prompt chunks and
    one for its decodes (costed apart, not as one padded shape). `dtype` and `kv_dtype` as in
    `Attention`."""
    seqs: int
    q_tokens: int
    pairs: float
    kv_tokens: int
    q_tiles: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "fp16"
    name: str = "attn"
    kv_dtype: str | None = None
    comm: ClassVar[bool] = False
    family: ClassVar[str] = "attention"

    def table_query(self):
        """Measured attention tables hold uniform shapes; a ragged one is costed by the roofline."""
        return None

    @property
    def flops(self) -> float:
        return 4.0 * self.heads * self.head_dim * self.pairs

    @property
    def bytes(self) -> float:
        q_o = 2 * self.q_tokens * self.heads * DTYPE_BYTES[self.dtype]
        k_v = 2 * self.kv_tokens * self.kv_heads * DTYPE_BYTES[self.kv_dtype or self.dtype]
        return float((q_o + k_v) * self.head_dim)


def causal_pairs(q_len: int, kv_len: int) -> float:
    """Query-key pairs of `q_len` new tokens over `kv_len` keys (the last q_len are the new ones;
    query i sees keys up to kv_len - q_len + i)."""
    return float(q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2)


@dataclass(frozen=True, slots=True)
class Elementwise:
    """A memory-bound op (norm, activation, residual add, rotary): `bytes` read plus written."""
    bytes: float
    name: str = "elementwise"
    comm: ClassVar[bool] = False
    family: ClassVar[str] = "elementwise"

    def table_query(self):
        return "elementwise", (), float(self.bytes)

    @property
    def flops(self) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class Collective:
    """A collective over `group` (device indices, in order); `bytes` is the buffer size per device
    (the full tensor for all-reduce; the gathered output for all-gather; the input for reduce-scatter)."""
    kind: str
    bytes: float
    group: Tuple[int, ...]
    name: str = ""
    comm: ClassVar[bool] = True

    @property
    def family(self) -> str:
        return self.kind

    def table_query(self):
        return self.kind, (len(self.group),), float(self.bytes)

    def __post_init__(self):
        if self.kind not in COLLECTIVES:
            raise ValueError(f"unknown collective {self.kind!r}; allowed: {', '.join(COLLECTIVES)}")
        if len(set(self.group)) != len(self.group) or len(self.group) < 1:
            raise ValueError(f"collective group must be distinct devices, got {self.group}")

    @property
    def flops(self) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class SendRecv:
    """A point-to-point transfer of `bytes` from device `src` to device `dst`; launched on both."""
    bytes: float
    src: int
    dst: int
    name: str = "sendrecv"
    comm: ClassVar[bool] = True
    family: ClassVar[str] = "send_recv"

    def table_query(self):
        return "send_recv", (), float(self.bytes)

    @property
    def group(self) -> Tuple[int, ...]:
        return (self.src, self.dst)

    @property
    def flops(self) -> float:
        return 0.0


Op = Union[Gemm, Attention, RaggedAttention, Elementwise, Collective, SendRecv]
OP_TYPES = (Gemm, Attention, RaggedAttention, Elementwise, Collective, SendRecv)
COMM_TYPES = frozenset(t for t in OP_TYPES if t.comm)


def is_comm(op: Op) -> bool:
    """Communication: a collective or send/recv, an op on every device of its group."""
    return op.comm
