"""Model descriptions: the shape of a dense decoder-only transformer, its presets and its memory needs.

A `ModelSpec` is inert and frozen; it is built from a preset name, a Hugging Face ``config.json`` or a
YAML mapping by `load_model`, which turns every bad input into a `ConfigError`. Parameter counts follow
the standard decoder layer (Megatron-LM, Shoeybi et al. 2019; Narayanan et al. 2021): QKV projection
hidden*(q + 2*kv), output projection q*hidden, MLP hidden*ffn*(3 if gated else 2), two norms. Biases,
position embeddings and the final norm are left out (< 0.1 % of any preset); embeddings are untied.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ConfigError
from .schema import Section, parse_with

DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1})
GIB = 2 ** 30
MAX_TP_LISTED = 64

# Hugging Face `model_type`s whose MLP is gated (SwiGLU/GeGLU: gate, up and down projections).
GATED_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                               "gemma3_text", "phi3", "olmo", "olmo2", "internlm2", "cohere", "granite"})
UNGATED_MODEL_TYPES = frozenset({"opt", "gpt2", "gpt_neox", "gptj", "bloom", "falcon", "starcoder2",
                                 "gpt_bigcode", "mpt", "phi"})
_HF_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer. `head_dim` is always an int after construction (default
    hidden // heads); construction validates and raises ValueError on an inconsistent shape."""
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
        if not isinstance(self.gated_mlp, bool):
            raise ValueError(f"gated_mlp must be a boolean, got {self.gated_mlp!r}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    def weight_params_per_layer(self) -> int:
        """QKV + output projection + MLP + two norms of one decoder layer."""
        qkv = self.hidden * (self.q_size + 2 * self.kv_size)
        out = self.q_size * self.hidden
        mlp = self.hidden * self.ffn * (3 if self.gated_mlp else 2)
        return qkv + out + mlp + 2 * self.hidden

    def embedding_params(self) -> int:
        """Input embedding plus LM head (counted twice: untied)."""
        return 2 * self.vocab * self.hidden

    def total_params(self) -> int:
        return self.layers * self.weight_params_per_layer() + self.embedding_params()

    def weight_bytes(self) -> int:
        return self.total_params() * self.dtype_bytes

    def kv_cache_bytes_per_token(self) -> int:
        """K and V of one token over all layers: 2 * layers * kv_size * dtype_bytes."""
        return 2 * self.layers * self.kv_size * self.dtype_bytes

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
                      split: tuple[int, ...] | None = None) -> MemoryFootprint:
    """Memory of the fullest device (max total over pipeline stages) with Megatron-style tensor
    parallelism (heads, FFN columns and vocab split `tp` ways; norms replicated) and `pp` stages.

    K/V heads are split across tp; when kv_heads < tp each device keeps one replica, i.e. the local
    KV width is max(kv_heads // tp, 1) * head_dim (for both K/V weights and cache). The embedding sits
    on the first stage and the LM head on the last, each split by tp.
    KV cache = batch * context_tokens * 2 * local KV width * dtype_bytes * stage layers.
    `split` gives the layers per stage explicitly (default: as even as possible).
    Activations (a rough transient bound, not from a paper): two live buffers of the widest per-token
    activation, batch * context_tokens * max(hidden, ffn / tp) * dtype_bytes * 2.
    """
    if tp < 1 or batch < 0 or context_tokens < 0:
        raise ValueError(f"need tp >= 1, batch >= 0 and context_tokens >= 0; got {tp}, {batch}, "
                         f"{context_tokens}")
    b = model.dtype_bytes
    kv_local = max(model.kv_heads // tp, 1) * model.head_dim
    layer_params = (model.hidden * (model.q_size / tp + 2 * kv_local) + model.q_size / tp * model.hidden
                    + model.hidden * model.ffn * (3 if model.gated_mlp else 2) / tp + 2 * model.hidden)
    embed_params = model.vocab * model.hidden / tp
    activation = batch * context_tokens * max(model.hidden, model.ffn / tp) * b * 2
    best: MemoryFootprint | None = None
    stages = tuple(split) if split is not None else split_layers(model.layers, pp)
    for i, n in enumerate(stages):
        embeds = (i == 0) + (i == len(stages) - 1)
        weights = (n * layer_params + embeds * embed_params) * b
        kv = batch * context_tokens * 2 * kv_local * b * n
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


def check_fits(model: ModelSpec, device_memory_bytes: float, tp: int, pp: int, batch: int,
               context_tokens: int, where: str, key: str,
               split: tuple[int, ...] | None = None) -> MemoryFootprint:
    """Return the footprint, or raise ConfigError at `key` when it exceeds the device memory.
    `batch` counts every sequence whose KV cache is resident at once."""
    fp = parse_with(where, key, lambda: memory_per_device(model, tp, pp, batch, context_tokens, split))
    if fp.total_bytes <= device_memory_bytes:
        return fp
    hint = ""
    for d in valid_tp_degrees(model):
        if d > tp and memory_per_device(model, d, pp, batch, context_tokens).total_bytes \
                <= device_memory_bytes:
            hint = f" (tp={d}, pp={pp} would fit)"
            break
    raise ConfigError(where, key, (
        f"model {model.name} needs {fp.total_bytes / GIB:.1f} GiB per device with tp={tp}, pp={pp} "
        f"(weights {fp.weights_bytes / GIB:.1f} GiB, KV cache {fp.kv_cache_bytes / GIB:.1f} GiB, "
        f"activations {fp.activation_bytes / GIB:.1f} GiB for batch={batch}, "
        f"context={context_tokens} tokens) but the device has {device_memory_bytes / GIB:.1f} GiB; "
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
            return _load_hf(spec, where, key or "model")
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
    head_dim = s.get("head_dim", int, None, min=1)
    fields = {k: v for k, v in fields.items() if v is not None}
    if head_dim is not None or (base is not None and ("hidden" in fields or "heads" in fields)):
        fields["head_dim"] = head_dim  # None re-derives it from the overridden shape
    s.done()
    if base is not None:
        return parse_with(where, key or "preset", lambda: replace(base, **fields))
    return parse_with(where, key or "(top level)", lambda: ModelSpec(**fields))


def _optional_int(s: Section, name: str) -> int | None:
    """An optional positive integer of a config.json: absent or null is None; 0 is an error."""
    value = s.get(name, (int, type(None)), None)
    if value is not None and value < 1:
        raise s.error(name, f"must be a positive integer or null, got {value}")
    return value


def _load_hf(path: str, where: str, key: str) -> ModelSpec:
    """Read a Hugging Face config.json: LLaMA-style, OPT-style or GPT-2-style keys."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(where, key, f"cannot read Hugging Face config {file!r}: "
                                      f"{exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(where, key, f"{file!r} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(where, key, f"{file!r} is nested too deeply to be a model config") from None
    s = Section(data, file)
    model_type = s.get("model_type", str, "")
    name = s.get("_name_or_path", str, "") or os.path.basename(os.path.dirname(os.path.abspath(file)))
    if s.has("n_layer"):  # GPT-2 style
        layers, hidden = s.get("n_layer", int, min=1), s.get("n_embd", int, min=1)
        heads = s.get("n_head", int, min=1)
        kv_heads, ffn = heads, _optional_int(s, "n_inner") or 4 * hidden
        gated, head_dim = False, None
    else:
        layers, hidden = s.get("num_hidden_layers", int, min=1), s.get("hidden_size", int, min=1)
        heads = s.get("num_attention_heads", int, min=1)
        kv_heads = _optional_int(s, "num_key_value_heads") or heads
        if heads % kv_heads:
            raise s.error("num_key_value_heads", f"num_attention_heads ({heads}) must be a multiple "
                          f"of num_key_value_heads ({kv_heads})")
        head_dim = _optional_int(s, "head_dim")
        if s.has("ffn_dim"):  # OPT style
            ffn, gated = s.get("ffn_dim", int, min=1), False
        else:
            ffn = s.get("intermediate_size", int, min=1)
            act = s.get("hidden_act", str, "")
            gated = model_type in GATED_MODEL_TYPES or (
                model_type not in UNGATED_MODEL_TYPES and act in ("silu", "swiglu", "geglu"))
    vocab = s.get("vocab_size", int, min=1)
    torch_dtype = s.get("torch_dtype", (str, type(None)), None) or "float16"
    dtype = "fp8" if torch_dtype.startswith("float8") else _HF_DTYPES.get(torch_dtype)
    if dtype is None:
        raise s.error("torch_dtype", f"{torch_dtype!r} is not supported; choose one of: "
                      f"{', '.join(_HF_DTYPES)}, float8_*")
    return parse_with(file, "(top level)", lambda: ModelSpec(
        name or model_type or "model", layers, hidden, heads, kv_heads, ffn, gated, vocab, dtype,
        head_dim))
