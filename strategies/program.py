"""The ops of one forward step of a dense decoder under Megatron tensor parallelism.

Shoeybi et al. 2019 (Megatron-LM): QKV and FFN-up are column-parallel, the attention output and
FFN-down projections row-parallel, so each layer needs two all-reduces of the activations
(tokens x hidden). With tp = 1 the same list has no collectives. This module turns a model shape
into op descriptions; it knows nothing of costs.

Dtypes (simulator.model): the decoder layers' GEMMs multiply in the model's `weight_dtype` and
write `activation_dtype`; norms, activations, collectives, attention's queries and compute and the
LM head are in `activation_dtype`; attention reads its keys and values in `kv_cache_dtype`. The
quantisation of an fp8 GEMM's input is taken as fused into the kernel that produces it (vLLM's
fused RMSNorm + quant and SiLU-and-mul + quant kernels), so it adds no op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from simulator.model import ModelSpec
from simulator.ops import (ATTENTION_Q_TILE, Attention, Collective, Elementwise, Gemm, Op,
                           RaggedAttention, causal_pairs)


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
    b, w, act = model.activation_dtype_bytes, model.weight_dtype, model.activation_dtype
    h = model.hidden
    heads = model.heads // tp
    kv_heads = max(model.kv_heads // tp, 1)
    hd = model.head_dim
    ops: list[Op] = [
        Elementwise(2.0 * tokens * h * b, "norm_attn" + suffix),
        Gemm(tokens, (heads + 2 * kv_heads) * hd, h, w, "qkv" + suffix, out_dtype=act),
        Attention(step.batch, q_len, kv_len, heads, kv_heads, hd, True, act, "attn" + suffix,
                  model.kv_cache_dtype),
        Gemm(tokens, h, heads * hd, w, "out_proj" + suffix, out_dtype=act),
    ]
    if tp > 1:
        ops.append(Collective("all_reduce", float(tokens * h * b), group, "ar_attn" + suffix))
    return ops


def mlp_block(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...],
              q_len: int | None = None, suffix: str = "") -> list[Op]:
    """Residual add + norm, FFN up (gate+up when gated), activation, FFN down, all-reduce."""
    q_len = step.q_len if q_len is None else q_len
    tokens = step.batch * q_len
    b, w, act = model.activation_dtype_bytes, model.weight_dtype, model.activation_dtype
    h = model.hidden
    f = model.ffn // tp
    up_n = f * (2 if model.gated_mlp else 1)
    ops: list[Op] = [
        Elementwise(3.0 * tokens * h * b, "add_norm_mlp" + suffix),
        Gemm(tokens, up_n, h, w, "ffn_up" + suffix, out_dtype=act),
        Elementwise((up_n + f) * tokens * b * 1.0, "act" + suffix),
        Gemm(tokens, h, f, w, "ffn_down" + suffix, out_dtype=act),
    ]
    if tp > 1:
        ops.append(Collective("all_reduce", float(tokens * h * b), group, "ar_mlp" + suffix))
    return ops


def layer_ops(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...]) -> list[Op]:
    return attention_block(model, tp, step, group) + mlp_block(model, tp, step, group)


def head_ops(model: ModelSpec, tp: int, step: Step, group: Tuple[int, ...]) -> list[Op]:
    """Final norm and the vocabulary-parallel LM head on the last token of each sequence, then an
    all-gather of the logits (Megatron's vocab-parallel output layer). The LM head stays in the
    activation dtype under fp8 weights (vLLM quantises only the decoder layers' linear layers)."""
    b, act = model.activation_dtype_bytes, model.activation_dtype
    ops: list[Op] = [
        Elementwise(2.0 * step.batch * model.hidden * b, "final_norm"),
        Gemm(step.batch, max(model.vocab // tp, 1), model.hidden, act, "lm_head"),
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


# ------------------------------------------------------------------------------ batched steps
def batch_attention(model: ModelSpec, tp: int, entries, decode: bool, name: str) -> Op | None:
    """One ragged attention op over the step's prompt chunks (decode False) or its decodes."""
    seqs = q_tokens = kv_tokens = q_tiles = 0
    pairs = 0.0
    for e in entries:
        if e.decode != decode:
            continue
        n = e.seqs
        seqs += n
        q_tokens += e.q_tokens * n
        kv_tokens += e.context_tokens * n
        q_tiles += -(-e.q_tokens // ATTENTION_Q_TILE) * n
        pairs += causal_pairs(e.q_tokens, e.context_tokens) * n
    if not seqs:
        return None
    return RaggedAttention(seqs, q_tokens, pairs, kv_tokens, q_tiles, model.heads // tp,
                           max(model.kv_heads // tp, 1), model.head_dim, model.activation_dtype,
                           name, model.kv_cache_dtype)


def batch_blocks(model: ModelSpec, tp: int, entries, phase: str, group: Tuple[int, ...],
                 suffix: str = "") -> tuple[list[Op], list[Op]]:
    """(attention block, MLP block) of one layer over `entries` (a step's, or a chunk of them):
    GEMMs, norms and all-reduces over their tokens; attention ragged, one op for prompt chunks and
    one for decodes (each sequence with its own query and context length)."""
    tokens = sum(e.q_tokens * e.seqs for e in entries)
    step = Step(1, tokens, tokens, phase)
    attn = attention_block(model, tp, step, group, suffix=suffix)
    ragged = [op for op in (batch_attention(model, tp, entries, False, "attn_prefill" + suffix),
                            batch_attention(model, tp, entries, True, "attn_decode" + suffix))
              if op is not None]
    return attn[:2] + ragged + attn[3:], mlp_block(model, tp, step, group, suffix=suffix)


def batch_layer_ops(model: ModelSpec, tp: int, batch, group: Tuple[int, ...]) -> list[Op]:
    """One layer of a continuous-batching step (`batch_blocks` over all its entries)."""
    attn, mlp = batch_blocks(model, tp, batch.entries, batch.phase, group)
    return attn + mlp


def batch_head_ops(model: ModelSpec, tp: int, batch, group: Tuple[int, ...]) -> list[Op]:
    """The LM head over the sequences that sample in this step (none: no head ops)."""
    sampling = sum(e.seqs for e in batch.entries if e.samples)
    if not sampling:
        return []
    return head_ops(model, tp, Step(sampling, 1, 1, batch.phase), group)


def batch_step_ops(model: ModelSpec, tp: int, batch, group: Tuple[int, ...],
                   layers: int | None = None, head: bool = True) -> list[Op]:
    """All ops of one continuous-batching step over `layers` layers (default: all), then the LM
    head if `head`."""
    ops = batch_layer_ops(model, tp, batch, group) * (model.layers if layers is None else layers)
    if head:
        ops = ops + batch_head_ops(model, tp, batch, group)
    return ops
