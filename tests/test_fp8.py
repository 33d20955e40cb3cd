"""FP8 serving (docs/models.md, Precision): `model.dtype: fp8` is W8A8 (fp8 linear weights and GEMM
operands, 16-bit activations, norms, embedding and LM head), `model.kv_dtype` the KV cache's dtype;
both need a profile with an fp8 rate, and are refused in one line where it has none.

Numbers are the cost model's on the shipped H100 SXM profile (989 TFLOP/s BF16, 1979 FP8,
3.35 TB/s), worked out from the profile so that a change of formula shows here."""
from __future__ import annotations

import dataclasses

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from importlib import resources

import pytest
import yaml

from simulator.batching import ServingConfig, kv_cache_blocks
from simulator.cli import main
from simulator.cost import CostModel
from simulator.cost_tables import MeasuredTable, columns, load_table_csv
from simulator.errors import ConfigError
from simulator.experiment import load_experiment
from simulator.hardware import builtin_names, load_hardware
from simulator.jobs import build, simulate, validate_jobs
from simulator.metrics import summarize
from simulator.model import dtype_problem, load_model, memory_per_device
from simulator.ops import Attention, Collective, Elementwise, Gemm, RaggedAttention, SendRecv
from strategies.program import Step, batch_attention, head_ops, layer_ops

H100_MEASURED = load_hardware("h100-sxm5-80gb")
# The dtype semantics on their own: FP8 GEMMs at gemm_efficiency with their input quantisation
# free (fused into the producer). The shipped H100 profile adds what the engines measured
# (fp8_gemm_efficiency, fp8_quantize_us); the tests at the end of this section hold that part.
H100 = dataclasses.replace(H100_MEASURED, device=dataclasses.replace(
    H100_MEASURED.device, fp8_gemm_efficiency=None, fp8_quantize_s=0.0))
BF16 = load_model("llama-3-8b")
FP8 = load_model({"preset": "llama-3-8b", "dtype": "fp8"})
FP8_KV = load_model({"preset": "llama-3-8b", "kv_dtype": "fp8"})
FP8_ALL = load_model({"preset": "llama-3-8b", "dtype": "fp8", "kv_dtype": "fp8"})
GIB = 2 ** 30


def _memory_s(nbytes: float, hw=H100) -> float:
    dev = hw.device
    return nbytes / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)


# ----------------------------------------------------------------------------------- the model
def test_the_three_dtypes_of_a_model():
    assert (BF16.weight_dtype, BF16.activation_dtype, BF16.kv_cache_dtype) == ("bf16",) * 3
    assert (FP8.weight_dtype, FP8.activation_dtype, FP8.kv_cache_dtype) == ("fp8", "bf16", "bf16")
    assert (FP8_KV.weight_dtype, FP8_KV.activation_dtype, FP8_KV.kv_cache_dtype) == \
        ("bf16", "bf16", "fp8")
    assert (FP8_ALL.dtype_bytes, FP8_ALL.activation_dtype_bytes, FP8_ALL.kv_dtype_bytes) == (1, 2, 1)
    # an fp16 preset keeps fp16 activations and cache; kv_dtype is not frozen to the preset's
    fp16_kv8 = load_model({"preset": "llama-2-7b", "kv_dtype": "fp8"})
    assert (fp16_kv8.activation_dtype, fp16_kv8.kv_cache_dtype) == ("fp16", "fp8")
    assert load_model({"preset": "llama-2-7b", "dtype": "bf16"}).kv_cache_dtype == "bf16"
    assert load_model({"preset": "llama-2-7b", "dtype": "fp32"}).kv_dtype_bytes == 4


def test_kv_dtype_is_checked():
    with pytest.raises(ConfigError, match=r"x\.yaml: model\.kv_dtype: .*fp16, bf16, fp8"):
        load_model({"preset": "llama-3-8b", "kv_dtype": "int4"}, "x.yaml", "model")
    with pytest.raises(ValueError, match="kv_dtype 'e4m3' is not one of"):
        replace(BF16, kv_dtype="e4m3")
    explicit = load_model({"name": "m", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4,
                           "ffn": 512, "gated_mlp": True, "vocab": 100, "kv_dtype": "fp8"})
    assert (explicit.dtype, explicit.kv_cache_dtype) == ("fp16", "fp8")


