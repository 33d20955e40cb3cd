"""Model descriptions: the shape of a dense decoder-only transformer, its presets and its memory needs.

A `ModelSpec` is inert and frozen; it is built from a preset name, a Hugging Face ``config.json`` or a
YAML mapping by `load_model`, which turns every bad input into a `ConfigError`. Parameter counts follow
the standard decoder layer (Megatron-LM, Shoeybi et al. 2019; Narayanan et al. 2021): QKV projection
hidden*(q + 2*kv), output projection q*hidden, MLP hidden*ffn*(3 if gated else 2), two norms. Biases,
position embeddings and the final norm are left out (< 0.1 % of any preset); embeddings are untied.

Precision (docs/models.md): `dtype` is the weights' and GEMM operands' dtype. A 16-bit or fp32
`dtype` is also the activations' dtype. `fp8` is W8A8 FP8 serving (vLLM ``--quantization fp8``):
the decoder layers' linear weights and their GEMM inputs are fp8, while the activations between
kernels, the norms' weights, the embedding and the LM head stay in 16 bits (`activation_dtype`,
bf16). `kv_dtype` is the KV cache's (default: the activation dtype, vLLM's ``--kv-cache-dtype
auto``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ConfigError
from .hf_config import read_hf_config
from .schema import Section, parse_with

DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1})
GIB = 2 ** 30
MAX_TP_LISTED = 64

# A dtype stored and multiplied in 8 bits keeps 16-bit activations (the quantised checkpoint's
# original dtype; every GPU with FP8 tensor cores has BF16 ones).
QUANTISED_DTYPES: Mapping[str, str] = MappingProxyType({"fp8": "bf16"})


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer. `head_dim` is always an int after construction (default
    hidden // heads); construction validates and raises ValueError on an inconsistent shape.
    `dtype` is the weights' (module doc); `kv_dtype` the KV cache's, None for the activation
    dtype (read `kv_cache_dtype`, which resolves it)."""
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    gated_mlp: bool
    vocab: int
    dtype: str = "fp16"
    head_dim: int | None = None
    kv_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None and isinstance(self.heads, int) and self.heads > 0:
            if isinstance(self.hidden, int) and self.hidden % self.heads == 0:
                object.__setattr__(self, "head_dim", self.hidden // self.heads)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is non-positive or inconsistent."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}; give head_dim")
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or self.head_dim <= 0:
            raise ValueError(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if self.heads % self.kv_heads != 0:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} is not one of: {', '.join(DTYPE_BYTES)}")
        if self.kv_dtype is not None and self.kv_dtype not in DTYPE_BYTES:
            raise ValueError(f"kv_dtype {self.kv_dtype!r} is not one of: {', '.join(DTYPE_BYTES)}")
        if not isinstance(self.gated_mlp, bool):
            raise ValueError(f"gated_mlp must be a boolean, got {self.gated_mlp!r}")

    @property
    def weight_dtype(self) -> str:
        """The decoder layers' linear weights and their GEMMs' operands (and tensor-core rate)."""
        return self.dtype

    @property
    def activation_dtype(self) -> str:
        """Activations between kernels: GEMM outputs, norms, attention's queries and compute,
        collectives and stage-to-stage sends; also the embedding, LM head and norm weights."""
        return QUANTISED_DTYPES.get(self.dtype, self.dtype)

    @property
    def kv_cache_dtype(self) -> str:
        """The KV cache's elements: `kv_dtype`, else the activation dtype."""
        return self.kv_dtype or self.activation_dtype

    @property
    def dtype_bytes(self) -> int:
        """Bytes of one weight element of the decoder layers' linear layers (`weight_dtype`)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def activation_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.activation_dtype]

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_cache_dtype]

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_params_per_layer(self) -> int:
        """QKV + output projection + MLP of one decoder layer (the weights `dtype` stores)."""
        qkv = self.hidden * (self.q_size + 2 * self.kv_size)
        out = self.q_size * self.hidden
        mlp = self.hidden * self.ffn * (3 if self.gated_mlp else 2)
        return qkv + out + mlp

    def weight_params_per_layer(self) -> int:
        """QKV + output projection + MLP + two norms of one decoder layer."""
        return self.linear_params_per_layer() + 2 * self.hidden

    def embedding_params(self) -> int:
        """Input embedding plus LM head (counted twice: untied)."""
        return 2 * self.vocab * self.hidden

    def total_params(self) -> int:
        return self.layers * self.weight_params_per_layer() + self.embedding_params()

    def weight_bytes(self) -> int:
        """Linear weights in `dtype`; norms, embedding and LM head in the activation dtype (vLLM
        quantises only linear layers: its FP8 LM head and embedding stay 16-bit)."""
        other = self.total_params() - self.layers * self.linear_params_per_layer()
        return (self.layers * self.linear_params_per_layer() * self.dtype_bytes
                + other * self.activation_dtype_bytes)

    def kv_cache_bytes_per_token(self) -> int:
        """K and V of one token over all layers: 2 * layers * kv_size * kv_dtype_bytes."""
        return 2 * self.layers * self.kv_size * self.kv_dtype_bytes

    def with_layers(self, n: int) -> "ModelSpec":
        return replace(self, layers=n)


@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes needed on the fullest device of a placement."""
    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    total_bytes: float


def split_layers(layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage, as even as possible; the first `layers % pp` stages get one more."""
    if pp < 1 or pp > layers:
        raise ValueError(f"pp must be between 1 and the number of layers ({layers}), got {pp}")
    base, extra = divmod(layers, pp)
    return tuple(base + (1 if i < extra else 0) for i in range(pp))


def memory_per_device(model: ModelSpec, tp: int, pp: int, batch: int, context_tokens: int,
                      split: tuple[int, ...] | None = None,
                      step_tokens: int | None = None) -> MemoryFootprint:
    """Memory of the fullest device (max total over pipeline stages) with Megatron-style tensor
    parallelism (heads, FFN columns and vocab split `tp` ways; norms replicated) and `pp` stages.

    K/V heads are split across tp; when kv_heads < tp each device keeps one replica, i.e. the local
    KV width is max(kv_heads // tp, 1) * head_dim (for both K/V weights and cache). The embedding sits
    on the first stage and the LM head on the last, each split by tp. Linear weights take
    dtype_bytes each, norms, embedding and LM head activation_dtype_bytes (ModelSpec.weight_bytes).
    KV cache = batch * context_tokens * 2 * local KV width * kv_dtype_bytes * stage layers.
    `split` gives the layers per stage explicitly (default: as even as possible).
    Activations (a rough transient bound, not from a paper): two live buffers of the widest per-token
    activation for the tokens of the largest step a device runs at once, `step_tokens` (a prefill's
    prompt tokens, a continuous-batching step's token budget; default batch * context_tokens, every
    token at once), step_tokens * max(hidden, ffn / tp) * activation_dtype_bytes * 2.
    """
    if tp < 1 or batch < 0 or context_tokens < 0:
        raise ValueError(f"need tp >= 1, batch >= 0 and context_tokens >= 0; got {tp}, {batch}, "
                         f"{context_tokens}")
    b_weight, b_act, b_kv = model.dtype_bytes, model.activation_dtype_bytes, model.kv_dtype_bytes
    kv_local = max(model.kv_heads // tp, 1) * model.head_dim
    linear_params = (model.hidden * (model.q_size / tp + 2 * kv_local) + model.q_size / tp * model.hidden
                     + model.hidden * model.ffn * (3 if model.gated_mlp else 2) / tp)
    layer_bytes = linear_params * b_weight + 2 * model.hidden * b_act
    embed_params = model.vocab * model.hidden / tp
    if step_tokens is None:
        step_tokens = batch * context_tokens
    activation = step_tokens * max(model.hidden, model.ffn / tp) * b_act * 2
    best: MemoryFootprint | None = None
    stages = tuple(split) if split is not None else split_layers(model.layers, pp)
    for i, n in enumerate(stages):
        embeds = (i == 0) + (i == len(stages) - 1)
        weights = n * layer_bytes + embeds * embed_params * b_act
        kv = batch * context_tokens * 2 * kv_local * b_kv * n
        total = weights + kv + activation
        if best is None or total > best.total_bytes:
            best = MemoryFootprint(weights, kv, activation, total)
    assert best is not None
    return best


def _tp_problem(model: ModelSpec, tp: int) -> str | None:
    if tp < 1:
        return "must be >= 1"
    if model.heads % tp:
        return f"does not divide heads ({model.heads})"
    if model.ffn % tp:
        return f"does not divide ffn ({model.ffn})"
    if model.kv_heads % tp and tp % model.kv_heads:
        return f"neither divides nor is a multiple of kv_heads ({model.kv_heads})"
    return None


def valid_tp_degrees(model: ModelSpec, limit: int = MAX_TP_LISTED) -> list[int]:
    """Tensor-parallel degrees up to `limit` that split heads, ffn and K/V heads evenly."""
    return [d for d in range(1, limit + 1) if _tp_problem(model, d) is None]


def check_tp_degree(model: ModelSpec, tp: int, where: str, key: str) -> None:
    """Raise ConfigError at `key` unless `tp` divides heads and ffn and fits kv_heads."""
    problem = _tp_problem(model, tp)
    if problem:
        ok = ", ".join(str(d) for d in valid_tp_degrees(model))
        raise ConfigError(where, key, f"tp={tp} {problem} of model {model.name}; "
                                      f"degrees that work: {ok}")


def _needs(dtype: str) -> str:
    return "an FP32 rate" if dtype == "fp32" else f"{dtype.upper()} tensor cores"


def dtype_problem(model: ModelSpec, rates, hardware: str) -> tuple[str, str] | None:
    """("dtype" or "kv_dtype", what is wrong and what to use) for the first dtype of `model` that
    the hardware named `hardware`, whose peak_tflops lists `rates`, cannot run; None when it runs
    them all. The weights' dtype needs its tensor-core rate, fp8 weights also their 16-bit
    activations' rate, and the KV cache's dtype a rate of its own (an fp8 cache needs FP8
    support, as vLLM's FP8 attention kernels do)."""
    rates = list(rates)
    listed = f"(its peak_tflops lists {', '.join(rates)})"
    act, kv = model.activation_dtype, model.kv_cache_dtype
    if model.dtype not in rates:
        alts = [d for d in ("fp16", "bf16") if d in rates and d != model.dtype]
        fix = f"use {' or '.join(alts)}" if alts else "add its rate to the profile's peak_tflops"
        return "dtype", (f"{model.dtype} needs {_needs(model.dtype)}, which hardware {hardware!r} "
                         f"lacks {listed}; {fix}")
    if act not in rates:
        return "dtype", (f"{model.dtype} keeps 16-bit activations in {act}, which hardware "
                         f"{hardware!r} lacks {listed}; add a {act} rate to the profile")
    if kv not in rates:
        return "kv_dtype", (f"{kv} needs {_needs(kv).replace('tensor cores', 'support')}, which "
                            f"hardware {hardware!r} lacks {listed}; leave kv_dtype out to keep "
                            f"the KV cache in {act}, the activation dtype")
    return None


def check_fits(model: ModelSpec, device_memory_bytes: float, tp: int, pp: int, batch: int,
               context_tokens: int, where: str, key: str,
               split: tuple[int, ...] | None = None,
               step_tokens: int | None = None) -> MemoryFootprint:
    """Return the footprint, or raise ConfigError at `key` when it exceeds the device memory.
    `batch` counts every sequence whose KV cache is resident at once; `step_tokens` the tokens of
    the largest step in flight on a device (memory_per_device)."""
    fp = parse_with(where, key, lambda: memory_per_device(model, tp, pp, batch, context_tokens, split,
                                                          step_tokens))
    if fp.total_bytes <= device_memory_bytes:
        return fp
    hint = ""
    for d in valid_tp_degrees(model):
        if d > tp and memory_per_device(model, d, pp, batch, context_tokens, None,
                                        step_tokens).total_bytes <= device_memory_bytes:
            hint = f" (tp={d}, pp={pp} would fit)"
            break
    raise ConfigError(where, key, (
        f"model {model.name} needs {fp.total_bytes / GIB:.1f} GiB per device with tp={tp}, pp={pp} "
        f"(weights {fp.weights_bytes / GIB:.1f} GiB, KV cache {fp.kv_cache_bytes / GIB:.1f} GiB for "
        f"batch={batch}, context={context_tokens} tokens, activations "
        f"{fp.activation_bytes / GIB:.1f} GiB for a "
        f"{batch * context_tokens if step_tokens is None else step_tokens}-token step) but the device has {device_memory_bytes / GIB:.1f} GiB; "
        f"use more devices or a smaller model{hint}"))


PRESETS: Mapping[str, ModelSpec] = MappingProxyType({
    # THUDM/GLM-130B configs/model_glm_130b.sh (Zeng et al. 2022): GeGLU MLP, inner size 32768.
    "glm-130b": ModelSpec("glm-130b", 70, 12288, 96, 96, 32768, True, 150528, "fp16"),
    # facebook/opt-30b config.json (Zhang et al. 2022): ReLU MLP.
    "opt-30b": ModelSpec("opt-30b", 48, 7168, 56, 56, 28672, False, 50272, "fp16"),
    # facebook/opt-66b config.json.
    "opt-66b": ModelSpec("opt-66b", 64, 9216, 72, 72, 36864, False, 50272, "fp16"),
    # meta-llama/Llama-2-7b-hf config.json.
    "llama-2-7b": ModelSpec("llama-2-7b", 32, 4096, 32, 32, 11008, True, 32000, "fp16"),
    # meta-llama/Llama-2-13b-hf config.json.
    "llama-2-13b": ModelSpec("llama-2-13b", 40, 5120, 40, 40, 13824, True, 32000, "fp16"),
    # meta-llama/Llama-2-70b-hf config.json (GQA, 8 K/V heads).
    "llama-2-70b": ModelSpec("llama-2-70b", 80, 8192, 64, 8, 28672, True, 32000, "fp16"),
    # meta-llama/Meta-Llama-3-8B config.json.
    "llama-3-8b": ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, True, 128256, "bf16"),
    # meta-llama/Meta-Llama-3-70B config.json.
    "llama-3-70b": ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, True, 128256, "bf16"),
    # Llama 3.1 and 3.3 keep the Llama 3 shapes; their config.json adds rope_scaling (rope_type
    # "llama3", factor 8) for a 131072-token context (max_position_embeddings). parasim models neither:
    # RoPE costs nothing here whatever its scaling, and no preset limits the context length (attention
    # and KV-cache costs follow the workload's token counts). Untied embeddings; torch_dtype bfloat16;
    # head_dim = hidden / heads = 128 in every Llama 3.x config.
    # meta-llama/Llama-3.1-8B config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads,
    # intermediate_size 14336, vocab 128256.
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 14336, True, 128256, "bf16"),
    # meta-llama/Llama-3.1-70B config.json: 80 layers, hidden 8192, 64 heads, 8 KV heads,
    # intermediate_size 28672, vocab 128256.
    "llama-3.1-70b": ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 28672, True, 128256, "bf16"),
    # meta-llama/Llama-3.3-70B-Instruct config.json: the Llama 3.1 70B shape (only the weights differ).
    "llama-3.3-70b": ModelSpec("llama-3.3-70b", 80, 8192, 64, 8, 28672, True, 128256, "bf16"),
    # meta-llama/Llama-3.1-405B config.json (the BF16 release): 126 layers, hidden 16384, 128 heads,
    # 8 KV heads, intermediate_size 53248, vocab 128256. (Meta's FP8 release,
    # Llama-3.1-405B-Instruct-FP8, duplicates the K/V heads to 16 for 16-way tensor parallelism.)
    "llama-3.1-405b": ModelSpec("llama-3.1-405b", 126, 16384, 128, 8, 53248, True, 128256, "bf16"),
    # Qwen2.5 adds biases to the Q, K and V projections (attention_bias; (q + 2 * kv) per layer, about
    # 0.01% of the parameters), which parasim leaves out like every bias; its RoPE (theta 1e6) and
    # context length (32768 in config.json, 131072 with YaRN) are not modelled either. Untied
    # embeddings (tie_word_embeddings false); torch_dtype bfloat16; head_dim = hidden / heads = 128.
    # Qwen/Qwen2.5-7B config.json: 28 layers, hidden 3584, 28 heads, 4 KV heads,
    # intermediate_size 18944, vocab 152064.
    "qwen2.5-7b": ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 18944, True, 152064, "bf16"),
    # Qwen/Qwen2.5-72B config.json: 80 layers, hidden 8192, 64 heads, 8 KV heads,
    # intermediate_size 29568, vocab 152064.
    "qwen2.5-72b": ModelSpec("qwen2.5-72b", 80, 8192, 64, 8, 29568, True, 152064, "bf16"),
    # mistralai/Mistral-7B-v0.3 config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads,
    # intermediate_size 14336, vocab 32768 (v0.1 has the same shape with vocab 32000), torch_dtype
    # bfloat16, untied embeddings, head_dim 128. v0.1's 4096-token sliding-window attention is not
    # modelled (v0.3 has none).
    "mistral-7b": ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, True, 32768, "bf16"),
})

