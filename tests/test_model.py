"""ModelSpec, presets, memory per device and strict loading of model descriptions."""
from __future__ import annotations

import json

import pytest

from simulator.errors import ConfigError
from simulator.model import (PRESETS, ModelSpec, check_fits, check_tp_degree, load_model,
                             memory_per_device, split_layers, valid_tp_degrees)

GIB = 2 ** 30


@pytest.mark.parametrize("name, params", [
    ("llama-2-7b", 6.74e9), ("llama-2-13b", 13.0e9), ("llama-2-70b", 68.98e9),
    ("llama-3-8b", 8.03e9), ("llama-3-70b", 70.6e9), ("opt-30b", 30e9), ("opt-66b", 66e9),
    ("glm-130b", 130e9),
    # published sizes of the Hugging Face releases
    ("llama-3.1-8b", 8.0e9), ("llama-3.1-70b", 70.6e9), ("llama-3.3-70b", 70.6e9),
    ("llama-3.1-405b", 405e9), ("qwen2.5-7b", 7.6e9), ("qwen2.5-72b", 72.7e9), ("mistral-7b", 7.2e9),
])
def test_preset_parameter_counts(name, params):
    assert PRESETS[name].total_params() == pytest.approx(params, rel=0.02)


NEW_PRESETS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.3-70b", "llama-3.1-405b", "qwen2.5-7b",
               "qwen2.5-72b", "mistral-7b")


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_new_presets_load_and_split_by_the_tp_degrees_that_divide_their_heads(name):
    m = load_model(name)
    assert m is PRESETS[name] and m.name == name and m.dtype == "bf16" and m.gated_mlp
    assert m.head_dim == 128 == m.hidden // m.heads          # no explicit head_dim needed
    ok = valid_tp_degrees(m)
    for tp in (1, 2, 4, 8, 16):
        if m.heads % tp == 0 and m.ffn % tp == 0:
            assert tp in ok
            check_tp_degree(m, tp, "x.yaml", "strategies[0].tp")
    assert 1 in ok and 2 in ok and 4 in ok
    with pytest.raises(ConfigError, match="does not divide heads"):
        check_tp_degree(m, 3, "x.yaml", "strategies[0].tp")


def test_new_preset_shapes():
    assert PRESETS["qwen2.5-7b"].kv_size == 4 * 128 and 8 not in valid_tp_degrees(PRESETS["qwen2.5-7b"])
    assert 8 in valid_tp_degrees(PRESETS["qwen2.5-72b"]) and 8 in valid_tp_degrees(PRESETS["llama-3.1-405b"])
    assert PRESETS["llama-3.1-70b"] == PRESETS["llama-3-70b"].__class__(
        "llama-3.1-70b", *[getattr(PRESETS["llama-3-70b"], f) for f in
                          ("layers", "hidden", "heads", "kv_heads", "ffn", "gated_mlp", "vocab", "dtype")])
    # Mistral-7B-v0.3 (vocab 32768): 7.25e9 with untied embeddings
    assert PRESETS["mistral-7b"].total_params() == 32 * (4096 * (4096 + 2 * 1024) + 4096 * 4096
                                                         + 3 * 4096 * 14336 + 2 * 4096) + 2 * 32768 * 4096


def test_llama_2_7b_exact_count():
    # Hugging Face counts 6,738,415,616 parameters, including the final norm (4096) left out here.
    assert PRESETS["llama-2-7b"].total_params() == 6_738_415_616 - 4096


def test_head_dim_and_sizes():
    m = PRESETS["llama-2-70b"]
    assert m.head_dim == 128 and isinstance(m.head_dim, int)
    assert (m.q_size, m.kv_size) == (8192, 1024)
    assert PRESETS["glm-130b"].head_dim == 128
    custom = ModelSpec("x", 2, 1024, 8, 8, 4096, True, 100, head_dim=64)
    assert custom.head_dim == 64 and custom.q_size == 512


def test_dtype_bytes():
    assert [ModelSpec("x", 1, 64, 4, 4, 128, False, 10, d).dtype_bytes
            for d in ("fp32", "fp16", "bf16", "fp8")] == [4, 2, 2, 1]


def test_kv_bytes_per_token_gqa():
    assert PRESETS["llama-2-70b"].kv_cache_bytes_per_token() == 2 * 80 * 8 * 128 * 2 == 327680
    assert PRESETS["llama-2-7b"].kv_cache_bytes_per_token() == 2 * 32 * 4096 * 2


def test_weight_bytes_and_with_layers():
    m = PRESETS["llama-2-7b"]
    assert m.weight_bytes() == 2 * m.total_params()
    small = m.with_layers(2)
    assert small.layers == 2 and small.hidden == m.hidden and m.layers == 32


def test_validate_rejects_bad_shapes():
    with pytest.raises(ValueError, match="kv_heads"):
        ModelSpec("x", 2, 1024, 8, 3, 4096, True, 100)
    with pytest.raises(ValueError, match="layers"):
        ModelSpec("x", 0, 1024, 8, 8, 4096, True, 100)
    with pytest.raises(ValueError, match="head_dim"):
        ModelSpec("x", 1, 100, 3, 3, 400, True, 10)


