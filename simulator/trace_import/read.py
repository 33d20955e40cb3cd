"""Reading a PyTorch profiler (Kineto) Chrome trace: the file, its metadata, and its complete
("ph": "X") events indexed by thread with their nesting.

What `torch.profiler.profile(...).export_chrome_trace(path)` writes (torch 2.x): a JSON object
with `traceEvents` (a list of Chrome trace events) and metadata beside it (`schemaVersion`,
`distributedInfo`, `deviceProperties`, `baseTimeNanoseconds`, ...). Times (`ts`, `dur`) are in
microseconds. CPU-side events carry `cat` "cpu_op" (ATen ops), "user_annotation"
(`record_function` ranges, gloo's "gloo:all_reduce" ...), "cuda_runtime"/"cuda_driver" (kernel
launches); GPU-side events carry `cat` "kernel", "gpu_memcpy", "gpu_memset" with `args.device`,
`args.stream` and `args.correlation` (the launch's correlation id).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field

from ..errors import ConfigError

CPU_CATS = ("cpu_op", "user_annotation")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# top-level keys that may hold the torch version, in the order tried
VERSION_KEYS = ("torch_version", "pytorch_version", "torchVersion", "pytorchVersion")
MAX_BYTES = 2 * 2**30


@dataclass
class Event:
    """One complete event: `ts` and `dur` in microseconds; `parent` the innermost event of the same
    thread that contains it (CPU side only), `children` the events it contains directly."""
    name: str
    cat: str
    ts: float
    dur: float
    pid: object
    tid: object
    args: dict
    parent: "Event | None" = None
    children: list = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.ts + self.dur

    def descendants(self):
        stack = list(self.children)
        while stack:
            e = stack.pop()
            yield e
            stack.extend(e.children)

    def ancestors(self):
        e = self.parent
        while e is not None:
            yield e
            e = e.parent


@dataclass
class Trace:
    path: str
    sha256: str
    torch_version: str          # "" when the trace does not say
    meta: dict                  # the top-level keys other than traceEvents
    cpu: list                   # Events of CPU_CATS and LAUNCH_CATS, nested per thread
    gpu: list                   # Events of GPU_CATS

    @property
    def has_gpu(self) -> bool:
        return any(e.cat == "kernel" for e in self.gpu)


def load_trace(path: str) -> Trace:
    """Read and index `path` (JSON, or gzip-compressed JSON). ConfigError naming the file when it
    cannot be read, is not JSON, or is not a Kineto trace."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise ConfigError(path, "", f"larger than {MAX_BYTES // 2**30} GiB; trim the profile")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the trace: {exc.strerror}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(path, "", f"not a readable gzip file ({exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start}); expected a JSON trace "
                          "from torch.profiler's export_chrome_trace") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(path, "", f"not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}); expected a trace from torch.profiler's export_chrome_trace"
                          ) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ConfigError(path, "traceEvents", "missing: not a PyTorch profiler (Kineto) trace; "
                          "expected a JSON object with a traceEvents list, as "
                          "torch.profiler's export_chrome_trace writes")
    meta = {k: v for k, v in data.items() if k != "traceEvents"}
    version = next((str(meta[k]) for k in VERSION_KEYS if meta.get(k)), "")
    cpu, gpu = [], []
    for raw_e in data["traceEvents"]:
        if not isinstance(raw_e, dict) or raw_e.get("ph") != "X":
            continue
        cat = raw_e.get("cat")
        if cat not in CPU_CATS + LAUNCH_CATS + GPU_CATS:
            continue
        try:
            ts, dur = float(raw_e["ts"]), float(raw_e.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            continue
        args = raw_e.get("args") if isinstance(raw_e.get("args"), dict) else {}
        e = Event(str(raw_e.get("name", "")), cat, ts, dur, raw_e.get("pid"), raw_e.get("tid"), args)
        (gpu if cat in GPU_CATS else cpu).append(e)
    _nest(cpu)
    return Trace(path, digest, version, meta, cpu, gpu)


def _nest(events: list) -> None:
    """Set parent and children of CPU-side events: per (pid, tid), an event's parent is the
    innermost earlier event whose span contains it."""
    threads: dict = {}
    for e in events:
        threads.setdefault((e.pid, e.tid), []).append(e)
    for evs in threads.values():
        evs.sort(key=lambda e: (e.ts, -e.dur))
        stack: list = []
        for e in evs:
            while stack and e.end > stack[-1].end + 1e-3:     # 1 ns: rounding of ts and dur
                stack.pop()
            if stack:
                e.parent = stack[-1]
                stack[-1].children.append(e)
            stack.append(e)
