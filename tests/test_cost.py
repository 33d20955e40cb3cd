"""Closed-form checks of the cost model (DESIGN §3, §6) and of the built-in hardware profiles.

Expected values are computed from the raw YAML numbers (units as written there), not from the
loader's converted ones, so a unit slip in the loader or the cost model fails here.
"""
from __future__ import annotations

import math
from importlib import resources

import pytest
import yaml

from simulator.cost import GEMM_TILES, PARTIAL_BYTES, CostModel, collective_factor
from simulator.errors import ConfigError
from simulator.hardware import SOURCE_KINDS, builtin_names, load_hardware
from simulator.ops import Attention, Collective, Gemm, SendRecv

PROFILES = {
    "v100-sxm2-32gb": ("nvlink_mesh", False),
    "a100-sxm4-80gb": ("nvswitch", False),
    "a100-pcie-40gb": ("pcie_p2p", True),
    "a800-sxm4-80gb": ("nvswitch", False),
    "h100-sxm5-80gb": ("nvswitch", False),
    "rtx4090": ("pcie_host", True),
    "h200-sxm-141gb": ("nvswitch", False),
    "b200-sxm-180gb": ("nvswitch", False),
    "h20-96gb": ("nvswitch", False),
    "h100-pcie-80gb": ("pcie_p2p", True),
    "h100-nvl-94gb": ("nvlink_pairs", False),
    "l40s-48gb": ("pcie_p2p", True),
    "l4-24gb": ("pcie_p2p", True),
    "mi300x-192gb": ("nvlink_mesh", False),
}
FITTED_FROM_DATABASE = ("a100-sxm4-80gb", "h100-sxm5-80gb", "h200-sxm-141gb", "b200-sxm-180gb")
DEVICE_FITTED_FROM_DATABASE = ("l40s-48gb",)
MIB = 2 ** 20


def raw(name: str) -> dict:
    return yaml.safe_load(resources.files("hwprofiles").joinpath(f"{name}.yaml").read_text("utf-8"))


def value(node) -> float:
    return float(node["value"])


def regimes(entry: dict) -> list[dict]:
    """The protocol regimes of a raw YAML collective entry (the plain form is one regime)."""
    return entry["regimes"] if "regimes" in entry else [entry]


def line(regime: dict, moved_bytes: float) -> float:
    return value(regime["alpha_us"]) * 1e-6 + moved_bytes / (value(regime["busbw_gb_per_s"]) * 1e9)


def alpha_beta(entry: dict, moved_bytes: float) -> float:
    """min over regimes of alpha + moved / busbw, from a raw YAML collective entry."""
    return min(line(r, moved_bytes) for r in regimes(entry))


