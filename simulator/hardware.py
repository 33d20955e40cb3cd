"""Hardware profiles: one machine (GPU model + its interconnect), read from YAML, frozen.

A profile YAML gives every number as ``{value: X, source: "KIND: where it comes from"}`` where KIND
is one of ``datasheet``, ``measured``, ``fitted`` or ``assumed`` (DESIGN §3). The loader refuses a
number without a source. Units are in the key names (``_us``, ``_gb_per_s``, ``_tflops``, ``_gib``)
and are converted to SI here, once.

A collective group size gives one protocol regime, ``{alpha_us, busbw_gb_per_s}``, or several,
``regimes: [{alpha_us, busbw_gb_per_s}, ...]``; the cost model takes the fastest regime at each size.

An optional ``measured_tables:`` maps an op family (see `cost_tables.FAMILIES`) to
``{csv: PATH, source: "measured: ..."}``, PATH relative to the profile's folder; the cost model then
interpolates those measured times and falls back to the roofline outside them (DESIGN §3); an
``aiconfigurator:`` entry names AIConfigurator's database instead (loaded when a run builds). An
optional ``execution: {graphs: ...}`` holds the numbers of ``execution: graphs``. The records
themselves live in `hwspec.py`.

Built-in profiles live in the ``hwprofiles`` package; a path to a YAML file works wherever a name does.
"""
from __future__ import annotations

import hashlib
import math
import os
from importlib import resources
from types import MappingProxyType
from typing import Mapping

from .cost_tables import FAMILIES, load_table_csv, source_problem
from .errors import ConfigError
from .hwspec import (CONTENTION_MODELS, DTYPES, EXECUTIONS, OP_CLASSES,  # noqa: F401
                     SOURCE_KINDS, TOPOLOGIES, ContentionSpec, DeviceSpec, GraphsSpec, HardwareProfile, InterconnectSpec,
                     LinkParams, Regime)
from .safe_yaml import parse_yaml, read_yaml_file
from .schema import Section

# ---------------------------------------------------------------------------------------- loading

class _Reader:
    """Reads sourced numbers, collecting their provenance."""

    def __init__(self, where: str):
        self.where = where
        self.sources: dict[str, str] = {}

    def number(self, sec: Section, name: str, *, integer: bool = False, min=0.0, max=None,
               min_open: bool = True) -> float:
        node = sec.section(name)
        value = node.get("value", int if integer else float, min=min, max=max, min_open=min_open)
        source = node.get("source", str)
        if source_problem(source):
            raise node.error("source", source_problem(source))
        node.done()
        self.sources[node.path] = source
        return value


def _regimes(r: _Reader, entry: Section) -> list[Regime]:
    """``regimes: [{alpha_us, busbw_gb_per_s}, ...]`` of one collective group size. Every regime must
    be the fastest somewhere: one that is no faster than another at any size (alpha as large or
    larger and bandwidth as small or smaller) never applies, and is taken for a slip."""
    items = entry.raw("regimes")
    key = entry.key("regimes")
    if not isinstance(items, list) or not items:
        raise ConfigError(entry.where, key, "must be a non-empty list of {alpha_us, busbw_gb_per_s}"
                          f" mappings, got {items!r}")
    out = []
    for i, item in enumerate(items):
        sec = Section(item, entry.where, f"{key}[{i}]")
        out.append(Regime(r.number(sec, "alpha_us", min_open=False) * 1e-6,
                          r.number(sec, "busbw_gb_per_s") * 1e9))
        sec.done()
    for i, a in enumerate(out):
        for j, b in enumerate(out):
            if i != j and a.alpha_s >= b.alpha_s and a.bandwidth_bytes_per_s <= b.bandwidth_bytes_per_s:
                raise ConfigError(entry.where, f"{key}[{i}]",
                                  f"never applies: regimes[{j}] has no larger alpha_us and no smaller "
                                  "busbw_gb_per_s, so it is as fast or faster at every size")
    return out