def test_tp_halves_per_layer_weights():
    m = PRESETS["llama-2-7b"]
    one = memory_per_device(m, tp=1, pp=1, batch=0, context_tokens=0)
    two = memory_per_device(m, tp=2, pp=1, batch=0, context_tokens=0)
    assert one.weights_bytes == m.weight_bytes()
    assert two.weights_bytes == pytest.approx(one.weights_bytes / 2, rel=1e-4)
    assert two.weights_bytes > one.weights_bytes / 2  # norms are replicated


def test_pp_puts_ceil_layers_on_fullest_stage():
    m = PRESETS["llama-2-70b"]
    assert split_layers(80, 3) == (27, 27, 26)
    fp = memory_per_device(m, tp=1, pp=3, batch=0, context_tokens=0)
    per_layer = m.weight_params_per_layer() * 2
    embed = m.vocab * m.hidden * 2
    assert fp.weights_bytes == pytest.approx(27 * per_layer + embed)


def test_pp1_holds_embedding_and_head():
    m = PRESETS["opt-30b"]
    fp = memory_per_device(m, tp=1, pp=1, batch=0, context_tokens=0)
    assert fp.weights_bytes == m.weight_bytes()
    assert fp.total_bytes == fp.weights_bytes


def test_kv_cache_split_and_replication():
    m = PRESETS["llama-2-70b"]
    one = memory_per_device(m, 1, 1, batch=4, context_tokens=1000)
    assert one.kv_cache_bytes == 4 * 1000 * m.kv_cache_bytes_per_token()
    assert memory_per_device(m, 8, 1, 4, 1000).kv_cache_bytes == one.kv_cache_bytes / 8
    # 8 kv heads on tp=16: each device keeps one head, same as tp=8.
    assert memory_per_device(m, 16, 1, 4, 1000).kv_cache_bytes == one.kv_cache_bytes / 8
    assert memory_per_device(m, 1, 2, 4, 1000).kv_cache_bytes == one.kv_cache_bytes / 2


def test_activation_formula():
    m = PRESETS["llama-2-7b"]
    assert memory_per_device(m, 2, 1, 3, 100).activation_bytes == 3 * 100 * 11008 / 2 * 2 * 2
    assert memory_per_device(m, 4, 1, 3, 100).activation_bytes == 3 * 100 * 4096 * 2 * 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_load_each_preset(name):
    assert load_model(name) is PRESETS[name]
    assert load_model({"preset": name}) == PRESETS[name]


def test_preset_override():
    m = load_model({"preset": "glm-130b", "layers": 4})
    assert m.layers == 4 and m.hidden == 12288 and m.gated_mlp and m.name == "glm-130b"
    m = load_model({"preset": "llama-2-7b", "hidden": 2048, "dtype": "fp8"})
    assert m.head_dim == 64 and m.dtype_bytes == 1


def test_explicit_mapping():
    data = {"name": "tiny", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 512,
            "gated_mlp": True, "vocab": 1000, "dtype": "bf16", "head_dim": 64}
    m = load_model(data)
    assert m == ModelSpec("tiny", 2, 256, 4, 2, 512, True, 1000, "bf16", 64)


