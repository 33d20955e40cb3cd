"""The ops of one forward step of a dense decoder under Megatron tensor parallelism.

Shoeybi et al. 2019 (Megatron-LM): QKV and FFN-up are column-parallel, the attention output and
FFN-down projections row-parallel, so each layer needs two all-reduces of the activations
(tokens x hidden). With tp = 1 the same list has no collectives. This module turns a model shape
into op descriptions; it knows nothing of costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from simulator.model import ModelSpec
from simulator.ops import Attention, Collective, Elementwise, Gemm, Op


@dataclass(frozen=True)
class Step:
    """One forward pass: `q_len` new tokens per sequence over `kv_len` keys, `batch` sequences."""
    batch: int
    q_len: int
    kv_len: int
    phase: str          # 'prefill' or 'decode'

    @property
    def tokens(self) -> int:
        return self.batch * self.q_len


def request_steps(batch: int, prompt_tokens: int, output_tokens: int) -> list[Step]:
    """Prefill, then one decode step per further output token against the growing KV cache."""
    steps = [Step(batch, prompt_tokens, prompt_tokens, "prefill")]
    for i in range(1, output_tokens):
        steps.append(Step(batch, 1, prompt_tokens + i, "decode"))
    return steps


def attention_block(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...],
                    q_len: int | None = None, kv_len: int | None = None,
                    suffix: str = "") -> list[Op]:
    """Norm, QKV, attention, output projection and its all-reduce (if tp > 1).

    `q_len`/`kv_len` override the step's (a chunk of a prompt attends to earlier chunks' keys)."""
    q_len = step.q_len if q_len is None else q_len
    kv_len = step.kv_len if kv_len is None else kv_len
    tokens = step.batch * q_len
    b = model.dtype_bytes
    h = model.hidden
    heads = model.heads // tp
    kv_heads = max(model.kv_heads // tp, 1)
    hd = model.head_dim
    ops: list[Op] = [
        Elementwise(2.0 * tokens * h * b, "norm_attn" + suffix),
        Gemm(tokens, (heads + 2 * kv_heads) * hd, h, model.dtype, "qkv" + suffix),
        Attention(step.batch, q_len, kv_len, heads, kv_heads, hd, True, model.dtype, "attn" + suffix),
        Gemm(tokens, h, heads * hd, model.dtype, "out_proj" + suffix),
    ]
    if tp > 1:
        ops.append(Collective("all_reduce", float(tokens * h * b), group, "ar_attn" + suffix))
    return ops


def mlp_block(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...],
              q_len: int | None = None, suffix: str = "") -> list[Op]:
    """Residual add + norm, FFN up (gate+up when gated), activation, FFN down, all-reduce."""
    q_len = step.q_len if q_len is None else q_len
    tokens = step.batch * q_len
    b = model.dtype_bytes
    h = model.hidden
    f = model.ffn // tp
    up_n = f * (2 if model.gated_mlp else 1)
    ops: list[Op] = [
        Elementwise(3.0 * tokens * h * b, "add_norm_mlp" + suffix),
        Gemm(tokens, up_n, h, model.dtype, "ffn_up" + suffix),
        Elementwise((up_n + f) * tokens * b * 1.0, "act" + suffix),
        Gemm(tokens, h, f, model.dtype, "ffn_down" + suffix),
    ]
    if tp > 1:
        ops.append(Collective("all_reduce", float(tokens * h * b), group, "ar_mlp" + suffix))
    return ops


def layer_ops(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...]) -> list[Op]:
    return attention_block(model, tp, step, group) + mlp_block(model, tp, step, group)


def head_ops(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...]) -> list[Op]:
    """Final norm and the vocabulary-parallel LM head on the last token of each sequence, then an
    all-gather of the logits (Megatron's vocab-parallel output layer)."""
    b = model.dtype_bytes
    ops: list[Op] = [
        Elementwise(2.0 * step.batch * model.hidden * b, "final_norm"),
        Gemm(step.batch, max(model.vocab // tp, 1), model.hidden, model.dtype, "lm_head"),
    ]
    if tp > 1:
        ops.append(Collective("all_gather", float(step.batch * model.vocab * b), group, "ag_logits"))
    return ops


def step_ops(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...],
             layers: int | None = None, head: bool = True) -> list[Op]:
    """All ops of one forward step over `layers` layers (default: all), plus the LM head."""
    one, count, tail = step_parts(model, tp, step, group, layers, head)
    return one * count + tail


def step_parts(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...],
               layers: int | None = None, head: bool = True) -> tuple[list[Op], int, list[Op]]:
    """`step_ops` as (one layer's ops, the number of layers, the LM head's ops or []): the step
    is ``one * count + tail``, the same op objects in every layer."""
    one = layer_ops(model, tp, step, group)
    tail = head_ops(model, tp, step, group) if head else []
    return one, model.layers if layers is None else layers, tail