def _tables(r: _Reader, top: Section, base_dir: str) -> tuple:
    """``measured_tables: {FAMILY: {csv: PATH, source: "KIND: ..."}}``, PATH relative to `base_dir`
    (the profile's folder), and optionally ``aiconfigurator: {system, framework, version,
    families}`` (AIConfigurator's database, loaded when a run builds). YAML errors name the profile
    and key, CSV errors the CSV and row. Returns (family -> table, database spec or None)."""
    if not top.has("measured_tables"):
        return MappingProxyType({}), None
    sec = top.section("measured_tables")
    tables, database = {}, None
    if sec.has("aiconfigurator"):
        from .aiconfigurator import parse_spec
        database = parse_spec(sec.section("aiconfigurator"))
    for family in [f for f in sec.data if f != "aiconfigurator"]:
        if family not in FAMILIES:
            raise sec.error(family, "unknown op family; allowed: " + ", ".join(FAMILIES)
                            + ", or aiconfigurator")
        entry = sec.section(family)
        csv_path = entry.get("csv", str)
        source = entry.get("source", str)
        if source_problem(source):
            raise entry.error("source", source_problem(source))
        entry.done()
        path = csv_path if os.path.isabs(csv_path) else os.path.join(base_dir, csv_path)
        if not os.path.isfile(path):
            raise entry.error("csv", f"no such file {path!r} (a relative path is read from the "
                              "profile's folder)")
        tables[family] = load_table_csv(path, family, source)
        r.sources[entry.path] = source
    sec.done()
    return MappingProxyType(tables), database


def _collectives(r: _Reader, coll: Section) -> dict:
    """``{GROUP_SIZE: {alpha_us, busbw_gb_per_s} or {regimes: [...]}, ...}`` -> size -> LinkParams."""
    collectives = {}
    for size_key in list(coll.data):
        try:
            size = int(size_key)
        except ValueError:
            raise coll.error(size_key, "group sizes must be integers >= 2") from None
        if size < 2:
            raise coll.error(size_key, "group sizes must be integers >= 2")
        entry = coll.section(size_key)
        if entry.has("regimes"):
            collectives[size] = LinkParams.of_regimes(_regimes(r, entry))
        else:
            collectives[size] = LinkParams(
                alpha_s=r.number(entry, "alpha_us", min_open=False) * 1e-6,
                bandwidth_bytes_per_s=r.number(entry, "busbw_gb_per_s") * 1e9)
        entry.done()
    coll.done()
    if not collectives:
        raise coll.error("2", "at least one group size is required")
    return collectives


def _graphs(r: _Reader, top: Section) -> GraphsSpec | None:
    """``execution: {graphs: {launch_overhead_us, kernel_overhead_us, collectives}}``, optional."""
    if not top.has("execution"):
        return None
    ex = top.section("execution")
    g = ex.section("graphs")
    spec = GraphsSpec(r.number(g, "launch_overhead_us", min_open=False) * 1e-6,
                      r.number(g, "kernel_overhead_us", min_open=False) * 1e-6,
                      MappingProxyType(_collectives(r, g.section("collectives"))))
    g.done()
    ex.done()
    return spec


def _optional_us(r: _Reader, sec: Section, key: str) -> float:
    """An optional ``KEY_us: {value, source}`` (>= 0) in seconds; 0 where the profile has none."""
    return r.number(sec, key, min_open=False) * 1e-6 if sec.has(key) else 0.0


def _reaction_us(r: _Reader, sec: Section, key: str, spreads: dict, name: str) -> float:
    """An optional ``KEY_us`` whose value is a time (>= 0) or a list of times to draw from
    (jitter.py; at least two, each >= 0): its mean in seconds, the list in `spreads[name]`."""
    if not sec.has(key):
        return 0.0
    value = _number_list(r, sec, key, "times (us)", positive=False)
    if value is None:
        return r.number(sec, key, min_open=False) * 1e-6
    spreads[name] = tuple(v * 1e-6 for v in value)
    return sum(spreads[name]) / len(value)


def _number_list(r: _Reader, sec: Section, key: str, what: str, positive: bool):
    """``KEY: {value: [numbers...], source}`` as a list of floats (at least two, finite, > 0 or
    >= 0), its source noted; None where the value is not a list (the caller reads a number)."""
    node = sec.section(key)
    value = node.raw("value")
    if not isinstance(value, list):
        return None
    if len(value) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and math.isfinite(v) and (v > 0 if positive else v >= 0)
                                 for v in value):
        raise node.error("value", f"a list of {what} must hold at least two finite numbers "
                         f"{'> 0' if positive else '>= 0'}, got {value!r}")
    source = node.get("source", str)
    if source_problem(source):
        raise node.error("source", source_problem(source))
    node.done()
    r.sources[node.path] = source
    return [float(v) for v in value]