def _write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_hf_llama_config(tmp_path):
    path = _write(tmp_path, {
        "_name_or_path": "meta-llama/Llama-2-70b-hf", "model_type": "llama", "hidden_act": "silu",
        "num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64,
        "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
        "torch_dtype": "float16", "rms_norm_eps": 1e-5})
    m = load_model(path)
    assert m == ModelSpec("meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, True, 32000, "fp16")
    assert load_model(str(tmp_path)) == m  # the folder works too


def test_hf_opt_and_gpt2_configs(tmp_path):
    opt = load_model(_write(tmp_path, {
        "model_type": "opt", "num_hidden_layers": 48, "hidden_size": 7168, "num_attention_heads": 56,
        "ffn_dim": 28672, "vocab_size": 50272, "torch_dtype": "float16"}, "opt.json"))
    assert opt.gated_mlp is False
    assert (opt.layers, opt.ffn, opt.kv_heads, opt.head_dim) == (48, 28672, 56, 128)
    gpt2 = load_model(_write(tmp_path, {"model_type": "gpt2", "n_layer": 12, "n_embd": 768,
                                        "n_head": 12, "n_inner": None, "vocab_size": 50257},
                             "gpt2.json"))
    assert (gpt2.ffn, gpt2.gated_mlp, gpt2.dtype) == (3072, False, "fp16")


def _error(spec, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_model(spec, **kw)
    return info.value


def test_unknown_preset_lists_presets():
    err = _error("llama-9-1b", where="exp.yaml", key="model")
    assert err.where == "exp.yaml" and err.key == "model" and "llama-2-70b" in str(err)
    err = _error({"preset": "nope"}, where="exp.yaml", key="model")
    assert err.key == "model.preset" and "glm-130b" in str(err)


def test_unknown_key_wrong_type_missing_field():
    err = _error({"preset": "glm-130b", "layer": 4})
    assert err.key == "layer" and "layers" in str(err)
    err = _error({"preset": "glm-130b", "layers": "four"})
    assert err.key == "layers" and "integer" in str(err)
    err = _error({"preset": "glm-130b", "gated_mlp": 1})
    assert err.key == "gated_mlp"
    err = _error({"name": "t", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4,
                  "gated_mlp": True, "vocab": 10})
    assert err.key == "ffn" and "missing" in str(err)
    err = _error({"preset": "glm-130b", "dtype": "int4"})
    assert err.key == "dtype" and "bf16" in str(err)
    err = _error({"preset": "llama-2-7b", "kv_heads": 5})
    assert "kv_heads" in str(err)
    assert _error(["glm-130b"]).key == "(top level)"


def test_bad_json_paths(tmp_path):
    err = _error(str(tmp_path / "missing.json"), where="exp.yaml", key="model")
    assert err.key == "model" and "missing.json" in str(err)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in str(_error(str(bad)))
    err = _error(_write(tmp_path, {"model_type": "llama", "num_hidden_layers": 2}, "part.json"))
    assert err.where.endswith("part.json") and err.key == "hidden_size"
    err = _error(_write(tmp_path, {"num_hidden_layers": 2, "hidden_size": 64,
                                   "num_attention_heads": 4, "intermediate_size": 128,
                                   "vocab_size": 10, "torch_dtype": "int8"}, "dt.json"))
    assert err.key == "torch_dtype"
    assert _error(_write(tmp_path, [1, 2], "list.json")).key == "(top level)"


def test_tp_degree():
    m = PRESETS["llama-2-70b"]
    check_tp_degree(m, 8, "exp.yaml", "strategy.tp")
    check_tp_degree(m, 16, "exp.yaml", "strategy.tp")  # kv heads replicated
    with pytest.raises(ConfigError) as info:
        check_tp_degree(m, 3, "exp.yaml", "strategy.tp")
    assert info.value.key == "strategy.tp" and "1, 2, 4, 8, 16, 32, 64" in str(info.value)
    assert valid_tp_degrees(PRESETS["opt-30b"]) == [1, 2, 4, 7, 8, 14, 28, 56]


def test_check_fits():
    m = PRESETS["llama-2-70b"]
    fp = check_fits(m, 80 * GIB, 8, 1, 1, 2048, "exp.yaml", "hardware")
    assert fp.total_bytes < 80 * GIB
    with pytest.raises(ConfigError) as info:
        check_fits(m, 80 * GIB, 1, 1, 1, 2048, "exp.yaml", "hardware")
    msg = str(info.value)
    assert info.value.key == "hardware"
    assert "llama-2-70b needs" in msg and "tp=1, pp=1" in msg and "80.0 GiB" in msg
    assert "tp=2, pp=1 would fit" in msg
    with pytest.raises(ConfigError) as info:
        check_fits(m, 80 * GIB, 1, 100, 1, 2048, "exp.yaml", "strategy")
    assert info.value.key == "strategy" and "pp" in str(info.value)


# ------------------------------------------------------------- activations follow the step's tokens

def test_activation_term_follows_the_step_not_the_context():
    """A decode-heavy batch: 64 sequences of 512 prompt and 16,000 generated tokens on 8 x H100
    with Llama-3-70B. Its activations are those of the largest step (the 64 prompts at once), not
    of every token of every context: the old term (64 x 16,512 tokens) refused it."""
    model = PRESETS["llama-3-70b"]
    memory = 79.64 * 2**30
    old = memory_per_device(model, 8, 1, 64, 16512)
    new = memory_per_device(model, 8, 1, 64, 16512, step_tokens=64 * 512)
    assert new.kv_cache_bytes == old.kv_cache_bytes and new.weights_bytes == old.weights_bytes
    assert new.activation_bytes == pytest.approx(old.activation_bytes * 512 / 16512)
    assert old.total_bytes > memory > new.total_bytes
    with pytest.raises(ConfigError, match="activations .* GiB for a 1056768-token step"):
        check_fits(model, memory, 8, 1, 64, 16512, "exp.yaml", "model")
    check_fits(model, memory, 8, 1, 64, 16512, "exp.yaml", "model", step_tokens=64 * 512)


def test_experiment_memory_check_uses_the_longest_prompt(tmp_path):
    import yaml
    from simulator.experiment import load_experiment
    from simulator.runner import build
    data = {"name": "t", "model": "llama-3-70b", "hardware": "h100-sxm5-80gb", "devices": 8,
            "strategies": ["tp", {"name": "liger", "label": "liger"}],
            "workload": {"requests": 2, "batch": 64, "arrival": {"kind": "all_at_once"},
                         "prompt_tokens": 512, "output_tokens": 16000}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(data))
    tp, liger = load_experiment(str(path))
    assert build(tp).model.name == "llama-3-70b"           # refused before: 95 GiB with the old term
    # liger keeps two requests' KV caches (its window) and two steps in flight: it does not fit
    from simulator.errors import PointError
    with pytest.raises(PointError, match="for a 65536-token step"):
        build(liger)
