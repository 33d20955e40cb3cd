"""Collectives and send/recv between device threads of one process (torch.distributed).

One process group per (stream index, kind, devices): ``coll`` groups for collectives over a
Collective's `group` (rank = position in it), ``p2p`` groups for SendRecv over the sorted pair.
A group's process-group object is made lazily by each member's stream thread when it first runs an
op of that group (rendezvous through one in-process `HashStore`), so members must run the same
collectives in the same order, as NCCL requires; a process group serialises its collectives, hence
one per stream. Backend: gloo on CPU, NCCL on CUDA.

Buffers are byte-honest: a Collective's `bytes` (per device, ops.py) are moved as bytes / element
size elements of `dtype` (float32 on CPU, float16 on CUDA by default). all_reduce sums; all_gather
gathers bytes/size from each member; reduce_scatter reduces the full buffer and keeps 1/size;
all_to_all exchanges bytes/size with each member (``alltoall_base``); SendRecv sends `bytes` from
`src` to `dst`. Where a backend lacks reduce_scatter (older gloo) it is emulated: all_reduce of the
whole buffer, then each member keeps its slice (twice the traffic of a ring reduce-scatter).

`Comm.prepare(op, device, stream)` returns (start_fn, run_fn): run_fn() does the transfer and
returns the output tensor. The transfer start (when every member had started) is `Comm.joined`.
"""
from __future__ import annotations

import datetime
import math
import threading
from typing import Callable, Optional

import torch
import torch.distributed as dist

from simulator.ops import Collective, SendRecv


class Comm:
    """Process groups and buffers for every (device, stream) of one run (module docstring)."""

    def __init__(self, backend: str = "gloo", dtype: torch.dtype = torch.float32,
                 timeout_s: float = 120.0, device_of: Callable[[int], torch.device] | None = None):
        self.backend, self.dtype = backend, dtype
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.HashStore()
        self.device_of = device_of or (lambda d: torch.device("cpu"))
        self._pgs: dict = {}               # (device, stream, kind, group) -> process group
        self._seq: dict = {}               # (device, stream, kind, group) -> ops run so far
        self._starts: dict = {}            # (stream, kind, group, seq) -> [start times]
        self._bufs: dict = {}              # (device, stream, role) -> flat tensor
        self._lock = threading.Lock()
        self.emulated: set = set()         # collective kinds run emulated on this backend

    @staticmethod
    def key_of(op) -> tuple:
        if isinstance(op, SendRecv):
            return "p2p", tuple(sorted(op.group))
        return "coll", tuple(op.group)

    def group(self, device: int, stream: int, kind: str, group: tuple):
        """This device's process group for (stream, kind, group), made on first use (blocks until
        every member has made its own)."""
        key = (device, stream, kind, group)
        pg = self._pgs.get(key)
        if pg is None:
            name = f"s{stream}.{kind}." + "-".join(map(str, group))
            store = dist.PrefixStore(name, self.store)
            rank, size = group.index(device), len(group)
            if self.backend == "nccl":                   # pragma: no cover - needs CUDA
                opts = dist.ProcessGroupNCCL.Options()
                pg = dist.ProcessGroupNCCL(store, rank, size, opts)
            else:
                pg = dist.ProcessGroupGloo(store, rank, size, self.timeout)
            self._pgs[key] = pg
        return pg

    def buffer(self, device: int, stream: int, role: str, numel: int) -> torch.Tensor:
        key = (device, stream, role)
        flat = self._bufs.get(key)
        if flat is None or flat.numel() < numel:
            flat = torch.ones(max(numel, 1), dtype=self.dtype, device=self.device_of(device))
            self._bufs[key] = flat
        return flat[:numel]

    def elements(self, nbytes: float, multiple: int = 1) -> int:
        """Elements of `dtype` that hold `nbytes`, rounded up to a multiple of `multiple`."""
        n = max(1, math.ceil(nbytes / torch.tensor([], dtype=self.dtype).element_size()))
        return -(-n // multiple) * multiple

    def prepare(self, op, device: int, stream: int, data: Optional[torch.Tensor] = None):
        """(note_start, run) for `op` on `device`: note_start(t) says this member started at t;
        run() moves the data (into/out of `data` if given, else cached buffers) and returns the
        result tensor. The group's process group is made here, before anything is timed."""
        kind, group = self.key_of(op)
        pg = self.group(device, stream, kind, group)
        k = (device, stream, kind, group)
        seq = self._seq.get(k, 0)
        self._seq[k] = seq + 1
        skey = (stream, kind, group, seq)
        size, rank = len(group), group.index(device)

        def note_start(t: float) -> None:
            with self._lock:
                self._starts.setdefault(skey, []).append(t)
        run = self._runner(op, pg, device, stream, size, rank, data)
        return note_start, run, skey

    def joined(self, skey: tuple, members: int) -> float:
        """When every member of the op `skey` had started (call after it completed here); the
        record is dropped once every member has asked."""
        with self._lock:
            starts = self._starts[skey]
            t = max(starts[:members])
            starts.append(None)                      # count the readers
            if len(starts) >= 2 * members:
                del self._starts[skey]
            return t

    def _runner(self, op, pg, device, stream, size, rank, data):
        buf = lambda role, n: data if data is not None else self.buffer(device, stream, role, n)  # noqa: E731
        if isinstance(op, SendRecv):
            t = buf("p2p", self.elements(op.bytes))
            peer = 1 - rank
            if device == op.src:
                return lambda: (pg.send([t], peer, 0).wait(), t)[1]
            return lambda: (pg.recv([t], peer, 0).wait(), t)[1]
        assert isinstance(op, Collective)
        if op.kind == "all_reduce":
            t = buf("io", self.elements(op.bytes))
            return lambda: (pg.allreduce([t]).wait(), t)[1]
        n = self.elements(op.bytes, size)
        part = n // size
        if op.kind == "all_gather":
            src = data if data is not None else self.buffer(device, stream, "in", part)
            out = self.buffer(device, stream, "out", n) if data is None else \
                torch.empty(part * size, dtype=src.dtype, device=src.device)
            outs = list(out.split(part))
            return lambda: (pg.allgather([outs], [src]).wait(), out)[1]
        if op.kind == "reduce_scatter":
            src = buf("io", n)
            out = self.buffer(device, stream, "out", part) if data is None else \
                torch.empty(part, dtype=src.dtype, device=src.device)
            if "reduce_scatter" in self.emulated:
                return self._emulated_reduce_scatter(pg, src, out, rank, part)

            def rs():
                try:
                    pg.reduce_scatter([out], [list(src.split(part))]).wait()
                except RuntimeError:                 # a backend without it: emulate (doc)
                    self.emulated.add("reduce_scatter")
                    return self._emulated_reduce_scatter(pg, src, out, rank, part)()
                return out
            return rs
        if op.kind == "all_to_all":
            src = buf("io", n)
            out = self.buffer(device, stream, "out", n) if data is None else torch.empty_like(src)
            return lambda: (pg.alltoall_base(out, src, [], []).wait(), out)[1]
        raise ValueError(f"unknown collective {op.kind!r}")

    @staticmethod
    def _emulated_reduce_scatter(pg, src, out, rank, part):
        def run():
            tmp = src.clone()
            pg.allreduce([tmp]).wait()
            out.copy_(tmp[rank * part:(rank + 1) * part])
            return out
        return run