def test_fp8_stores_the_linear_weights_in_one_byte_and_the_rest_in_bf16():
    linear = BF16.layers * BF16.linear_params_per_layer()
    other = BF16.total_params() - linear          # norms, embedding, LM head: 16-bit in vLLM
    assert BF16.weight_bytes() == 2 * BF16.total_params()
    assert FP8.weight_bytes() == linear + 2 * other
    assert BF16.weight_bytes() - FP8.weight_bytes() == linear            # the linear part halves
    # Llama-3-8B: 16.06 GB -> 9.08 GB (its 128k-token vocabulary keeps 2.1 GB in bf16)
    assert BF16.weight_bytes() == pytest.approx(16.0605e9, rel=1e-4)
    assert FP8.weight_bytes() == pytest.approx(9.0812e9, rel=1e-4)
    # a model whose embedding is small: close to half
    small_vocab = replace(FP8, vocab=1000)
    assert small_vocab.weight_bytes() / replace(BF16, vocab=1000).weight_bytes() == \
        pytest.approx(0.5, abs=0.001)


def test_memory_per_device_counts_each_part_in_its_dtype():
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        a = memory_per_device(BF16, tp, pp, batch=8, context_tokens=4096)
        w8 = memory_per_device(FP8, tp, pp, batch=8, context_tokens=4096)
        kv8 = memory_per_device(FP8_KV, tp, pp, batch=8, context_tokens=4096)
        assert w8.kv_cache_bytes == a.kv_cache_bytes and w8.activation_bytes == a.activation_bytes
        assert w8.weights_bytes < 0.62 * a.weights_bytes
        assert kv8.kv_cache_bytes == a.kv_cache_bytes / 2 and kv8.weights_bytes == a.weights_bytes
    assert memory_per_device(FP8, 1, 1, 0, 0).weights_bytes == pytest.approx(FP8.weight_bytes())
    # 8 sequences of 4096 tokens: 32 layers x 2 x 8 KV heads x 128 x 2 bytes = 128 KiB per token
    assert BF16.kv_cache_bytes_per_token() == 131072 and FP8_KV.kv_cache_bytes_per_token() == 65536
    assert memory_per_device(BF16, 1, 1, 8, 4096).kv_cache_bytes == 8 * 4096 * 131072


