"""Closed-form checks of the cost model (DESIGN §3, §6) and of the built-in hardware profiles.

Expected values are computed from the raw YAML numbers (units as written there), not from the
loader's converted ones, so a unit slip in the loader or the cost model fails here.
"""
from __future__ import annotations

import math
from importlib import resources

import pytest
import yaml

from simulator.cost import CostModel, collective_factor
from simulator.hardware import SOURCE_KINDS, builtin_names, load_hardware
from simulator.ops import Attention, Collective, Gemm, SendRecv

PROFILES = {
    "v100-sxm2-32gb": ("nvlink_mesh", False),
    "a100-sxm4-80gb": ("nvswitch", False),
    "a100-pcie-40gb": ("pcie_p2p", True),
    "a800-sxm4-80gb": ("nvswitch", False),
    "h100-sxm5-80gb": ("nvswitch", False),
    "rtx4090": ("pcie_host", True),
}
FITTED_FROM_VIDUR = ("a100-sxm4-80gb", "h100-sxm5-80gb")
MIB = 2 ** 20


def raw(name: str) -> dict:
    return yaml.safe_load(resources.files("hwprofiles").joinpath(f"{name}.yaml").read_text("utf-8"))


def value(node) -> float:
    return float(node["value"])


def alpha_beta(entry: dict, moved_bytes: float) -> float:
    """alpha + moved / busbw from a raw YAML collective entry."""
    return value(entry["alpha_us"]) * 1e-6 + moved_bytes / (value(entry["busbw_gb_per_s"]) * 1e9)


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
    alpha = hw.interconnect.collective_params(4).alpha_s
    ar = cm.seconds(Collective("all_reduce", nbytes, group)) - alpha
    ag = cm.seconds(Collective("all_gather", nbytes, group)) - alpha
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
    path = tmp_path / "two-entries.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cm, nbytes = CostModel(load_hardware(str(path))), 8 * MIB

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
    expected = (nbytes / (value(dev["memory_bandwidth_gb_per_s"]) * 1e9 * value(dev["memory_efficiency"]))
                + value(dev["kernel_overhead_us"]) * 1e-6)
    cost = CostModel(hw).cost(op)
    assert cost.bound == "memory"
    assert cost.seconds == pytest.approx(expected, rel=1e-12)


def test_causal_prefill_attention_costs_about_half_of_non_causal(a100):
    hw, _ = a100
    cm, overhead = CostModel(hw), hw.device.kernel_overhead_s
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

def test_all_six_profiles_are_built_in():
    assert set(PROFILES) <= set(builtin_names())


def _sourced_leaves(node, path=""):
    """Dotted paths of every {value, source} mapping in a raw profile."""
    if isinstance(node, dict):
        if "value" in node:
            yield path, node
            return
        for key, child in node.items():
            yield from _sourced_leaves(child, f"{path}.{key}" if path else str(key))


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
        assert f"interconnect.collectives.{n}.alpha_us" in hw.sources
        assert f"interconnect.collectives.{n}.busbw_gb_per_s" in hw.sources


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_topology_and_size(name):
    hw = load_hardware(name)
    topology, shared = PROFILES[name]
    assert hw.name == name
    assert hw.interconnect.topology == topology
    assert hw.interconnect.shared_link is shared
    assert hw.max_devices == 8
    assert sorted(hw.interconnect.collectives) == [2, 4, 8]


@pytest.mark.parametrize("name", FITTED_FROM_VIDUR)
def test_vidur_fitted_profiles_name_the_fit(name):
    sources = load_hardware(name).sources
    collectives = [f"interconnect.collectives.{n}.{p}"
                   for n in (2, 4, 8) for p in ("alpha_us", "busbw_gb_per_s")]
    for key in ("device.gemm_efficiency", "device.memory_efficiency", "interconnect.p2p.alpha_us",
                "interconnect.p2p.bandwidth_gb_per_s", *collectives):
        assert sources[key].startswith("fitted:") and "benchmarks/fit_vidur.py" in sources[key], key


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_fitted_numbers_name_the_script_that_reproduces_them(name):
    for key, source in load_hardware(name).sources.items():
        if source.startswith("fitted:"):
            assert "benchmarks/fit_vidur.py" in source, key


def test_rtx4090_gemm_peak_is_the_fp32_accumulation_rate():
    assert load_hardware("rtx4090").device.peak_flops["fp16"] == pytest.approx(165e12)


def test_a800_links_are_two_thirds_of_a100():
    a100, a800 = load_hardware("a100-sxm4-80gb"), load_hardware("a800-sxm4-80gb")
    for n in (2, 4, 8):
        ratio = (a800.interconnect.collectives[n].bandwidth_bytes_per_s
                 / a100.interconnect.collectives[n].bandwidth_bytes_per_s)
        assert ratio == pytest.approx(2 / 3, abs=0.005)
    assert a800.device.peak_flops == a100.device.peak_flops


def test_bigger_collective_is_never_faster():
    for name in PROFILES:
        cm = CostModel(load_hardware(name))
        times = [cm.seconds(Collective("all_reduce", 2.0 ** e, (0, 1, 2, 3))) for e in range(10, 30)]
        assert all(b > a for a, b in zip(times, times[1:])), name
        assert math.isfinite(times[-1])
