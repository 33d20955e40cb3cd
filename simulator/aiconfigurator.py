"""Measured tables from AIConfigurator's database (the optional `aiconfigurator-core` package).

AIConfigurator (NVIDIA, Apache-2.0) ships kernel times measured under TensorRT-LLM, vLLM and SGLang
on A100, H100, H200, B200 and more: GEMMs, context (prefill) and generation (decode) attention,
NCCL collectives and the engines' custom all-reduce. This module reads those Parquet tables and
turns them into parasim's measured tables (cost_tables.py), one per op family, so the cost model
interpolates measured times and falls back to its roofline outside them.

What the database's columns mean (checked against the data: GEMM and attention times against their
flops and bytes, collective times against nccl-tests bus bandwidths): `latency` is milliseconds per
kernel; collective `message_size` is elements (`half`/`bfloat16`: 2 bytes each); generation
attention `step` is the tokens already decoded, so a decode step reads ``isl + step`` keys; context
attention is causal self-attention over `isl` tokens; `num_heads` and `num_key_value_heads` are the
heads on one GPU.

Rows taken: 16-bit GEMMs (bfloat16, float16) and per-tensor FP8 (``fp8``); attention with a 16-bit
KV cache, no sliding window, beam 1; where several kernels measured one shape, the fastest (the one
an engine would pick). Collectives: NCCL all-reduce, all-gather, reduce-scatter and all-to-all at
16 bits for ``execution: eager``; for ``execution: graphs`` the engine's custom all-reduce captured
in a CUDA graph, with NCCL above the largest size the custom kernel was measured at.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Mapping

from .cost_tables import MeasuredTable
from .errors import ConfigError

PACKAGE = "aiconfigurator_core"
INSTALL_HINT = "pip install -e '.[aiconfigurator]'"
FRAMEWORKS = ("vllm", "sglang", "trtllm")
EXECUTIONS = ("eager", "graphs")
FAMILIES = ("gemm", "attention", "all_reduce", "all_gather", "reduce_scatter", "all_to_all")
_GEMM_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}
_ATTN_DTYPES = {"bfloat16": "bf16", "float16": "fp16"}
_COMM_DTYPES = {"half": 2, "bfloat16": 2, "float16": 2}
_COMM_OPS = {"all_reduce": "all_reduce", "all_gather": "all_gather",
             "reduce_scatter": "reduce_scatter", "alltoall": "all_to_all"}


@dataclass(frozen=True)
class DatabaseRef:
    """One slice of the database: a system (``h100_sxm``), a framework and its version."""
    system: str
    framework: str
    version: str | None = None        # None: the newest version the database holds per family


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def data_root(where: str = "aiconfigurator", key: str = "") -> str:
    """The package's systems/data folder; a ConfigError saying how to install it if it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(where, key, f"needs the optional package aiconfigurator-core; install it "
                          f"with {INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "systems", "data")


def package_version() -> str:
    from importlib.metadata import version
    return version("aiconfigurator-core")


def systems(where: str = "aiconfigurator") -> list[str]:
    """Systems with measured data (folders holding at least one Parquet table)."""
    root = data_root(where)
    return sorted(d for d in os.listdir(root)
                  if glob.glob(os.path.join(root, d, "*", "*", "*", "*.parquet")))


def _version_key(version: str) -> tuple:
    """Sortable form of '0.5.6.post2', '1.3.0rc20', '2.27.3' (a release sorts after its rcs)."""
    nums = [int(x) for x in re.findall(r"\d+", version.split("rc")[0].split("post")[0])]
    rc = re.search(r"rc(\d+)", version)
    post = re.search(r"post(\d+)", version)
    return (nums, 0 if rc else 1, int(rc.group(1)) if rc else 0, int(post.group(1)) if post else 0)


def _folder(ref: DatabaseRef, family: str, framework: str, file: str, where: str,
            key: str) -> str | None:
    """Path of `file` for (system, family folder, framework, version); None if the system has no
    such table; a ConfigError for an unknown system or a version the database lacks."""
    root = data_root(where, key)
    if ref.system not in systems(where):
        raise ConfigError(where, key, f"unknown AIConfigurator system {ref.system!r}; with data: "
                          + ", ".join(systems(where)))
    base = os.path.join(root, ref.system, family, framework)
    versions = sorted((v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, file)))
                      if os.path.isdir(base) else [], key=_version_key)
    if not versions:
        return None
    if ref.version is None or framework != ref.framework:
        return os.path.join(base, versions[-1], file)
    if ref.version not in versions:
        raise ConfigError(where, key, f"{ref.system} has no {ref.framework} {ref.version} {family} "
                          f"table; versions: {', '.join(versions)}")
    return os.path.join(base, ref.version, file)