def _jitter(r: _Reader, dev: Section) -> Mapping[str, object]:
    """``device.jitter: {FAMILY: {value, source}}`` (jitter.py), optional: a value is a
    coefficient of variation (a number >= 0) or a list of at least two op time / mean ratios
    (numbers > 0; scaled here so that their mean is 1)."""
    if not dev.has("jitter"):
        return MappingProxyType({})
    sec = dev.section("jitter")
    out: dict = {}
    for family in list(sec.data):
        if family not in FAMILIES:
            raise sec.error(family, "unknown op family; allowed: " + ", ".join(FAMILIES))
        value = _number_list(r, sec, family, "jitter ratios", positive=True)
        if value is None:
            out[family] = r.number(sec, family, min_open=False)
        else:
            mean = sum(value) / len(value)
            out[family] = tuple(v / mean for v in value)
    sec.done()
    return MappingProxyType(out)


def _factor(r: _Reader, con: Section, model: str) -> ContentionSpec:
    """``contention: {model: factor | none, slowdown, low_priority_share}``."""
    slow = con.section("slowdown")
    slowdown = {}
    for a in OP_CLASSES:
        for b in OP_CLASSES:
            if a == b:
                continue
            key = f"{a}_by_{b}"
            slowdown[(a, b)] = r.number(slow, key, min=1.0, min_open=False) if slow.has(key) else 1.0
    slow.done()
    share = r.number(con, "low_priority_share", max=1.0)
    if share >= 1.0:
        raise con.section("low_priority_share").error(
            "value", f"must be < 1, got {share}: a higher-priority op beside a lower-priority one "
            "of its class would get none of the resource")
    con.done()
    return ContentionSpec(model, MappingProxyType(slowdown), share)


def _cores(r: _Reader, con: Section) -> ContentionSpec:
    """``contention: {model: cores, cores, threads_per_op}``: devices that share a CPU's cores
    (contention.CoreContention); the factor model's keys mean nothing there and are refused."""
    for key in ("slowdown", "low_priority_share"):
        if con.has(key):
            raise con.error(key, "is not used by model cores (every running op shares the "
                            "machine's cores); remove it, or use model factor")
    cores = r.number(con, "cores")
    threads = r.number(con, "threads_per_op") if con.has("threads_per_op") else 1.0
    con.done()
    return ContentionSpec("cores", MappingProxyType({}), 0.0, cores, threads)


def _parse(data, where: str, base_dir: str = ".") -> HardwareProfile:
    top = Section(data, where)
    r = _Reader(where)
    name = top.get("name", str)
    description = top.get("description", str, "")
    max_devices = int(r.number(top, "max_devices", integer=True, min=1, min_open=False))

    spreads: dict = {}                     # reaction -> times to draw from (jitter.py)
    dev = top.section("device")
    peak = dev.section("peak_tflops")
    peak_flops = {}
    for dtype in list(peak.data):
        if dtype not in DTYPES:
            raise peak.error(dtype, "unknown dtype; allowed: " + ", ".join(DTYPES))
        peak_flops[dtype] = r.number(peak, dtype) * 1e12
    peak.done()
    if "fp16" not in peak_flops:
        raise peak.error("fp16", "is required but missing")
    device = DeviceSpec(
        name=dev.get("name", str),
        sms=int(r.number(dev, "sms", integer=True, min=1, min_open=False)),
        peak_flops=MappingProxyType(peak_flops),
        memory_bytes=r.number(dev, "memory_gib") * 2**30,
        memory_bandwidth_bytes_per_s=r.number(dev, "memory_bandwidth_gb_per_s") * 1e9,
        gemm_efficiency=r.number(dev, "gemm_efficiency", max=1.0),
        attention_efficiency=r.number(dev, "attention_efficiency", max=1.0),
        memory_efficiency=r.number(dev, "memory_efficiency", max=1.0),
        kernel_overhead_s=r.number(dev, "kernel_overhead_us", min_open=False) * 1e-6,
        attention_memory_efficiency=(r.number(dev, "attention_memory_efficiency", max=1.0)
                                     if dev.has("attention_memory_efficiency") else None),
        attention_floor_s=_optional_us(r, dev, "attention_floor_us"),
        attention_block_s=_optional_us(r, dev, "attention_block_us"),
        fp8_gemm_efficiency=(r.number(dev, "fp8_gemm_efficiency", max=1.0)
                             if dev.has("fp8_gemm_efficiency") else None),
        fp8_quantize_s=_optional_us(r, dev, "fp8_quantize_us"),
        event_wait_s=_reaction_us(r, dev, "event_wait_us", spreads, "event_wait"),
        dispatch_s=_reaction_us(r, dev, "dispatch_us", spreads, "dispatch"),
        idle_wakeup_s=_optional_us(r, dev, "idle_wakeup_us"),
        record_s=_optional_us(r, dev, "record_us"),
        comm_lag_s=_reaction_us(r, dev, "comm_lag_us", spreads, "comm_lag"),
        jitter=_jitter(r, dev),
    )
    dev.done()

    host = top.section("host")
    launch = r.number(host, "launch_overhead_us", min_open=False) * 1e-6
    wakeup = _reaction_us(r, host, "wakeup_us", spreads, "wakeup")
    callback = _optional_us(r, host, "callback_us")
    host.done()

    ic = top.section("interconnect")
    topology = ic.get("topology", str, choices=TOPOLOGIES)
    collectives = _collectives(r, ic.section("collectives"))
    p2p_sec = ic.section("p2p")
    p2p = LinkParams(alpha_s=r.number(p2p_sec, "alpha_us", min_open=False) * 1e-6,
                     bandwidth_bytes_per_s=r.number(p2p_sec, "bandwidth_gb_per_s") * 1e9)
    p2p_sec.done()
    shared = ic.get("shared_link", bool, False)
    ic.done()
    interconnect = InterconnectSpec(topology, MappingProxyType(dict(sorted(collectives.items()))),
                                    p2p, shared)

    con = top.section("contention")
    model = con.get("model", str, "factor", choices=CONTENTION_MODELS)
    contention = _cores(r, con) if model == "cores" else _factor(r, con, model)
    tables, database = _tables(r, top, base_dir)
    graphs = _graphs(r, top)
    top.done()
    return HardwareProfile(name, description, max_devices, device, launch, interconnect, contention,
                           MappingProxyType(r.sources), where, tables, graphs, database=database,
                           wakeup_s=wakeup, callback_s=callback,
                           spreads=MappingProxyType(spreads))


