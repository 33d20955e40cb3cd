"""TorchRuntime's CUDA parts (docs/torch_runtime.md, CUDA): ops enqueued on `torch.cuda.Stream`s
between timing events, event records as CUDA events, times against a base event per device.
Written for GPUs and not exercised without one (the tests skip it)."""
from __future__ import annotations

import torch

from simulator.ops import is_comm

from .device import Completer, Item, Stream, cuda_events, op_row


class CudaParts:                                                   # pragma: no cover - needs CUDA
    """Mixed into TorchRuntime; uses its streams, comm, clock, _timed, _base, _cuda_streams and
    _completers."""

    def _run_op_cuda(self, stream: Stream, item: Item) -> None:   # pragma: no cover - needs CUDA
        op, s = item.op, self.cuda_stream(stream)
        with torch.cuda.stream(s):
            if is_comm(op):
                _note, run, _skey = self.comm.prepare(op, stream.device, stream.index)
            else:
                run = stream.work.prepare(op)
            a, b = cuda_events()
            a.record(s)
            run()
            b.record(s)
        self._timed.append((stream, item, a, b))

    def cuda_stream(self, stream: Stream):                          # pragma: no cover
        s = self._cuda_streams.get((stream.device, stream.index))
        if s is None:
            lo, hi = torch.cuda.Stream.priority_range()
            prio = max(hi, min(lo, stream.priority))
            s = torch.cuda.Stream(device=stream.device, priority=prio)
            self._cuda_streams[(stream.device, stream.index)] = s
        return s

    def cuda_time(self, device: int, ev) -> float:                  # pragma: no cover
        base, t = self._base[device]
        return t + base.elapsed_time(ev) / 1e3

    def _start_cuda(self) -> None:                                 # pragma: no cover
        for d in range(self.devices):
            base = torch.cuda.Event(enable_timing=True)
            base.record(torch.cuda.current_stream(d))
            base.synchronize()
            self._base[d] = (base, self.clock.now)
        for sts in self.streams:
            for st in sts:
                if (st.device, st.index) not in self._completers:
                    self._completers[(st.device, st.index)] = Completer(self, st)

    def _cuda_rows(self) -> None:                                  # pragma: no cover
        torch.cuda.synchronize()
        for stream, item, a, b in self._timed:
            t0, t1 = self.cuda_time(stream.device, a), self.cuda_time(stream.device, b)
            stream.rows.append(op_row(stream, item, t0, t1, t0))
            if self.run_log is not None:    # calibration runs: a collective's span holds its wait
                self.run_log.ops.append((item.op, stream.device, stream.index, t0, t1, t0))