def _rel(path: str) -> str:
    """A table's path inside the database (``h100_sxm/gemm/vllm/0.24.0/gemm_perf.parquet``)."""
    return path.split(os.sep + "data" + os.sep, 1)[-1]


def _source(path: str) -> str:
    return (f"measured: AIConfigurator database (aiconfigurator-core {package_version()}, "
            f"Apache-2.0), {_rel(path)}")


def _read(path: str):
    import pandas as pd
    return pd.read_parquet(path)


def _fastest(frame, keys: list[str]):
    """One row per shape: the fastest kernel measured for it."""
    return frame.groupby(keys, as_index=False)["latency"].min()


def gemm_table(ref: DatabaseRef, where: str = "aiconfigurator", key: str = "") -> MeasuredTable | None:
    path = _folder(ref, "gemm", ref.framework, "gemm_perf.parquet", where, key)
    if path is None:
        return None
    df = _read(path)
    df = df[df["gemm_dtype"].isin(list(_GEMM_DTYPES))]
    df = _fastest(df, ["m", "n", "k", "gemm_dtype"])
    rows = [{"m": m, "n": n, "k": k, "dtype": _GEMM_DTYPES[d], "seconds": lat * 1e-3}
            for m, n, k, d, lat in df.itertuples(index=False)]
    return MeasuredTable.from_rows("gemm", rows, _source(path), where=path, path=path)


def attention_frames(ref: DatabaseRef, where: str = "aiconfigurator", key: str = ""):
    """(context frame, generation frame, their paths) with the kept rows (16-bit KV cache, no
    window, beam 1, the fastest kernel per shape) and a `kv_len` column; frames may be None."""
    out = []
    for phase in ("context", "generation"):
        path = _folder(ref, "attention", ref.framework, f"{phase}_attention_perf.parquet", where, key)
        if path is None:
            out.append((None, None))
            continue
        df = _read(path)
        for column, default in (("window_size", 0), ("beam_width", 1), ("step", 0)):
            if column not in df:                 # older tables lack the column: its default
                df[column] = default
        df = df[df["attn_dtype"].isin(list(_ATTN_DTYPES)) & (df["kv_cache_dtype"] == df["attn_dtype"])
                & (df["window_size"] == 0) & (df["beam_width"] == 1)]
        df = _fastest(df, ["batch_size", "isl", "step", "num_heads", "num_key_value_heads",
                           "head_dim", "attn_dtype"])
        df["kv_len"] = df["isl"] + df["step"] if phase == "generation" else df["isl"]
        df["q_len"] = 1 if phase == "generation" else df["isl"]
        out.append((df, path))
    return out


def attention_table(ref: DatabaseRef, where: str = "aiconfigurator",
                    key: str = "") -> MeasuredTable | None:
    rows, paths = [], []
    for df, path in attention_frames(ref, where, key):
        if df is None:
            continue
        paths.append(path)
        for r in df.itertuples(index=False):
            rows.append({"batch": r.batch_size, "q_len": r.q_len, "kv_len": r.kv_len,
                         "heads": r.num_heads, "kv_heads": r.num_key_value_heads,
                         "head_dim": r.head_dim, "causal": True,
                         "dtype": _ATTN_DTYPES[r.attn_dtype], "seconds": r.latency * 1e-3})
    if not rows:
        return None
    source = _source(paths[0]) + "".join(", " + _rel(p) for p in paths[1:])
    return MeasuredTable.from_rows("attention", rows, source, where=paths[0], path=paths[0])


def nccl_frame(ref: DatabaseRef, where: str = "aiconfigurator", key: str = ""):
    """The NCCL table at 16 bits with a `bytes` column, and its path (None, None if absent)."""
    path = _folder(ref, "comm", "nccl", "nccl_perf.parquet", where, key)
    if path is None:
        return None, None
    df = _read(path)
    df = df[df["nccl_dtype"].isin(list(_COMM_DTYPES)) & df["op_name"].isin(list(_COMM_OPS))].copy()
    df["bytes"] = df["message_size"] * df["nccl_dtype"].map(_COMM_DTYPES)
    df["family"] = df["op_name"].map(_COMM_OPS)
    return _fastest(df, ["family", "num_gpus", "bytes"]), path


