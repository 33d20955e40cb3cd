"""Classifying trace events into parasim op families (`cost_tables.FAMILIES`).

Compute ops come from ATen `cpu_op` events and their recorded shapes (`record_shapes=True`:
`args["Input Dims"]`, `args["Input type"]`, `args["Concrete Inputs"]`):

- GEMM: `aten::mm` (A[m,k] @ B[k,n]), `aten::addmm` (bias, A, B), `aten::bmm` / `aten::baddbmm`
  with batch 1; `aten::matmul` and `aten::linear` only where no inner GEMM op was recorded.
  Batched GEMMs (batch > 1) are counted and left out: the tables have no batch column.
- attention: the outermost `aten::scaled_dot_product_attention` (or `aten::_scaled_dot_product_*`),
  q [batch, heads, q_len, head_dim], k [batch, kv_heads, kv_len, head_dim]; `is_causal` from its
  concrete inputs. Nothing inside it is counted again.
- elementwise: the outermost op of `ELEMENTWISE` not inside another classified op; bytes = every
  tensor input plus an output of the broadcast input shape.

Communication: on GPU, kernels carrying `Collective name` (NCCL kernels, annotated by the profiler
from `record_param_comms`), else kernels launched inside a `record_param_comms` op, classified by
that op's args (`Collective name`, `In msg nelems`, `Out msg nelems`, `dtype`, `Group size`); on
CPU, gloo's `gloo:<collective>` annotations (the work on gloo's thread), with the element count and
type of their recorded input and the group size from `distributedInfo`.

On GPU the time of an op is the sum of the kernels it launched (matched by `args.correlation`
between the launch in the op's span and the kernel); on CPU, the op's own duration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ops import DTYPE_BYTES

# profiler type names -> parasim dtype (ops with other dtypes are counted and left out)
DTYPES = {"float": "fp32", "c10::Half": "fp16", "c10::BFloat16": "bf16",
          "c10::Float8_e4m3fn": "fp8", "c10::Float8_e5m2": "fp8",
          "Float": "fp32", "Half": "fp16", "BFloat16": "bf16", "Float8_e4m3fn": "fp8",
          "Float8_e5m2": "fp8"}
# element sizes of every type an elementwise op or a collective may carry
ITEM_BYTES = {"double": 8, "Double": 8, "long int": 8, "Long": 8, "int": 4, "Int": 4,
              "short int": 2, "Short": 2, "signed char": 1, "Char": 1, "unsigned char": 1,
              "Byte": 1, "bool": 1, "Bool": 1, "c10::complex<float>": 8,
              **{k: DTYPE_BYTES[v] for k, v in DTYPES.items()}}
GEMM_KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")
GEMM_WRAPPERS = ("aten::matmul", "aten::linear")
ELEMENTWISE = tuple("aten::" + n for n in (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "exp", "exp_", "pow",
    "rsqrt", "sqrt", "reciprocal", "abs", "relu", "relu_", "gelu", "gelu_", "silu", "silu_",
    "sigmoid", "tanh", "where", "clamp", "clamp_min", "softmax", "_softmax", "log_softmax",
    "layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm", "dropout"))
COLLECTIVE_KINDS = (("allreduce", "all_reduce"), ("allgather", "all_gather"),
                    ("reducescatter", "reduce_scatter"), ("alltoall", "all_to_all"),
                    ("send", "send_recv"), ("recv", "send_recv"))
OP_CLASS = {"gemm": "compute", "attention": "compute", "elementwise": "memory"}


@dataclass
class Sample:
    """One measured op: its table family and key columns, seconds, and where it ran."""
    family: str
    key: tuple                 # (column, value) pairs in cost_tables column order
    seconds: float
    device: str                # "cpu:<pid>" or "cuda:<device>"
    lane: str                  # thread or stream
    start: float               # microseconds
    end: float
    name: str

    @property
    def op_class(self) -> str:
        return OP_CLASS.get(self.family, "comm")


def is_attention(name: str) -> bool:
    return name == "aten::scaled_dot_product_attention" or name.startswith("aten::_scaled_dot_product")


def collective_kind(name: str) -> str:
    """parasim family of a collective name ("allreduce", "_allgather_base", "all_to_allv", ...),
    or "" for one parasim has no op for (broadcast, barrier, reduce, gather, scatter)."""
    flat = name.lower().replace("_", "").replace("gloo:", "")
    for token, family in COLLECTIVE_KINDS:
        if token in flat:
            return family
    return ""


def _dims(args: dict) -> list:
    dims = args.get("Input Dims")
    return dims if isinstance(dims, list) else []


def _types(args: dict) -> list:
    types = args.get("Input type")
    return types if isinstance(types, list) else []


def _is_shape(d) -> bool:
    return isinstance(d, list) and all(isinstance(x, int) for x in d)


def gemm_shape(e) -> tuple | str:
    """(m, n, k, batch, dtype) of a GEMM op from its input shapes, or why not."""
    dims, types = _dims(e.args), _types(e.args)
    if not dims:
        return "no recorded shapes (profile with record_shapes=True)"
    name = e.name
    a, b = (1, 2) if name in ("aten::addmm", "aten::baddbmm", "aten::_addmm_activation") else (0, 1)
    if len(dims) <= b or not (_is_shape(dims[a]) and _is_shape(dims[b])):
        return "unexpected input shapes"
    A, B = dims[a], dims[b]
    dtype = DTYPES.get(types[a] if len(types) > a else "", "")
    if name == "aten::linear":                                      # x [..., k], W [n, k]
        if len(B) != 2 or not A or A[-1] != B[1]:
            return "unexpected linear shapes"
        return math.prod(A[:-1]), B[0], B[1], 1, dtype
    if len(A) == 3 and len(B) == 3 and A[0] == B[0] and A[2] == B[1]:          # bmm
        return A[1], B[2], A[2], A[0], dtype
    if len(A) >= 2 and len(B) == 2 and A[-1] == B[0]:               # mm, addmm, matmul ND @ 2D
        return math.prod(A[:-1]), B[1], B[0], 1, dtype
    return "unexpected GEMM shapes " + str(dims[: b + 1])


def attention_key(e) -> tuple | str:
    """Attention table columns of an SDPA op, or why not."""
    dims, types = _dims(e.args), _types(e.args)
    if len(dims) < 3 or not all(_is_shape(d) and len(d) == 4 for d in dims[:2]):
        return "no recorded 4-D q, k shapes (profile with record_shapes=True)"
    (batch, heads, q_len, head_dim), (_, kv_heads, kv_len, _) = dims[0], dims[1]
    concrete = e.args.get("Concrete Inputs") or []
    # aten::scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, ...);
    # the _scaled_dot_product_*_attention variants (q, k, v, dropout_p, is_causal, ...)
    at = 5 if e.name == "aten::scaled_dot_product_attention" else 4
    causal = len(concrete) > at and str(concrete[at]).strip().lower() == "true"
    dtype = DTYPES.get(types[0] if types else "", "")
    kv_dtype = DTYPES.get(types[1], dtype) if len(types) > 1 else dtype     # k's dtype
    return (("batch", batch), ("q_len", q_len), ("kv_len", kv_len), ("heads", heads),
            ("kv_heads", kv_heads), ("head_dim", head_dim), ("causal", causal), ("dtype", dtype),
            ("kv_dtype", kv_dtype))


def elementwise_bytes(e) -> float | str:
    """Bytes read plus written by an elementwise op (tensor inputs plus an output of the
    broadcast shape), or why not."""
    dims, types = _dims(e.args), _types(e.args)
    tensors = [(d, t) for d, t in zip(dims, types) if _is_shape(d) and d and t in ITEM_BYTES]
    if not tensors:
        return "no recorded tensor inputs (profile with record_shapes=True)"
    total = sum(math.prod(d) * ITEM_BYTES[t] for d, t in tensors)
    out = _broadcast([d for d, _ in tensors])
    return float(total + math.prod(out) * ITEM_BYTES[tensors[0][1]]) if out else float(total)


def _broadcast(shapes: list) -> list:
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for s in shapes:
        for i, x in enumerate(s, start=rank - len(s)):
            out[i] = max(out[i], x)
    return out


def comm_from_param_args(args: dict) -> tuple | str:
    """(family, devices, bytes) from record_param_comms args (or an NCCL kernel's copy of them)."""
    family = collective_kind(str(args.get("Collective name", "")))
    if not family:
        return f"collective {args.get('Collective name')!r} has no parasim op"
    size = ITEM_BYTES.get(str(args.get("dtype", "")))
    try:
        n_in, n_out = int(args.get("In msg nelems", 0)), int(args.get("Out msg nelems", 0))
        devices = int(args.get("Group size", 0))
    except (TypeError, ValueError):
        return "unreadable message size or group size"
    if size is None:
        return f"unknown dtype {args.get('dtype')!r}"
    # parasim's bytes: all-reduce, reduce-scatter, all-to-all, send/recv: the input; all-gather:
    # the gathered output (ops.Collective)
    nelems = n_out if family == "all_gather" else n_in
    if family == "send_recv":
        nelems = max(n_in, n_out)
    return family, devices, float(nelems * size)


def comm_from_gloo(e, group_size: int) -> tuple | str:
    """(family, devices, bytes) of a gloo:<collective> annotation."""
    family = collective_kind(e.name)
    if not family:
        return f"{e.name} has no parasim op"
    dims, types = _dims(e.args), _types(e.args)
    tensors = [(d, t) for d, t in zip(dims, types) if _is_shape(d) and t in ITEM_BYTES]
    if not tensors:
        return "no recorded input (profile with record_shapes=True)"
    nbytes = float(sum(math.prod(d) * ITEM_BYTES[t] for d, t in tensors))
    if family == "all_gather":
        nbytes *= group_size            # the annotation records this rank's input
    return family, group_size, nbytes