def test_kv_fp8_halves_a_block_and_raises_the_block_count():
    cfg = ServingConfig(scheduler="continuous")
    mem = H100.device.memory_bytes
    blocks, block_bytes = kv_cache_blocks(BF16, mem, 1, 1, None, cfg, 2048)
    blocks8, block_bytes8 = kv_cache_blocks(FP8_KV, mem, 1, 1, None, cfg, 2048)
    both, _ = kv_cache_blocks(FP8_ALL, mem, 1, 1, None, cfg, 2048)
    assert block_bytes == cfg.block_size * 131072 and block_bytes8 == block_bytes / 2
    assert blocks8 in (2 * blocks, 2 * blocks + 1)            # the same memory, half a block each
    left = mem - memory_per_device(FP8_ALL, 1, 1, 1, 2048).weights_bytes \
        - memory_per_device(FP8_ALL, 1, 1, 1, 2048).activation_bytes
    assert both == int(cfg.kv_cache_memory_fraction * left // block_bytes8) > blocks8


# ------------------------------------------------------------------------------------- the ops
def test_an_fp8_gemm_reads_one_byte_operands_and_writes_16_bit():
    m, n, k = 16, 4096, 1024
    assert Gemm(m, n, k, "fp8", out_dtype="bf16").bytes == m * k + k * n + 2 * m * n
    assert Gemm(m, n, k, "fp8").bytes == m * k + k * n + m * n            # out_dtype: dtype
    assert Gemm(m, n, k, "bf16").bytes == 2 * (m * k + k * n + m * n)
    assert Gemm(m, n, k, "fp8", out_dtype="bf16", count=3).bytes == 3 * (m * k + k * n + 2 * m * n)
    piece = Gemm(m, n, k, "fp8", "g", out_dtype="bf16").split_n(4, 1)
    assert (piece.n, piece.out_dtype) == (1024, "bf16")


def test_attention_reads_its_keys_and_values_in_the_kv_dtype():
    a16 = Attention(2, 1, 1000, 32, 8, 128, True, "bf16")
    a8 = Attention(2, 1, 1000, 32, 8, 128, True, "bf16", "attn", "fp8")
    q_o, k_v = 2 * 1 * 32 * 128, 2 * 1000 * 8 * 128
    assert a16.bytes == 2 * (q_o + k_v) * 2 and a8.bytes == 2 * (q_o * 2 + k_v * 1)
    assert a8.flops == a16.flops and a8 != a16 and len({a8, a16}) == 2     # hashable, distinct
    rag = RaggedAttention(2, 2, 2 * 1000.0, 2000, 2, 32, 8, 128, "bf16", "attn", "fp8")
    assert rag.bytes == a8.bytes
    assert a8.table_query()[1][-2:] == ("bf16", "fp8")
    assert a16.table_query()[1][-2:] == ("bf16", "bf16")


def test_fp8_layer_ops_gemms_in_fp8_everything_else_in_bf16():
    group = (0, 1)
    for step in (Step(4, 1, 900, "decode"), Step(1, 512, 512, "prefill")):
        ops8, ops16 = layer_ops(FP8_ALL, 2, step, group), layer_ops(BF16, 2, step, group)
        assert [o.name for o in ops8] == [o.name for o in ops16]
        for o8, o16 in zip(ops8, ops16):
            if isinstance(o8, Gemm):
                assert (o8.dtype, o8.out_dtype, o16.dtype) == ("fp8", "bf16", "bf16")
                assert o8.bytes < 0.75 * o16.bytes and o8.flops == o16.flops
            elif isinstance(o8, Attention):
                assert (o8.dtype, o8.kv_dtype, o16.kv_dtype) == ("bf16", "fp8", "bf16")
            else:           # norms, activation, all-reduces: the very same 16-bit ops
                assert o8 == o16, o8.name
        colls = [o for o in ops8 if isinstance(o, Collective)]
        assert len(colls) == 2 and all(c.bytes == step.tokens * 4096 * 2 for c in colls)
    head8 = head_ops(FP8, 2, Step(4, 1, 1, "decode"), group)
    assert head8 == head_ops(BF16, 2, Step(4, 1, 1, "decode"), group)     # LM head stays bf16
    assert [o.dtype for o in head8 if isinstance(o, Gemm)] == ["bf16"]


def test_ragged_attention_of_a_batched_step_has_the_kv_dtype():
    class Entry:        # what batch_attention reads of a scheduler entry
        def __init__(self, decode, q, ctx):
            self.decode, self.q_tokens, self.context_tokens, self.seqs = decode, q, ctx, 1
    op = batch_attention(FP8_ALL, 1, [Entry(True, 1, 300), Entry(True, 1, 700)], True, "d")
    assert (op.dtype, op.kv_dtype, op.kv_tokens) == ("bf16", "fp8", 1000)


def test_pipeline_sends_stay_16_bit():
    import strategies
    pp8 = strategies.REGISTRY["pp"](FP8, 2, strategies.REGISTRY["pp"].Params.parse({}, "t", "s"))
    pp16 = strategies.REGISTRY["pp"](BF16, 2, strategies.REGISTRY["pp"].Params.parse({}, "t", "s"))
    step = Step(2, 128, 128, "prefill")
    assert pp8.act_bytes(step) == pp16.act_bytes(step) == 2 * 128 * 4096 * 2


# -------------------------------------------------------------------------- the cost on H100
def test_decode_gemm_is_memory_bound_and_fp8_halves_its_time():
    cm = CostModel(H100)
    n, k = 2 * 14336, 4096                 # Llama-3-8B gate+up, one decode token
    g16, g8 = Gemm(1, n, k, "bf16", out_dtype="bf16"), Gemm(1, n, k, "fp8", out_dtype="bf16")
    c16, c8 = cm.cost(g16), cm.cost(g8)
    assert c16.bound == c8.bound == "memory"
    overhead = H100.device.kernel_overhead_s
    assert c16.seconds == pytest.approx(_memory_s(2 * (k + k * n + n)) + overhead)
    assert c8.seconds == pytest.approx(_memory_s(k + k * n + 2 * n) + overhead)
    assert (c8.seconds - overhead) / (c16.seconds - overhead) == pytest.approx(0.5, abs=2e-4)
    # tens of microseconds on an H100 SXM: 235 MB (bf16) against 117 MB read at ~2.8 TB/s
    assert 70e-6 < c16.seconds < 110e-6 and 35e-6 < c8.seconds < 60e-6


def test_prefill_gemm_runs_at_the_fp8_peak():
    cm = CostModel(H100)
    peaks = H100.device.peak_flops
    assert peaks["fp8"] == pytest.approx(1979e12) and peaks["bf16"] == pytest.approx(989e12)
    g16 = Gemm(2048, 2 * 14336, 4096, "bf16", out_dtype="bf16")
    g8 = Gemm(2048, 2 * 14336, 4096, "fp8", out_dtype="bf16")
    p16, p8 = cm.gemm_plan(g16), cm.gemm_plan(g8)
    assert (p16.tile_m, p16.tile_n, p16.split_k) == (p8.tile_m, p8.tile_n, p8.split_k)
    assert p8.main_s / p16.main_s == pytest.approx(989 / 1979)
    c16, c8 = cm.cost(g16), cm.cost(g8)
    assert c16.bound == c8.bound == "compute"
    # the main loop at 989 / 1979 TFLOP/s x gemm_efficiency (481 TFLOP x 2 of work)
    eff = H100.device.gemm_efficiency
    assert c16.seconds == pytest.approx(p16.main_s + H100.device.kernel_overhead_s)
    assert 2 * 2048 * 2 * 14336 * 4096 / (989e12 * eff) < c16.seconds < 1.25 * 2 * 2048 * 2 * 14336 * 4096 / (989e12 * eff)
    assert (c8.seconds - H100.device.kernel_overhead_s) / (c16.seconds - H100.device.kernel_overhead_s) \
        == pytest.approx(0.5, abs=0.01)


def test_attention_computes_at_the_16_bit_rate_and_an_fp8_cache_halves_the_decode_read():
    # the dtype semantics, without the attention floors (fixed times no dtype changes)
    cm = CostModel(dataclasses.replace(H100, device=dataclasses.replace(
        H100.device, attention_floor_s=0.0, attention_block_s=0.0, attention_memory_efficiency=None)))
    pre16 = Attention(1, 2048, 2048, 32, 8, 128, True, "bf16")
    pre8 = Attention(1, 2048, 2048, 32, 8, 128, True, "bf16", "attn", "fp8")
    assert cm.cost(pre16).bound == "compute"
    assert cm.seconds(pre8) == cm.seconds(pre16)               # compute-bound: no faster
    fp8_rate = Attention(1, 2048, 2048, 32, 8, 128, True, "fp8")
    assert cm.seconds(fp8_rate) < 0.6 * cm.seconds(pre16)      # what the naive all-fp8 op gave
    dec16 = Attention(64, 1, 8192, 32, 8, 128, True, "bf16")
    dec8 = Attention(64, 1, 8192, 32, 8, 128, True, "bf16", "attn", "fp8")
    assert cm.cost(dec16).bound == cm.cost(dec8).bound == "memory"
    overhead = H100.device.kernel_overhead_s
    assert cm.seconds(dec8) - overhead == pytest.approx(_memory_s(dec8.bytes))
    assert (cm.seconds(dec8) - overhead) / (cm.seconds(dec16) - overhead) == \
        pytest.approx(0.5, abs=0.001)


def test_collectives_and_sends_cost_the_same_under_fp8():
    cm = CostModel(H100)
    for step in (Step(8, 1, 512, "decode"), Step(1, 1024, 1024, "prefill")):
        c8 = [o for o in layer_ops(FP8_ALL, 4, step, (0, 1, 2, 3)) if isinstance(o, Collective)]
        c16 = [o for o in layer_ops(BF16, 4, step, (0, 1, 2, 3)) if isinstance(o, Collective)]
        assert [cm.seconds(o) for o in c8] == [cm.seconds(o) for o in c16]
        assert all(o.bytes == step.tokens * 4096 * 2 for o in c8)
    send = SendRecv(2 * 128 * 4096 * 2, 0, 1)
    assert cm.cost(send).bytes == 2 * 128 * 4096 * 2


def test_an_fp8_decode_layer_is_about_half_as_long():
    cm = CostModel(H100)
    step = Step(8, 1, 2048, "decode")
    t16 = sum(cm.seconds(o) for o in layer_ops(BF16, 1, step, (0,)))
    t8 = sum(cm.seconds(o) for o in layer_ops(FP8_ALL, 1, step, (0,)))
    elementwise = sum(cm.seconds(o) for o in layer_ops(BF16, 1, step, (0,))
                      if isinstance(o, Elementwise))
    assert 0.5 < t8 / t16 < 0.6                                   # norms and overheads stay
    assert t16 - t8 > 0.45 * (t16 - elementwise)


def test_an_fp8_experiment_serves_faster_than_bf16(tmp_path):
    exp = {"name": "fp8-run", "model": {"preset": "llama-3-8b", "layers": 4,
                                        "dtype": ["bf16", "fp8"]},
           "hardware": "h100-sxm5-80gb", "devices": 1, "seed": 0, "strategies": ["tp"],
           "workload": {"requests": 4, "arrival": {"kind": "poisson", "rate_rps": 2.0},
                        "prompt_tokens": 256, "output_tokens": 8}}
    path = tmp_path / "fp8.yaml"
    path.write_text(yaml.safe_dump(exp), encoding="utf-8")
    jobs = load_experiment(str(path))
    assert validate_jobs(jobs) == [None, None]
    tpot = {job.config["model"]["dtype"]: summarize(simulate(build(job)))["tpot_mean_s"]
            for job in jobs}
    # with the engines' measured FP8 path (input quantisation, lower efficiency): still faster
    assert 0.45 < tpot["fp8"] / tpot["bf16"] < 0.85


def test_measured_fp8_path_pays_its_input_quantisation():
    """The shipped H100 profile prices an FP8 GEMM as the engines run it: the dynamic quantisation
    of the 16-bit input (5 bytes per input element at memory speed, plus fp8_quantize_us) before a
    GEMM at fp8_gemm_efficiency of the fp8 peak."""
    dev = H100_MEASURED.device
    assert dev.fp8_gemm_efficiency is not None and dev.fp8_quantize_s > 0
    ideal, measured = CostModel(H100), CostModel(H100_MEASURED)
    decode = Gemm(1, 2 * 14336, 4096, "fp8", out_dtype="bf16")
    assert measured.seconds(decode) == pytest.approx(
        ideal.seconds(decode) + _memory_s(5 * 1 * 4096) + dev.fp8_quantize_s)
    assert "fp8 input quantisation" in measured.cost(decode).detail
    prefill = Gemm(2048, 2 * 14336, 4096, "fp8", out_dtype="bf16")
    main = measured.gemm_plan(prefill).main_s
    assert main == pytest.approx(ideal.gemm_plan(prefill).main_s * dev.gemm_efficiency
                                 / dev.fp8_gemm_efficiency)
    bf16 = Gemm(2048, 2 * 14336, 4096, "bf16", out_dtype="bf16")
    assert measured.seconds(bf16) == ideal.seconds(bf16)            # 16-bit GEMMs untouched
    # a memory-bound decode GEMM still gains from fp8 weights; a compute-bound one less than 2x
    assert measured.seconds(decode) < 0.7 * measured.seconds(Gemm(1, 2 * 14336, 4096, "bf16"))
    assert 0.5 < measured.seconds(prefill) / measured.seconds(bf16) < 0.95


# --------------------------------------------------------------------------------- the errors
GOOD = {"name": "t", "model": {"preset": "llama-2-7b", "layers": 2},
        "hardware": "a100-sxm4-80gb", "devices": 2, "seed": 0, "strategies": ["tp"],
        "workload": {"requests": 3, "arrival": {"kind": "poisson", "rate_rps": 5.0},
                     "prompt_tokens": 64, "output_tokens": 2}}


def _exp(tmp_path, **changes) -> str:
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if key.startswith("model_"):
            data["model"][key[6:]] = value
        else:
            data[key] = value
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def _one_line_error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


A100_LACKS = "lacks (its peak_tflops lists fp16, bf16, fp32)"


@pytest.mark.parametrize("changes,expected", [
    ({"model_dtype": "fp8"}, "model.dtype: fp8 needs FP8 tensor cores, which hardware "
     f"'a100-sxm4-80gb' {A100_LACKS}; use fp16 or bf16"),
    ({"model_kv_dtype": "fp8"}, "model.kv_dtype: fp8 needs FP8 support, which hardware "
     f"'a100-sxm4-80gb' {A100_LACKS}; leave kv_dtype out to keep the KV cache in fp16, the "
     "activation dtype"),
    ({"model_dtype": "bf16", "hardware": "v100-sxm2-32gb"}, "model.dtype: bf16 needs BF16 tensor "
     "cores, which hardware 'v100-sxm2-32gb' lacks (its peak_tflops lists fp16, fp32); use fp16"),
    ({"model": "llama-3-8b", "hardware": "v100-sxm2-32gb"}, "model: llama-3-8b's dtype bf16 needs "
     "BF16 tensor cores, which hardware 'v100-sxm2-32gb' lacks (its peak_tflops lists fp16, "
     "fp32); use fp16 (set it with {preset: llama-3-8b, dtype: ...})"),
], ids=["fp8-on-a100", "fp8-kv-on-a100", "bf16-on-v100", "bf16-preset-on-v100"])
def test_a_dtype_the_hardware_lacks_is_one_line(tmp_path, capsys, changes, expected):
    path = _exp(tmp_path, **changes)
    line = _one_line_error(["run", path, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert line == f"parasim: error: {path}: {expected}"
    assert not os.path.exists(tmp_path / "out" / "summary.csv")


def test_an_fp8_config_json_on_a100_names_the_model(tmp_path, capsys):
    hf = {"num_hidden_layers": 2, "hidden_size": 1024, "num_attention_heads": 8,
          "intermediate_size": 2048, "vocab_size": 1000, "model_type": "llama",
          "torch_dtype": "float8_e4m3fn", "_name_or_path": "tiny-fp8"}
    (tmp_path / "config.json").write_text(json.dumps(hf), encoding="utf-8")
    path = _exp(tmp_path, model="config.json")
    line = _one_line_error(["run", path, "--no-progress", "--out", str(tmp_path / "o")], capsys)
    assert f"{path}: model: tiny-fp8's dtype fp8 needs FP8 tensor cores" in line
    assert "the config.json's torch_dtype" in line


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    path = _exp(tmp_path, model_dtype="fp8")
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "run", path, "--no-progress",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"parasim: error: {path}: model.dtype: fp8 needs FP8 tensor cores, which hardware "
        f"'a100-sxm4-80gb' {A100_LACKS}; use fp16 or bf16"]


def test_a_sweep_over_hardware_runs_the_fp8_points_and_lists_the_others(tmp_path):
    path = _exp(tmp_path, model_dtype="fp8", model_kv_dtype="fp8",
                hardware=["a100-sxm4-80gb", "h100-sxm5-80gb", "v100-sxm2-32gb", "l4-24gb"])
    errors = validate_jobs(load_experiment(path))
    assert errors[1] is None and errors[3] is None
    assert errors[0].startswith("model.dtype: fp8 needs FP8 tensor cores, which hardware "
                                "'a100-sxm4-80gb' lacks")
    assert "'v100-sxm2-32gb' lacks (its peak_tflops lists fp16, fp32); use fp16" in errors[2]


FP8_PROFILES = {"h100-sxm5-80gb", "h100-pcie-80gb", "h100-nvl-94gb", "h200-sxm-141gb", "h20-96gb",
                "b200-sxm-180gb", "l40s-48gb", "l4-24gb", "rtx4090", "mi300x-192gb"}


def test_the_profiles_with_fp8_are_the_datasheets():
    """Hopper, Ada, Blackwell and CDNA 3 have FP8 tensor cores; Volta and Ampere (A100, A800)
    have none. Every fp8 rate is twice the 16-bit one (the RTX 4090's both with FP32
    accumulation: 165 and 330.3 TFLOP/s, Ada whitepaper)."""
    assert {n for n in builtin_names() if "fp8" in load_hardware(n).device.peak_flops} == \
        FP8_PROFILES
    assert load_hardware("rtx4090").device.peak_flops["fp8"] == pytest.approx(330.3e12)
    for name in FP8_PROFILES:
        peaks = load_hardware(name).device.peak_flops
        assert peaks["fp8"] / peaks["bf16"] == pytest.approx(2.0, rel=0.015), name
        assert dtype_problem(FP8_ALL, peaks, name) is None


@pytest.mark.parametrize("name", sorted(set(builtin_names()) - FP8_PROFILES))
def test_fp8_is_refused_on_every_profile_without_it(name):
    peaks = load_hardware(name).device.peak_flops
    field, message = dtype_problem(FP8, peaks, name)
    assert field == "dtype" and message.startswith(f"fp8 needs FP8 tensor cores, which hardware "
                                                   f"'{name}' lacks")
    field, message = dtype_problem(replace(BF16, dtype="fp16", kv_dtype="fp8"), peaks, name)
    assert field == "kv_dtype" and "fp8 needs FP8 support" in message


def test_a_profile_with_fp8_but_no_bf16_cannot_hold_fp8_activations(tmp_path, capsys):
    data = yaml.safe_load(resources.files("hwprofiles").joinpath("h100-sxm5-80gb.yaml")
                          .read_text("utf-8"))
    del data["device"]["peak_tflops"]["bf16"]
    data["name"] = "h100-no-bf16"
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    path = _exp(tmp_path, model_dtype="fp8", hardware="hw.yaml")
    line = _one_line_error(["run", path, "--no-progress", "--out", str(tmp_path / "o")], capsys)
    assert line.endswith("model.dtype: fp8 keeps 16-bit activations in bf16, which hardware "
                         "'h100-no-bf16' lacks (its peak_tflops lists fp16, fp32, fp8); add a "
                         "bf16 rate to the profile")


# ------------------------------------------------------------------------- Hugging Face configs
HF = {"num_hidden_layers": 2, "hidden_size": 1024, "num_attention_heads": 8,
      "num_key_value_heads": 2, "intermediate_size": 2048, "vocab_size": 1000,
      "model_type": "llama", "torch_dtype": "bfloat16"}


@pytest.mark.parametrize("extra,dtype", [
    ({"torch_dtype": "float8_e4m3fn"}, "fp8"),
    ({"torch_dtype": "float8_e5m2"}, "fp8"),
    ({"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}}, "fp8"),
    ({"quantization_config": {"quant_method": "fbgemm_fp8"}}, "fp8"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "bf16"),
    ({"quantization_config": "fp8"}, "bf16"),
    ({}, "bf16"),
])
def test_hf_config_dtypes(tmp_path, extra, dtype):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HF, **extra}), encoding="utf-8")
    m = load_model(str(path))
    assert m.dtype == dtype and m.activation_dtype == "bf16" and m.kv_cache_dtype == "bf16"
    assert m.weight_bytes() == (2 * m.linear_params_per_layer() * (1 if dtype == "fp8" else 2)
                                + (m.total_params() - 2 * m.linear_params_per_layer()) * 2)


def test_models_show_prints_the_resolved_dtypes(capsys):
    assert main(["models", "show", "llama-3-8b"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["dtype"], shown["activation_dtype"], shown["kv_dtype"]) == ("bf16",) * 3
    assert shown["kv_cache_bytes_per_token"] == 131072


# ------------------------------------------------------------------------------ measured tables
def test_a_gemm_table_row_of_dtype_fp8_matches_an_fp8_gemm():
    table = MeasuredTable.from_rows("gemm", [
        {"m": 16, "n": 4096, "k": 4096, "dtype": "fp8", "seconds": 1e-5},
        {"m": 64, "n": 4096, "k": 4096, "dtype": "fp8", "seconds": 3e-5}], "measured: test")
    cm = CostModel(H100, tables={"gemm": table})
    assert cm.seconds(Gemm(16, 4096, 4096, "fp8", out_dtype="bf16")) == 1e-5
    assert cm.seconds(Gemm(40, 4096, 4096, "fp8", out_dtype="bf16")) == pytest.approx(2e-5)
    bf16 = cm.cost(Gemm(16, 4096, 4096, "bf16"))
    assert bf16.detail.startswith("roofline: no table rows with n=4096, k=4096, dtype=bf16")


def test_an_attention_table_keys_the_kv_dtype(tmp_path):
    assert "kv_dtype" not in columns("attention")                   # optional column
    head = "batch,q_len,kv_len,heads,kv_heads,head_dim,causal,dtype"
    old = tmp_path / "old.csv"
    old.write_text(f"{head},seconds\n1,1,1024,32,8,128,true,bf16,1e-5\n", encoding="utf-8")
    new = tmp_path / "new.csv"
    new.write_text(f"{head},kv_dtype,seconds\n1,1,1024,32,8,128,true,bf16,fp8,6e-6\n"
                   "1,1,1024,32,8,128,true,bf16,,9e-6\n", encoding="utf-8")
    dec16 = Attention(1, 1, 1024, 32, 8, 128, True, "bf16")
    dec8 = Attention(1, 1, 1024, 32, 8, 128, True, "bf16", "attn", "fp8")
    cm = CostModel(H100, tables={"attention": load_table_csv(str(old), "attention", "measured: t")})
    assert cm.seconds(dec16) == 1e-5                    # no kv_dtype column: the row's dtype
    assert "kv_dtype=fp8" in cm.cost(dec8).detail and cm.cost(dec8).detail.startswith("roofline")
    cm = CostModel(H100, tables={"attention": load_table_csv(str(new), "attention", "measured: t")})
    assert cm.seconds(dec8) == 6e-6 and cm.seconds(dec16) == 9e-6      # a blank cell: dtype
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{head},kv_dtype,seconds\n1,1,1024,32,8,128,true,bf16,int4,1e-5\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.csv: row 1: kv_dtype must be one of"):
        load_table_csv(str(bad), "attention", "measured: t")


# ------------------------------------------------------------------------------------- the CLI
def _cost(args, capsys) -> dict:
    assert main(["cost", "--hardware", "h100-sxm5-80gb", "--json"] + args) == 0
    return json.loads(capsys.readouterr().out)


def test_cost_command_takes_the_output_and_kv_dtypes(capsys):
    g = _cost(["gemm", "--m", "1", "--n", "4096", "--k", "4096", "--dtype", "fp8",
               "--out-dtype", "bf16"], capsys)
    assert g["bytes"] == 4096 + 4096 * 4096 + 2 * 4096
    a = _cost(["attention", "--q-len", "1", "--kv-len", "1024", "--heads", "32", "--kv-heads",
               "8", "--dtype", "bf16", "--kv-dtype", "fp8"], capsys)
    assert a["bytes"] == 2 * 32 * 128 * 2 + 2 * 1024 * 8 * 128 * 1
    line = _one_line_error(["cost", "--hardware", "h100-sxm5-80gb", "attention", "--q-len", "1",
                            "--kv-len", "8", "--heads", "8", "--kv-heads", "8", "--kv-dtype",
                            "int4"], capsys)
    assert "--kv-dtype: 'int4' is not one of fp32, fp16, bf16, fp8" in line


# ---------------------------------------------------------------------------- the torch runtime
def test_the_torch_runtime_runs_fp8_ops_in_its_stand_in_dtype():
    torch = pytest.importorskip("torch")
    from simulator.torchrt.work import Work, torch_dtype
    work = Work("cpu")
    assert torch_dtype("fp8", "cpu") == torch.float32 and torch_dtype("fp8", "cuda") == torch.float16
    out = work.prepare(Gemm(4, 6, 5, "fp8", out_dtype="bf16"))()
    assert tuple(out.shape) == (4, 6) and bool(torch.isfinite(out).all())
    att = work.prepare(Attention(2, 3, 10, 4, 2, 16, True, "bf16", "attn", "fp8"))()
    assert tuple(att.shape) == (2, 4, 3, 16)


def test_an_fp8_model_runs_on_the_torch_runtime():
    pytest.importorskip("torch")
    from simulator.jobs import make_strategy
    from simulator.torchrt.runtime import TorchRuntime
    from simulator.workload import Request, open_loop
    tiny = load_model({"preset": "llama-3-8b", "layers": 2, "hidden": 256, "heads": 4,
                       "kv_heads": 2, "ffn": 512, "vocab": 1000, "dtype": "fp8", "kv_dtype": "fp8"})
    strategy = make_strategy({"name": "tp"}, tiny, 2, "test", "strategy")
    trace = TorchRuntime(H100, 2, stall_s=30).run(
        strategy, open_loop([Request(i, 0.002 * i, 32, 3) for i in range(2)]), None)
    assert trace.complete and len(trace.request_frame()) == 2
    assert {r.name for r in trace.rows} >= {"qkv", "attn", "ffn_up", "ar_mlp", "lm_head"}