def custom_allreduce_frame(ref: DatabaseRef, where: str = "aiconfigurator", key: str = ""):
    """The engine's custom all-reduce captured in CUDA graphs (backend names with 'graph'), 16 bits,
    with a `bytes` column, and its path (None, None if absent)."""
    path = _folder(ref, "comm", ref.framework, "custom_allreduce_perf.parquet", where, key)
    if path is None:
        return None, None
    df = _read(path)
    graphed = df["backend"].astype(str).str.contains("graph") if "backend" in df else True
    df = df[df["allreduce_dtype"].isin(list(_COMM_DTYPES)) & graphed].copy()
    if df.empty:
        return None, None
    df["bytes"] = df["message_size"] * df["allreduce_dtype"].map(_COMM_DTYPES)
    return _fastest(df, ["num_gpus", "bytes"]), path


def comm_tables(ref: DatabaseRef, execution: str = "eager", where: str = "aiconfigurator",
                key: str = "") -> dict:
    nccl, path = nccl_frame(ref, where, key)
    tables = {}
    if nccl is not None:
        for family, part in nccl.groupby("family"):
            rows = [{"devices": n, "bytes": b, "seconds": lat * 1e-3}
                    for _, n, b, lat in part.itertuples(index=False)]
            tables[family] = MeasuredTable.from_rows(family, rows, _source(path), where=path, path=path)
    if execution == "graphs":
        custom, cpath = custom_allreduce_frame(ref, where, key)
        if custom is not None:
            rows = [{"devices": n, "bytes": b, "seconds": lat * 1e-3}
                    for n, b, lat in custom.itertuples(index=False)]
            source = _source(cpath)
            if nccl is not None:            # NCCL above the custom kernel's largest measured size
                top = custom.groupby("num_gpus")["bytes"].max()
                ar = nccl[nccl["family"] == "all_reduce"]
                for _, n, b, lat in ar.itertuples(index=False):
                    if n in top.index and b > top[n]:
                        rows.append({"devices": n, "bytes": b, "seconds": lat * 1e-3})
                source += f"; NCCL above its largest size: {_rel(path)}"
            tables["all_reduce"] = MeasuredTable.from_rows("all_reduce", rows, source, where=cpath,
                                                           path=cpath)
    return tables


def database_tables(ref: DatabaseRef, execution: str = "eager",
                    families: tuple = FAMILIES, where: str = "aiconfigurator",
                    key: str = "") -> Mapping[str, MeasuredTable]:
    """Op family -> measured table for `ref`, for the families asked and present in the database."""
    if ref.framework not in FRAMEWORKS:
        raise ConfigError(where, key, f"unknown framework {ref.framework!r}; allowed: "
                          + ", ".join(FRAMEWORKS))
    if execution not in EXECUTIONS:
        raise ConfigError(where, key, f"unknown execution {execution!r}; allowed: "
                          + ", ".join(EXECUTIONS))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ConfigError(where, key, f"no AIConfigurator table for {', '.join(unknown)}; "
                          "available: " + ", ".join(FAMILIES))
    tables: dict = {}
    if "gemm" in families:
        tables["gemm"] = gemm_table(ref, where, key)
    if "attention" in families:
        tables["attention"] = attention_table(ref, where, key)
    if any(f in families for f in FAMILIES[2:]):
        comm = comm_tables(ref, execution, where, key)
        tables.update({f: t for f, t in comm.items() if f in families})
    return {f: t for f, t in tables.items() if t is not None}


# ----------------------------------------------------------------------------------- the YAML key

@dataclass(frozen=True)
class DatabaseSpec:
    """``aiconfigurator: {system, framework, version, families}`` under a `measured_tables` key."""
    ref: DatabaseRef
    families: tuple = FAMILIES


def parse_spec(section, families_default: tuple = FAMILIES) -> DatabaseSpec:
    """The `aiconfigurator` mapping of a `measured_tables` key, read through a schema `Section`."""
    system = section.get("system", str)
    framework = section.get("framework", str, "vllm", choices=FRAMEWORKS)
    version = section.get("version", (str, int, float), None)
    families = section.get("families", list, list(families_default))
    for i, family in enumerate(families):
        if family not in FAMILIES:
            raise section.error(f"families[{i}]", f"{family!r} is not a database family; "
                                "allowed: " + ", ".join(FAMILIES))
    section.done()
    return DatabaseSpec(DatabaseRef(system, framework, None if version is None else str(version)),
                        tuple(families))


_LOADED: dict = {}


def load_spec(spec: DatabaseSpec, execution: str, where: str, key: str) -> Mapping[str, MeasuredTable]:
    """The spec's tables for `execution`, loaded once per process."""
    ident = (spec, execution)
    if ident not in _LOADED:
        _LOADED[ident] = database_tables(spec.ref, execution, spec.families, where, key)
    return _LOADED[ident]
