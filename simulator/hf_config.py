"""Hugging Face ``config.json`` files to the fields of a `simulator.model.ModelSpec`.

LLaMA-style (``num_hidden_layers``, ``intermediate_size``), OPT-style (``ffn_dim``) and GPT-2-style
(``n_layer``) keys. The MLP is gated for the `model_type`s known to use SwiGLU/GeGLU (or an unknown
type with a gated activation). The dtype is ``torch_dtype``'s (float8_* is fp8); an FP8 checkpoint
(``quantization_config.quant_method`` fp8 or fbgemm_fp8, with torch_dtype its 16-bit activations')
is fp8 (docs/models.md). Every bad input is a ConfigError naming the file and key.
"""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import ConfigError
from .schema import Section

# Hugging Face `model_type`s whose MLP is gated (SwiGLU/GeGLU: gate, up and down projections).
GATED_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                               "gemma3_text", "phi3", "olmo", "olmo2", "internlm2", "cohere", "granite"})
UNGATED_MODEL_TYPES = frozenset({"opt", "gpt2", "gpt_neox", "gptj", "bloom", "falcon", "starcoder2",
                                 "gpt_bigcode", "mpt", "phi"})
_HF_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# `quantization_config.quant_method`s of FP8 checkpoints whose linear weights are fp8 (vLLM's
# Fp8Config; Meta's Llama-3.1-405B-FP8 uses fbgemm_fp8); other methods are left as torch_dtype.
_HF_FP8_METHODS = ("fp8", "fbgemm_fp8")


def _optional_int(s: Section, name: str) -> int | None:
    """An optional positive integer of a config.json: absent or null is None; 0 is an error."""
    value = s.get(name, (int, type(None)), None)
    if value is not None and value < 1:
        raise s.error(name, f"must be a positive integer or null, got {value}")
    return value


def read_hf_config(path: str, where: str, key: str) -> tuple[str, dict[str, Any]]:
    """(the config.json's path, ModelSpec's fields) of a Hugging Face config.json (or its folder):
    LLaMA-style, OPT-style or GPT-2-style keys. `where` and `key` name what asked for it."""
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
    if _hf_quant_method(s) in _HF_FP8_METHODS:
        dtype = "fp8"       # an FP8 checkpoint: torch_dtype is its activations' (bfloat16)
    return file, dict(name=name or model_type or "model", layers=layers, hidden=hidden, heads=heads,
                      kv_heads=kv_heads, ffn=ffn, gated_mlp=gated, vocab=vocab, dtype=dtype,
                      head_dim=head_dim)


def _hf_quant_method(s: Section) -> str:
    """`quantization_config.quant_method` of a config.json, or "" (absent or not a mapping)."""
    config = s.raw("quantization_config", None)
    method = config.get("quant_method", "") if isinstance(config, dict) else ""
    return method if isinstance(method, str) else ""