_INT_FIELDS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")


def load_model(spec: Any, where: str = "model", key: str = "") -> ModelSpec:
    """Build a ModelSpec from a preset name, a path to a Hugging Face config.json (or its folder), or
    a mapping: ``{preset: NAME, <overrides>}`` or every field given explicitly. `key` is the dotted
    path of `spec` inside `where`. Any bad input raises ConfigError naming the file and key."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        if spec.lower() in PRESETS:
            return PRESETS[spec.lower()]
        if spec.endswith(".json") or os.sep in spec or os.path.isdir(spec):
            file, fields = read_hf_config(spec, where, key or "model")
            return parse_with(file, "(top level)", lambda: ModelSpec(**fields))
        raise ConfigError(where, key or "preset", f"unknown model preset {spec!r}; choose one of: "
                          f"{', '.join(PRESETS)}, or give a path to a Hugging Face config.json")
    s = Section(spec, where, key)
    base: ModelSpec | None = None
    if s.has("preset"):
        name = s.get("preset", str, choices=list(PRESETS))
        base = PRESETS[name]
    # With a preset every field is optional (None = keep the preset's); without one all are required.
    opt: dict[str, Any] = {"default": None} if base is not None else {}
    fields: dict[str, Any] = {"name": s.get("name", str, **opt)}
    for f in _INT_FIELDS:
        fields[f] = s.get(f, int, min=1, **opt)
    fields["gated_mlp"] = s.get("gated_mlp", bool, **opt)
    fields["dtype"] = s.get("dtype", str, None if base is not None else "fp16", choices=list(DTYPE_BYTES))
    fields["kv_dtype"] = s.get("kv_dtype", str, None, choices=list(DTYPE_BYTES))
    head_dim = s.get("head_dim", int, None, min=1)
    fields = {k: v for k, v in fields.items() if v is not None}
    if head_dim is not None or (base is not None and ("hidden" in fields or "heads" in fields)):
        fields["head_dim"] = head_dim  # None re-derives it from the overridden shape
    s.done()
    if base is not None:
        return parse_with(where, key or "preset", lambda: replace(base, **fields))
    return parse_with(where, key or "(top level)", lambda: ModelSpec(**fields))