def write_profile(tmp_path, data: dict, name: str = "custom.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def a100():
    return load_hardware("a100-sxm4-80gb"), raw("a100-sxm4-80gb")


# ------------------------------------------------------------------------------------ collectives

@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_on_idle_link_is_alpha_plus_ring_bytes_over_busbw(name, n):
    entry = raw(name)["interconnect"]["collectives"][n]
    nbytes = 48 * MIB
    expected = alpha_beta(entry, 2 * (n - 1) / n * nbytes)
    cost = CostModel(load_hardware(name)).cost(Collective("all_reduce", nbytes, tuple(range(n))))
    assert cost.seconds == pytest.approx(expected, rel=1e-12)
    assert cost.op_class == "comm" and cost.bytes == pytest.approx(2 * (n - 1) / n * nbytes)


@pytest.mark.parametrize("kind", ["all_gather", "reduce_scatter"])
def test_all_gather_and_reduce_scatter_move_n_minus_1_over_n(a100, kind):
    hw, data = a100
    n, nbytes = 8, 16 * MIB
    entry = data["interconnect"]["collectives"][n]
    expected = alpha_beta(entry, (n - 1) / n * nbytes)
    got = CostModel(hw).seconds(Collective(kind, nbytes, tuple(range(n))))
    assert got == pytest.approx(expected, rel=1e-12)


def test_all_reduce_costs_twice_the_transfer_of_all_gather(a100):
    hw, _ = a100
    cm, group, nbytes = CostModel(hw), (0, 1, 2, 3), 64 * MIB
    # 64 MiB is far above the crossover: both use the large-message (highest-bandwidth) regime
    large = hw.interconnect.collective_params(4)
    assert large.bandwidth_bytes_per_s == max(r.bandwidth_bytes_per_s for r in large.regimes)
    ar = cm.seconds(Collective("all_reduce", nbytes, group)) - large.alpha_s
    ag = cm.seconds(Collective("all_gather", nbytes, group)) - large.alpha_s
    assert ar == pytest.approx(2 * ag, rel=1e-12)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_send_recv_is_alpha_plus_bytes_over_bandwidth(name):
    p2p = raw(name)["interconnect"]["p2p"]
    nbytes = 12 * MIB
    expected = value(p2p["alpha_us"]) * 1e-6 + nbytes / (value(p2p["bandwidth_gb_per_s"]) * 1e9)
    cost = CostModel(load_hardware(name)).cost(SendRecv(nbytes, 0, 1))
    assert cost.seconds == pytest.approx(expected, rel=1e-12)
    assert cost.bound == "bandwidth"


def test_tiny_send_recv_is_latency_bound(a100):
    hw, _ = a100
    cost = CostModel(hw).cost(SendRecv(64, 0, 1))
    assert cost.bound == "latency" and cost.seconds == pytest.approx(hw.interconnect.p2p.alpha_s, rel=1e-3)


@pytest.mark.parametrize("kind", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"])
def test_collective_of_one_device_costs_nothing(a100, kind):
    hw, _ = a100
    assert collective_factor(kind, 1) == 0.0
    assert CostModel(hw).seconds(Collective(kind, 64 * MIB, (3,))) == 0.0


def test_group_sizes_between_entries_use_the_next_larger_entry(a100, tmp_path):
    _, data = a100
    table = data["interconnect"]["collectives"]
    data = dict(data, interconnect=dict(data["interconnect"], collectives={2: table[2], 8: table[8]}))
    cm, nbytes = CostModel(load_hardware(write_profile(tmp_path, data, "two-entries.yaml"))), 8 * MIB

    def predicted(n):
        return cm.seconds(Collective("all_reduce", nbytes, tuple(range(n))))

    for n in (3, 4, 5, 7):     # between 2 and 8: the 8 entry
        assert predicted(n) == pytest.approx(alpha_beta(table[8], 2 * (n - 1) / n * nbytes))
    assert predicted(2) == pytest.approx(alpha_beta(table[2], nbytes))
    # beyond the table: the largest entry
    assert predicted(16) == pytest.approx(alpha_beta(table[8], 2 * 15 / 16 * nbytes))


def test_built_in_table_lookup_uses_next_larger_entry(a100):
    hw, _ = a100
    ic = hw.interconnect
    assert ic.collective_params(3) == ic.collectives[4]
    assert ic.collective_params(5) == ic.collectives[8]
    assert ic.collective_params(2) == ic.collectives[2]


# ------------------------------------------------------------------------ protocol regimes of collectives

def _two_regime_profile(tmp_path, small=(5.0, 40.0), large=(50.0, 200.0), name="regimes.yaml"):
    """The A100 profile with n = 4 given two regimes: (alpha_us, busbw_gb_per_s) each."""
    data = raw("a100-sxm4-80gb")
    src = "assumed: a test regime"
    entry = {"regimes": [{"alpha_us": {"value": a, "source": src}, "busbw_gb_per_s": {"value": b, "source": src}}
                         for a, b in (small, large)]}
    table = {**data["interconnect"]["collectives"], 4: entry}
    data = dict(data, interconnect=dict(data["interconnect"], collectives=table))
    return load_hardware(write_profile(tmp_path, data, name))


def test_collective_time_is_the_minimum_over_regimes(tmp_path):
    hw = _two_regime_profile(tmp_path)
    cm, group, f = CostModel(hw), (0, 1, 2, 3), 1.5       # ring all-reduce factor at n = 4
    p = hw.interconnect.collective_params(4)
    assert len(p.regimes) == 2
    # the single-regime view is the large-message (highest-bandwidth) regime
    assert p.alpha_s == pytest.approx(50e-6) and p.bandwidth_bytes_per_s == pytest.approx(200e9)
    # crossover (buffer bytes): 5 us + f S / 40 GB/s = 50 us + f S / 200 GB/s
    cross = (50e-6 - 5e-6) / (1 / 40e9 - 1 / 200e9) / f
    assert cross == pytest.approx(1.5e6)      # 45 us / (1/40 - 1/200 ns/B) = 2.25 MB moved
    small = cm.cost(Collective("all_reduce", 64 * 1024, group))
    assert small.seconds == pytest.approx(5e-6 + f * 64 * 1024 / 40e9, rel=1e-12)
    assert small.detail.startswith("regime 0 of 2")
    big = cm.cost(Collective("all_reduce", 64 * MIB, group))
    assert big.seconds == pytest.approx(50e-6 + f * 64 * MIB / 200e9, rel=1e-12)
    assert big.detail.startswith("regime 1 of 2") and big.bound == "bandwidth"
    # continuous at the crossover: both regimes give the same time there, and no jump either side
    at = 5e-6 + f * cross / 40e9
    assert at == pytest.approx(50e-6 + f * cross / 200e9, rel=1e-12)
    for s in (cross * (1 - 1e-9), cross, cross * (1 + 1e-9)):
        assert cm.seconds(Collective("all_reduce", s, group)) == pytest.approx(at, rel=1e-8)
    # below the crossover the small regime is the faster, above it the large one
    assert cm.cost(Collective("all_reduce", cross * 0.9, group)).detail.startswith("regime 0")
    assert cm.cost(Collective("all_reduce", cross * 1.1, group)).detail.startswith("regime 1")


@pytest.mark.parametrize("name", ["a100-sxm4-80gb", "h100-sxm5-80gb"])
def test_fitted_regimes_small_messages_use_small_alpha_large_use_high_bandwidth(name):
    hw = load_hardware(name)
    cm = CostModel(hw)
    for n in (2, 8):
        p = hw.interconnect.collective_params(n)
        lo, hi = sorted(p.regimes, key=lambda r: r.bandwidth_bytes_per_s)
        assert lo.alpha_s < hi.alpha_s and lo.bandwidth_bytes_per_s < hi.bandwidth_bytes_per_s
        group, f = tuple(range(n)), 2 * (n - 1) / n
        tiny = cm.seconds(Collective("all_reduce", 16 * 1024, group))
        assert tiny == pytest.approx(lo.alpha_s + f * 16 * 1024 / lo.bandwidth_bytes_per_s, rel=1e-12)
        huge = cm.seconds(Collective("all_reduce", 1024 * MIB, group))
        assert huge == pytest.approx(hi.alpha_s + f * 1024 * MIB / hi.bandwidth_bytes_per_s, rel=1e-12)


def _with_entry(tmp_path, entry, name="bad.yaml") -> str:
    data = raw("a100-sxm4-80gb")
    table = {**data["interconnect"]["collectives"], 4: entry}
    return write_profile(tmp_path, dict(data, interconnect=dict(data["interconnect"], collectives=table)), name)


SRC = "assumed: a test regime"
GOOD = {"alpha_us": {"value": 5.0, "source": SRC}, "busbw_gb_per_s": {"value": 40.0, "source": SRC}}
FAST = {"alpha_us": {"value": 50.0, "source": SRC}, "busbw_gb_per_s": {"value": 200.0, "source": SRC}}


@pytest.mark.parametrize("entry, key, words", [
    ({"regimes": []}, "interconnect.collectives.4.regimes", "non-empty list"),
    ({"regimes": GOOD}, "interconnect.collectives.4.regimes", "non-empty list"),
    ({"regimes": [GOOD, 7]}, "interconnect.collectives.4.regimes[1]", "mapping"),
    ({"regimes": [GOOD, {"alpha_us": {"value": 50.0, "source": SRC}}]},
     "interconnect.collectives.4.regimes[1].busbw_gb_per_s", "missing"),
    ({"regimes": [GOOD, dict(FAST, alpha_us=50.0)]}, "interconnect.collectives.4.regimes[1].alpha_us", "mapping"),
    ({"regimes": [GOOD, dict(FAST, alpha_us={"value": -1.0, "source": SRC})]},
     "interconnect.collectives.4.regimes[1].alpha_us.value", ">= 0"),
    ({"regimes": [GOOD, dict(FAST, alpha_us={"value": 50.0, "source": "a guess"})]},
     "interconnect.collectives.4.regimes[1].alpha_us.source", "KIND"),
    ({"regimes": [GOOD, dict(FAST, latency_us={"value": 1.0, "source": SRC})]},
     "interconnect.collectives.4.regimes[1].latency_us", "unknown key"),
    # a regime no faster than another at any size never applies: taken for a slip
    ({"regimes": [GOOD, dict(FAST, busbw_gb_per_s={"value": 30.0, "source": SRC})]},
     "interconnect.collectives.4.regimes[1]", "never applies"),
    ({"regimes": [GOOD, FAST], **GOOD}, "interconnect.collectives.4.alpha_us", "unknown key"),
])
def test_malformed_regimes_are_config_errors_naming_the_key(tmp_path, entry, key, words):
    path = _with_entry(tmp_path, entry)
    with pytest.raises(ConfigError) as info:
        load_hardware(path)
    assert info.value.key == key, info.value.line()
    assert words in info.value.message and path in info.value.line()


def test_regime_sources_are_recorded_per_regime(tmp_path):
    hw = load_hardware(_with_entry(tmp_path, {"regimes": [GOOD, FAST]}, "ok.yaml"))
    for i in (0, 1):
        for key in ("alpha_us", "busbw_gb_per_s"):
            assert hw.sources[f"interconnect.collectives.4.regimes[{i}].{key}"] == SRC


# ------------------------------------------------------------------------------------------ compute

def test_large_gemm_takes_flops_over_peak_times_efficiency(a100):
    hw, data = a100
    dev = data["device"]
    op = Gemm(8192, 8192, 8192)
    ideal = op.flops / (value(dev["peak_tflops"]["fp16"]) * 1e12 * value(dev["gemm_efficiency"]))
    cost = CostModel(hw).cost(op)
    assert cost.bound == "compute" and cost.op_class == "compute"
    busy = cost.seconds - value(dev["kernel_overhead_us"]) * 1e-6
    # 128x256 tiles: 2048 blocks on 108 SMs run in 19 waves, 2052 block slots: 0.2% quantisation
    assert ideal <= busy <= ideal * 1.01


def test_split_k_fills_the_machine_for_a_few_block_gemm_with_long_k(a100):
    """m=16, n=1024, k=8192 on A100's 108 SMs (TP decode: few output tiles, long k).

    Without split-K the best tile is 64x64 (efficiency 0.70): 16 blocks, one wave of 108 slots, each
    block 8192 deep: 108 * 2*64*64*8192 / (peak * eff * 0.70) = 41.8 us of main loop, far above the
    11.4 us of weight streaming. With s = 4, 64 blocks of k = 2048 still fit one wave: a quarter of
    the main loop, 10.4 us, now below the memory time, so the GEMM streams its weights at the memory
    rate and pays the reduction, 2 * m*n*s * 4 bytes. s = 8 and 16 shorten the main loop further
    but it is already hidden, and their reductions cost more."""
    hw, data = a100
    dev = data["device"]
    rate = value(dev["peak_tflops"]["fp16"]) * 1e12 * value(dev["gemm_efficiency"])
    mem_rate = value(dev["memory_bandwidth_gb_per_s"]) * 1e9 * value(dev["memory_efficiency"])
    overhead = value(dev["kernel_overhead_us"]) * 1e-6
    sms = value(dev["sms"])
    assert sms == 108 and dict(((tm, tn), e) for tm, tn, e in GEMM_TILES)[(64, 64)] == 0.70
    op = Gemm(16, 1024, 8192)
    memory = op.bytes / mem_rate
    unsplit_main = sms * 2 * 64 * 64 * 8192 / (rate * 0.70)
    split4_main = sms * 2 * 64 * 64 * 2048 / (rate * 0.70)
    reduce4 = 2 * 16 * 1024 * 4 * PARTIAL_BYTES / mem_rate
    assert split4_main < memory < unsplit_main
    cm = CostModel(hw)
    plan = cm.gemm_plan(op)
    assert (plan.tile_m, plan.tile_n, plan.split_k) == (64, 64, 4)
    assert plan.main_s == pytest.approx(split4_main, rel=1e-12)
    assert plan.reduce_s == pytest.approx(reduce4, rel=1e-12)
    cost = cm.cost(op)
    assert cost.seconds == pytest.approx(memory + reduce4 + overhead, rel=1e-12)
    assert cost.bound == "memory" and cost.detail == "tile 64x64, split-k 4"
    # without split-K (the plan with s = 1) it would be compute-bound and about 3x slower
    unsplit = [p for p in cm.gemm_plans(op) if p.split_k == 1][0]
    assert unsplit.main_s == pytest.approx(unsplit_main, rel=1e-12) and unsplit.reduce_s == 0.0
    assert cost.seconds < (unsplit_main + overhead) / 2.5


def test_split_k_keeps_slices_at_least_128_deep(a100):
    hw, _ = a100
    cm = CostModel(hw)
    assert [p.split_k for p in cm.gemm_plans(Gemm(16, 1024, 256))] == [1, 2]
    assert [p.split_k for p in cm.gemm_plans(Gemm(16, 1024, 255))] == [1]
    assert [p.split_k for p in cm.gemm_plans(Gemm(16, 1024, 8192))] == [1, 2, 4, 8, 16]


def test_split_k_is_not_used_when_the_grid_fills_the_machine(a100):
    hw, _ = a100
    cm = CostModel(hw)
    assert cm.gemm_plan(Gemm(8192, 8192, 8192)).split_k == 1
    assert cm.gemm_plan(Gemm(4096, 28672, 8192)).split_k == 1


def test_dtype_a_profile_does_not_list_is_an_error():
    v100 = load_hardware("v100-sxm2-32gb")
    assert "bf16" not in v100.device.peak_flops and "fp16" in v100.device.peak_flops
    cm = CostModel(v100)
    for op in (Gemm(128, 128, 128, dtype="bf16"),
               Attention(batch=1, q_len=128, kv_len=128, heads=8, kv_heads=8, head_dim=128, dtype="bf16")):
        with pytest.raises(ValueError, match=r"v100-sxm2-32gb.*does not support dtype 'bf16'.*fp16"):
            cm.cost(op)
    # a listed dtype works: A100 lists bf16 at the fp16 rate
    a100 = load_hardware("a100-sxm4-80gb")
    assert a100.device.peak_flops["bf16"] == a100.device.peak_flops["fp16"]
    assert CostModel(a100).seconds(Gemm(128, 128, 128, dtype="bf16")) > 0


def test_gemm_wave_quantisation_makes_one_extra_block_cost_a_wave(a100):
    hw, _ = a100
    cm, sms = CostModel(hw), hw.device.sms
    # m = 128 rows, n = 256 per block: `sms` blocks fill one wave exactly with the largest tile
    full = cm.gemm_compute_seconds(Gemm(128, 256 * sms, 8192))
    over = cm.gemm_compute_seconds(Gemm(128, 256 * sms + 64, 8192))
    assert over > full * 1.05


@pytest.mark.parametrize("name", ["a100-sxm4-80gb", "h100-sxm5-80gb", "rtx4090"])
def test_tiny_m_gemm_is_memory_bound(name):
    data = raw(name)["device"]
    op = Gemm(1, 8192, 8192)
    nbytes = (1 * 8192 + 8192 * 8192 + 1 * 8192) * 2
    expected = (nbytes / (value(data["memory_bandwidth_gb_per_s"]) * 1e9 * value(data["memory_efficiency"]))
                + value(data["kernel_overhead_us"]) * 1e-6)
    cost = CostModel(load_hardware(name)).cost(op)
    assert cost.bound == "memory" and cost.op_class == "memory"
    assert cost.bytes == nbytes
    assert cost.seconds == pytest.approx(expected, rel=1e-12)


def test_decode_attention_is_memory_bound(a100):
    hw, data = a100
    dev = data["device"]
    op = Attention(batch=16, q_len=1, kv_len=4096, heads=32, kv_heads=8, head_dim=128)
    nbytes = 16 * (2 * 1 * 32 * 128 + 2 * 4096 * 8 * 128) * 2
    expected = (nbytes / (value(dev["memory_bandwidth_gb_per_s"]) * 1e9
                          * value(dev["attention_memory_efficiency"]))
                + (value(dev["kernel_overhead_us"]) + value(dev["attention_floor_us"])) * 1e-6)
    cost = CostModel(hw).cost(op)
    assert cost.bound == "memory"
    assert cost.seconds == pytest.approx(expected, rel=1e-12)


def test_attention_floors_follow_blocks(a100):
    """Decode: one thread block per sequence and KV head, each wave of them at least
    attention_block_us, so a batch of short decodes costs waves * block time above the floor."""
    hw, data = a100
    dev = data["device"]
    sms = value(dev["sms"])
    cm = CostModel(hw)
    fixed = (value(dev["kernel_overhead_us"]) + value(dev["attention_floor_us"])) * 1e-6
    one = cm.cost(Attention(batch=1, q_len=1, kv_len=2, heads=8, kv_heads=8, head_dim=128))
    assert one.seconds == pytest.approx(fixed + value(dev["attention_block_us"]) * 1e-6, rel=1e-3)
    waves = 5
    many = cm.cost(Attention(batch=waves * sms // 8, q_len=1, kv_len=2, heads=8, kv_heads=8,
                             head_dim=128))
    assert (many.bound, many.op_class) == ("latency", "memory")   # idle blocks, not tensor cores
    assert many.seconds == pytest.approx(fixed + waves * value(dev["attention_block_us"]) * 1e-6,
                                         rel=1e-3)
    # a profile without the floors keeps the plain roofline
    import dataclasses
    bare = dataclasses.replace(hw, device=dataclasses.replace(
        hw.device, attention_floor_s=0.0, attention_block_s=0.0, attention_memory_efficiency=None))
    assert CostModel(bare).seconds(Attention(1, 1, 2, 8, 8, 128)) < one.seconds / 3


def test_causal_prefill_attention_costs_about_half_of_non_causal(a100):
    """The math halves; the fixed parts (kernel overhead, attention floor, one block time per wave of
    the same 32 x 32 query tiles) do not."""
    hw, _ = a100
    dev = hw.device
    waves = -(-32 * 32 // dev.sms)
    cm = CostModel(hw)
    overhead = dev.kernel_overhead_s + dev.attention_floor_s + waves * dev.attention_block_s
    shape = dict(batch=1, q_len=4096, kv_len=4096, heads=32, kv_heads=8, head_dim=128)
    causal = cm.cost(Attention(**shape))
    full = cm.cost(Attention(**shape, causal=False))
    assert causal.bound == full.bound == "compute"
    assert causal.flops / full.flops == pytest.approx(4097 / 8192)
    assert (causal.seconds - overhead) / (full.seconds - overhead) == pytest.approx(0.5, abs=0.01)


def test_prefill_attention_with_prefix_counts_all_prefix_keys(a100):
    op = Attention(batch=1, q_len=1024, kv_len=3072, heads=8, kv_heads=8, head_dim=128)
    assert op.pairs == 1024 * 2048 + 1024 * 1025 / 2


# ------------------------------------------------------------------------------------------ profiles

def test_all_profiles_are_built_in():
    assert set(PROFILES) <= set(builtin_names())
    assert len(builtin_names()) >= 14


def _numeric_leaves_unsourced(node, path=""):
    """Dotted paths of numbers in a raw profile that are not the value of a {value, source} mapping,
    and of {value, source} mappings whose source is not 'KIND: where' with a known KIND."""
    if isinstance(node, dict):
        if "value" in node:
            source = node.get("source")
            kind, sep, where = source.partition(":") if isinstance(source, str) else ("", "", "")
            if not (sep and kind in SOURCE_KINDS and where.strip()):
                yield path
            for key, child in node.items():
                if key not in ("value", "source"):
                    yield from _numeric_leaves_unsourced(child, f"{path}.{key}")
            return
        for key, child in node.items():
            yield from _numeric_leaves_unsourced(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _numeric_leaves_unsourced(child, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path


@pytest.mark.parametrize("name", builtin_names())
def test_every_number_of_every_builtin_profile_names_its_source(name):
    data = raw(name)
    assert list(_numeric_leaves_unsourced(data)) == []
    leaves = dict(_sourced_leaves(data))
    assert len(leaves) >= 25
    for path, node in leaves.items():
        assert isinstance(node["value"], (int, float)) and not isinstance(node["value"], bool), path
        kind, _, where = node["source"].partition(":")
        assert kind in ("datasheet", "measured", "fitted", "assumed") and where.strip(), (path, node)
    assert load_hardware(name).name == name


def _sourced_leaves(node, path=""):
    """Dotted paths of every {value, source} mapping in a raw profile (list items as key[i])."""
    if isinstance(node, dict):
        if "value" in node:
            yield path, node
            return
        for key, child in node.items():
            yield from _sourced_leaves(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _sourced_leaves(child, f"{path}[{i}]")


def _collective_keys(sources, n: int, name: str) -> list[str]:
    """The source keys of parameter `name` of group size n: plain or per regime."""
    prefix = f"interconnect.collectives.{n}."
    return [k for k in sources if k.startswith(prefix) and k.endswith("." + name)]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_loads_and_every_number_has_a_source(name):
    hw = load_hardware(name)
    leaves = dict(_sourced_leaves(raw(name)))
    assert set(leaves) == set(hw.sources), "every sourced number is recorded, and nothing else"
    for path, source in hw.sources.items():
        kind, _, where = source.partition(":")
        assert kind in SOURCE_KINDS and len(where.strip()) > 10, (path, source)
        assert leaves[path]["source"] == source
    # every number the device, host and interconnect use is among the sourced leaves
    for key in ("max_devices", "device.sms", "device.peak_tflops.fp16", "device.memory_gib",
                "device.memory_bandwidth_gb_per_s", "device.gemm_efficiency", "device.attention_efficiency",
                "device.memory_efficiency", "device.kernel_overhead_us", "host.launch_overhead_us",
                "interconnect.p2p.alpha_us", "interconnect.p2p.bandwidth_gb_per_s",
                "contention.low_priority_share"):
        assert key in hw.sources, key
    for n in (2, 4, 8):
        regimes = len(hw.interconnect.collectives[n].regimes)
        assert len(_collective_keys(hw.sources, n, "alpha_us")) == regimes
        assert len(_collective_keys(hw.sources, n, "busbw_gb_per_s")) == regimes


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_topology_and_size(name):
    hw = load_hardware(name)
    topology, shared = PROFILES[name]
    assert hw.name == name
    assert hw.interconnect.topology == topology
    assert hw.interconnect.shared_link is shared
    assert hw.max_devices == 8
    assert sorted(hw.interconnect.collectives) == [2, 4, 8]


@pytest.mark.parametrize("name", FITTED_FROM_DATABASE)
def test_database_fitted_profiles_name_the_fit(name):
    """GEMM, attention and collectives (eager and graphs) are fitted to AIConfigurator's tables;
    send/recv, which the database lacks, to Vidur's."""
    sources = load_hardware(name).sources
    collectives = [k for n in (2, 4, 8) for p in ("alpha_us", "busbw_gb_per_s")
                   for k in _collective_keys(sources, n, p)]
    graphs = [k for k in sources if k.startswith("execution.graphs.collectives.")]
    assert len(collectives) >= 6 and len(graphs) >= 6
    for key in ("device.gemm_efficiency", "device.memory_efficiency", "device.kernel_overhead_us",
                "device.attention_efficiency", "device.attention_floor_us",
                "device.attention_block_us", "device.attention_memory_efficiency",
                *collectives, *graphs):
        assert sources[key].startswith("fitted:") and "benchmarks/fit_aiconfigurator.py" in sources[key], key
    if name in ("a100-sxm4-80gb", "h100-sxm5-80gb"):
        for key in ("interconnect.p2p.alpha_us", "interconnect.p2p.bandwidth_gb_per_s"):
            assert "benchmarks/fit_vidur.py" in sources[key], key


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_fitted_numbers_name_the_script_that_reproduces_them(name):
    for key, source in load_hardware(name).sources.items():
        if source.startswith("fitted:"):
            assert ("benchmarks/fit_vidur.py" in source
                    or "benchmarks/fit_aiconfigurator.py" in source), key


@pytest.mark.parametrize("name, base, ratio", [("h20-96gb", "h100-sxm5-80gb", 1.0),
                                               ("a800-sxm4-80gb", "a100-sxm4-80gb", 2 / 3)])
def test_siblings_scale_their_base_fit_by_link_bandwidth(name, base, ratio):
    """H20 keeps the H100's NVLink4 (450 GB/s per direction); A800 has 200 of the A100's 300: every
    regime's busbw, eager and graphs, is the base fit's times the ratio (to 0.1 GB/s); alphas and
    device numbers are the base's."""
    ref, hw = load_hardware(base), load_hardware(name)
    for mine_ic, ref_ic in ((hw.interconnect.collectives, ref.interconnect.collectives),
                            (hw.graphs.collectives, ref.graphs.collectives)):
        assert sorted(mine_ic) == sorted(ref_ic) == [2, 4, 8]
        for n in (2, 4, 8):
            for mine, r in zip(mine_ic[n].regimes, ref_ic[n].regimes, strict=True):
                assert mine.bandwidth_bytes_per_s == pytest.approx(ratio * r.bandwidth_bytes_per_s,
                                                                   abs=0.051e9)
                assert mine.alpha_s == r.alpha_s
    assert hw.interconnect.p2p.bandwidth_bytes_per_s == pytest.approx(
        ratio * ref.interconnect.p2p.bandwidth_bytes_per_s, abs=0.051e9)
    for field in ("gemm_efficiency", "memory_efficiency", "attention_efficiency", "kernel_overhead_s",
                  "attention_memory_efficiency", "attention_floor_s", "attention_block_s",
                  "fp8_gemm_efficiency", "fp8_quantize_s"):
        assert getattr(hw.device, field) == getattr(ref.device, field), field
    assert hw.graphs.launch_overhead_s == ref.graphs.launch_overhead_s


def test_pcie_and_pair_profiles_share_the_h100_pairwise_fit():
    nvl, pcie = load_hardware("h100-nvl-94gb"), load_hardware("h100-pcie-80gb")
    assert nvl.interconnect.collectives[4] == pcie.interconnect.collectives[4]
    # the bridged pair is ~4x faster than a ring that crosses PCIe Gen5
    assert nvl.interconnect.collectives[2].bandwidth_bytes_per_s > 4 * pcie.interconnect.collectives[2].bandwidth_bytes_per_s
    for name in ("l40s-48gb", "l4-24gb"):   # Gen4 P2P cards take the a100-pcie-40gb fit
        assert load_hardware(name).interconnect == load_hardware("a100-pcie-40gb").interconnect


def test_new_profiles_dtypes_and_peaks():
    fp8 = {"h200-sxm-141gb": 1979, "b200-sxm-180gb": 4500, "h20-96gb": 296, "h100-pcie-80gb": 1513,
           "h100-nvl-94gb": 1671, "l40s-48gb": 733, "l4-24gb": 242.5, "mi300x-192gb": 2614.9}
    for name, tflops in fp8.items():
        peaks = load_hardware(name).device.peak_flops
        assert peaks["fp8"] == pytest.approx(tflops * 1e12)
        assert peaks["fp16"] == peaks["bf16"] == pytest.approx(tflops / 2 * 1e12, rel=0.015), name  # L40S: 362.05 vs 733/2


def test_rtx4090_gemm_peak_is_the_fp32_accumulation_rate():
    assert load_hardware("rtx4090").device.peak_flops["fp16"] == pytest.approx(165e12)


def test_a800_compute_is_the_a100s():
    assert load_hardware("a800-sxm4-80gb").device.peak_flops == load_hardware("a100-sxm4-80gb").device.peak_flops


# nvidia-smi's total memory (MiB) of each profile's card, as its memory_gib source states it
NVIDIA_SMI_MIB = {"a100-sxm4-80gb": 81920, "a800-sxm4-80gb": 81920, "h100-sxm5-80gb": 81559,
                  "a100-pcie-40gb": 40960, "v100-sxm2-32gb": 32768, "rtx4090": 24564,
                  "h200-sxm-141gb": 143771, "b200-sxm-180gb": 183359, "h20-96gb": 97871,
                  "h100-pcie-80gb": 81559, "h100-nvl-94gb": 95830, "l40s-48gb": 46068,
                  "l4-24gb": 23034}


def test_every_nvidia_profile_has_its_nvidia_smi_total():
    assert set(NVIDIA_SMI_MIB) == set(PROFILES) - {"mi300x-192gb"}


def test_mi300x_memory_is_the_rocm_smi_total_in_gib():
    node = raw("mi300x-192gb")["device"]["memory_gib"]
    assert node["source"].startswith("measured: rocm-smi") and "205822885888 B" in node["source"]
    assert value(node) == math.floor(205822885888 / 2**30 * 100) / 100


@pytest.mark.parametrize("name", sorted(NVIDIA_SMI_MIB))
def test_memory_is_the_nvidia_smi_total_in_gib(name):
    mib = NVIDIA_SMI_MIB[name]
    node = raw(name)["device"]["memory_gib"]
    assert node["source"].startswith("measured: nvidia-smi total memory") and f"{mib} MiB" in node["source"]
    assert value(node) == math.floor(mib / 1024 * 100) / 100       # GiB, rounded down to 0.01
    assert load_hardware(name).device.memory_bytes == pytest.approx(value(node) * 2**30)


def test_bigger_collective_is_never_faster():
    for name in PROFILES:
        cm = CostModel(load_hardware(name))
        times = [cm.seconds(Collective("all_reduce", 2.0 ** e, (0, 1, 2, 3))) for e in range(10, 30)]
        assert all(b > a for a, b in zip(times, times[1:])), name
        assert math.isfinite(times[-1])


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_a_low_priority_share_that_starves_a_stream_is_refused(tmp_path, share):
    """1.0 would give a higher-priority op beside a lower-priority one no resource (a division by
    zero later), 0.0 the lower-priority op none: both are refused at load, naming the key."""
    data = raw("a100-sxm4-80gb")
    data["contention"]["low_priority_share"]["value"] = share
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_hardware(str(path))
    assert exc.value.key == "contention.low_priority_share.value"


@pytest.mark.parametrize("name", DEVICE_FITTED_FROM_DATABASE)
def test_device_numbers_fitted_to_the_database_links_not(name):
    """L40S: the card's kernels fitted to AIConfigurator's tables; its links stay the PCIe Gen4 P2P
    fit (the database's L40S NCCL table is a host-routed server, not this P2P box)."""
    hw = load_hardware(name)
    for key in ("device.gemm_efficiency", "device.attention_floor_us", "device.fp8_gemm_efficiency"):
        assert "benchmarks/fit_aiconfigurator.py" in hw.sources[key], key
    assert hw.graphs is None
    assert hw.interconnect == load_hardware("a100-pcie-40gb").interconnect