def builtin_names() -> list[str]:
    root = resources.files("hwprofiles")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_hardware(name_or_path: str, where: str = "hardware", key: str = "") -> HardwareProfile:
    """A built-in profile by name, or a user's YAML by path. `where` and `key` name what asked for
    it (the experiment file and its `hardware` key, or the command line); an unknown name, or a
    profile file that is missing or unreadable as a whole, is reported there, and a bad key inside
    the profile names the profile file and that key."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(where, key, f"hardware must be a profile name or a YAML path, got {name_or_path!r}")
    if os.path.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = name_or_path
        try:
            data = read_yaml_file(path, "hardware profile file")
        except ConfigError as exc:
            if exc.key or not key:
                raise
            raise ConfigError(where, key, f"{path}: {exc.message}") from None
        base_dir = os.path.dirname(os.path.abspath(path))
    else:
        if name_or_path not in builtin_names():
            raise ConfigError(where, key, f"unknown hardware profile {name_or_path!r}; built-in: "
                              + ", ".join(builtin_names()) + " (or give a path to a YAML file)")
        path = f"hwprofiles/{name_or_path}.yaml"
        data = parse_yaml(resources.files("hwprofiles").joinpath(f"{name_or_path}.yaml").read_bytes(),
                          path)
        base_dir = str(resources.files("hwprofiles"))
    return _load_cached(path, data, base_dir)


_CACHE: dict[str, HardwareProfile] = {}


def _load_cached(path: str, data, base_dir: str) -> HardwareProfile:
    key = path + repr(data) + repr(_table_stamps(data, base_dir))
    if key not in _CACHE:
        _CACHE[key] = _parse(data, path, base_dir)
    return _CACHE[key]


def _table_stamps(data, base_dir: str) -> list:
    """(path, content hash) of each measured-table CSV the profile names, so that an edited CSV
    is read again; malformed entries are left for `_parse` to report."""
    stamps = []
    tables = data.get("measured_tables") if isinstance(data, dict) else None
    for entry in (tables.values() if isinstance(tables, dict) else ()):
        csv_path = entry.get("csv") if isinstance(entry, dict) else None
        if isinstance(csv_path, str):
            path = os.path.join(base_dir, csv_path)
            try:
                with open(path, "rb") as fh:
                    stamps.append((path, hashlib.sha256(fh.read()).hexdigest()))
            except OSError:
                stamps.append((path, None))
    return stamps
