"""From an indexed trace to measured samples, one per classified op (see `classify`)."""
from __future__ import annotations

from collections import Counter

from .classify import (DTYPES, ELEMENTWISE, GEMM_KERNELS, GEMM_WRAPPERS, Sample, attention_key,
                       comm_from_gloo, comm_from_param_args, elementwise_bytes, gemm_shape,
                       is_attention)
from .read import LAUNCH_CATS, Trace

US = 1e-6
_CLASSIFIED = set(GEMM_KERNELS) | set(GEMM_WRAPPERS) | set(ELEMENTWISE)


def _kind(e) -> str:
    """'attention', 'gemm', 'wrapper', 'elementwise' or '' for a cpu_op event."""
    if e.cat != "cpu_op":
        return ""
    if is_attention(e.name):
        return "attention"
    if e.name in GEMM_KERNELS:
        return "gemm"
    if e.name in GEMM_WRAPPERS:
        return "wrapper"
    if e.name in ELEMENTWISE:
        return "elementwise"
    return ""


def _counted(e) -> bool:
    """Whether `e` is the event its op is measured by (not inside another counted op)."""
    kind = _kind(e)
    if not kind:
        return False
    above = [_kind(a) for a in e.ancestors()]
    if "attention" in above:
        return False
    if kind == "attention":
        return True
    if kind == "gemm":
        return "gemm" not in above
    if kind == "wrapper":
        inner = {_kind(d) for d in e.descendants()}
        return not ({"gemm", "wrapper", "attention"} & inner) and not ({"gemm", "wrapper"} & set(above))
    return not ({"gemm", "wrapper", "elementwise"} & set(above))


def group_size(trace: Trace) -> int:
    """The process group size of gloo annotations: `distributedInfo`'s one group size (0 when the
    trace has several groups of different sizes, or says nothing)."""
    info = trace.meta.get("distributedInfo")
    if not isinstance(info, dict):
        return 0
    sizes = {int(pg.get("pg_size", 0)) for pg in info.get("pg_config") or [] if isinstance(pg, dict)}
    if len(sizes) == 1:
        return sizes.pop()
    if not sizes and isinstance(info.get("world_size"), int):
        return info["world_size"]
    return 0


def collect(trace: Trace, dtypes: tuple = ()) -> tuple:
    """(samples, skipped): the measured samples, and Counter reason -> ops left out."""
    samples, skipped = [], Counter()
    kernels_of = _kernels_by_launch(trace) if trace.has_gpu else None
    used_kernels: set = set()
    for e in trace.cpu:
        if e.cat == "user_annotation" and e.name.startswith("gloo:"):
            size = group_size(trace)
            got = comm_from_gloo(e, size) if size else "process group size unknown (several groups)"
            _add_comm(samples, skipped, e.name, got, e.dur * US, f"cpu:{e.pid}", f"thread {e.tid}",
                      e.ts, e.end)
            continue
        if not _counted(e):
            continue
        family = "attention" if _kind(e) == "attention" else (
            "elementwise" if _kind(e) == "elementwise" else "gemm")
        key = _key(e, family, dtypes)
        if isinstance(key, str):
            skipped[f"{e.name}: {key}"] += 1
            continue
        if kernels_of is None:
            samples.append(Sample(family, key, e.dur * US, f"cpu:{e.pid}", f"thread {e.tid}",
                                  e.ts, e.end, e.name))
            continue
        ks = [k for d in e.descendants() if d.cat in LAUNCH_CATS
              for k in kernels_of.get(d.args.get("correlation"), ())]
        if not ks:
            skipped[f"{e.name}: launched no GPU kernel (an op on CPU tensors)"] += 1
            continue
        used_kernels.update(id(k) for k in ks)
        samples.append(_gpu_sample(family, key, ks, e.name))
    if kernels_of is not None:
        _gpu_comms(trace, kernels_of, samples, skipped, used_kernels)
    return samples, skipped


def _key(e, family: str, dtypes: tuple):
    if family == "elementwise":
        got = elementwise_bytes(e)
        return got if isinstance(got, str) else (("bytes", got),)
    if family == "attention":
        key = attention_key(e)
        dtype = dict(key).get("dtype") if not isinstance(key, str) else None
    else:
        shape = gemm_shape(e)
        if isinstance(shape, str):
            return shape
        m, n, k, batch, dtype = shape
        if batch != 1:
            return f"batched GEMM (batch {batch}): the gemm table has no batch column"
        key = (("m", m), ("n", n), ("k", k), ("dtype", dtype))
    if isinstance(key, str):
        return key
    types = e.args.get("Input type") or [""]
    if not dtype:
        return f"dtype {types[1 if e.name == 'aten::addmm' else 0]!r} is none of " + \
            ", ".join(sorted(set(DTYPES.values())))
    if dtypes and dtype not in dtypes:
        return f"dtype {dtype} left out by --dtype"
    return key


def _add_comm(samples, skipped, name, got, seconds, device, lane, start, end):
    if isinstance(got, str):
        skipped[f"{name}: {got}"] += 1
        return
    family, devices, nbytes = got
    if family != "send_recv" and devices < 2:
        skipped[f"{name}: group of {devices} device (a one-device collective moves nothing)"] += 1
        return
    key = (("bytes", nbytes),) if family == "send_recv" else (("devices", devices), ("bytes", nbytes))
    samples.append(Sample(family, key, seconds, device, lane, start, end, name))


def _kernels_by_launch(trace: Trace) -> dict:
    out: dict = {}
    for k in trace.gpu:
        if k.cat == "kernel" and "correlation" in k.args:
            out.setdefault(k.args["correlation"], []).append(k)
    return out


def _gpu_sample(family, key, kernels, name) -> Sample:
    first = min(kernels, key=lambda k: k.ts)
    return Sample(family, key, sum(k.dur for k in kernels) * US,
                  f"cuda:{first.args.get('device', first.pid)}",
                  f"stream {first.args.get('stream', first.tid)}",
                  first.ts, max(k.end for k in kernels), name)


def _gpu_comms(trace, kernels_of, samples, skipped, used) -> None:
    """NCCL kernels: by their own `Collective name` args, else by the record_param_comms op
    whose span holds their launch."""
    param_of: dict = {}
    for e in trace.cpu:
        if e.cat in LAUNCH_CATS:
            owner = next((a for a in e.ancestors() if a.name == "record_param_comms"), None)
            if owner is not None:
                param_of[e.args.get("correlation")] = owner.args
    for k in trace.gpu:
        if k.cat != "kernel" or id(k) in used:
            continue
        args = k.args if "Collective name" in k.args else param_of.get(k.args.get("correlation"))
        if args is None:
            skipped["GPU kernels not launched by a classified op"] += 1
            continue
        _add_comm(samples, skipped, f"{args.get('Collective name')} kernel",
                  comm_from_param_args(args), k.dur * US, f"cuda:{k.args.get('device', k.pid)}",
                  f"stream {k.args.get('stream', k.tid)}", k.ts, k.end)
