"""The trace: what a run produced, in the one format both runtimes return (DESIGN §1).

Per-op records (`OpRecord`, one per op per device it ran on) stream through a `TraceRecorder` while
the run goes: it folds them, a chunk at a time, into per-device totals (busy, compute,
communication and spin seconds, the metrics' inputs) and per-request first starts, and keeps full
rows only as far as `keep_ops` says (the timeline and Perfetto window of the outputs), so a run's
memory does not grow with its number of ops; `spill_path` streams every row to a gzipped CSV.
Per-request records (`RequestRecord`) are kept for every request.

Times are seconds from the start of the run. For a collective or send/recv, `start_s` is when the op
started on that device (it then may spin, waiting for the other members) and `transfer_start_s` is
when every member had started.
"""
from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Iterable, NamedTuple, Optional

import numpy as np
import pandas as pd

COLUMNS = ("device", "stream", "priority", "name", "kind", "op_class", "request", "phase",
           "start_s", "end_s", "transfer_start_s", "isolated_s")
CHUNK_OPS = 65_536               # rows folded at a time (bounds the recorder's buffer)
KEEP_ALL = -1                    # keep_ops value: keep every row


class OpRecord(NamedTuple):
    """One op on one device. The machine's hot path builds plain tuples in this field order; the
    recorder keeps rows as OpRecords."""
    device: int
    stream: int
    priority: int
    name: str
    kind: str
    op_class: str                # 'compute', 'memory' or 'comm'
    request: int
    phase: str
    start_s: float
    end_s: float
    transfer_start_s: float
    isolated_s: float


assert OpRecord._fields == COLUMNS


@dataclass(frozen=True)
class RequestRecord:
    """Per-request times; `first_token_s` is the end of its prefill, `start_s` its first op's start."""
    request: int
    arrival_s: float
    start_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    batch: int
    measured: bool = True        # False for warm-up requests left out of metrics


@dataclass(frozen=True)
class DeviceStats:
    """One device's totals over a run: `busy_s` is the length of the union of its compute and
    transfer intervals, `compute_s` of its compute/memory ops, `comm_s` of its communication ops'
    transfer parts; `spin_s` sums the time collectives held the device waiting for peers."""
    device: int
    busy_s: float = 0.0
    compute_s: float = 0.0
    comm_s: float = 0.0
    spin_s: float = 0.0
    ops: int = 0


class _Union:
    """The length of a union of intervals fed in chunks. Intervals that end before the horizon (no
    later interval can start before it) are folded into `closed_s`; the rest stay `open`, merged."""
    __slots__ = ("closed_s", "open_start", "open_end")

    def __init__(self):
        self.closed_s = 0.0
        self.open_start = np.empty(0)
        self.open_end = np.empty(0)

    def add(self, starts: np.ndarray, ends: np.ndarray, horizon_s: float) -> None:
        s = np.concatenate((self.open_start, starts))
        e = np.concatenate((self.open_end, ends))
        if not len(s):
            return
        order = np.argsort(s, kind="stable")
        s, e = s[order], np.maximum.accumulate(e[order])
        new = np.empty(len(s), dtype=bool)
        new[0] = True
        new[1:] = s[1:] > e[:-1]
        idx = np.flatnonzero(new)
        seg_s, seg_e = s[idx], e[np.r_[idx[1:] - 1, len(s) - 1]]
        done = seg_e < horizon_s
        self.closed_s += float(np.sum(seg_e[done] - seg_s[done]))
        self.open_start, self.open_end = seg_s[~done], seg_e[~done]

    def total_s(self) -> float:
        return self.closed_s + float(np.sum(self.open_end - self.open_start))


class _DeviceTotals:
    __slots__ = ("busy", "compute", "comm", "spin_s", "ops")

    def __init__(self):
        self.busy, self.compute, self.comm = _Union(), _Union(), _Union()
        self.spin_s = 0.0
        self.ops = 0


class TraceRecorder:
    """Collects a run's op records: the engine appends OpRecord-shaped tuples to `buffer` and calls
    `fold(horizon_s)` when it holds `CHUNK_OPS` or more (and once at the end, with an infinite
    horizon); `horizon_s` is a time before which no op not yet in a record can start.

    `keep_ops`: how many full rows to keep (0 for none, `KEEP_ALL` for every one): the first ones
    recorded (in end-time order) that end at or after `keep_from_s`. `marks` notes, every
    `CHUNK_OPS` ops or so, (ops recorded so far, the time then), to find a time by op count."""

    def __init__(self, devices: int, keep_ops: int = KEEP_ALL, keep_from_s: float = 0.0,
                 spill_path: Optional[str] = None):
        self.buffer: list = []
        self.spill_path = spill_path      # every row also goes here, a chunk at a time (CSV, gzip)
        self._spill = None
        if spill_path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(spill_path)), exist_ok=True)
            self._spill = gzip.open(spill_path + ".part", "wt", newline="", compresslevel=1)
            self._spill_csv = csv.writer(self._spill)
            self._spill_csv.writerow(COLUMNS)
        self.keep_ops = keep_ops
        self.keep_from_s = keep_from_s
        self.kept: list = []
        self.ops = 0
        self.marks: list[tuple[int, float]] = [(0, 0.0)]
        self._devices = [_DeviceTotals() for _ in range(devices)]
        self._first_start: dict = {}
        self._followers: dict = {}        # leader -> devices whose rows are copies of its rows
        self._row_weight = 1.0            # op records a buffered row stands for, on average

    def mirror(self, leader: int, followers: tuple) -> None:
        """Rows of `leader` stand for `followers` too (a mirrored group: only the leader ran)."""
        self._followers[leader] = tuple(followers)
        copies = sum(len(f) for f in self._followers.values())
        self._row_weight = len(self._devices) / (len(self._devices) - copies)

    def _copies(self, rows: list) -> list:
        """The followers' rows of leaders' rows (same op, same times, another device)."""
        f = self._followers
        return [(d,) + r[1:] for r in rows if r[0] in f for d in f[r[0]]]

    def wants_rows(self, end_s: float) -> bool:
        """Whether rows of ops ending at `end_s` may still be kept (for ops not sent as rows)."""
        return self.keep_ops == KEEP_ALL or self._spill is not None or (
            end_s >= self.keep_from_s and len(self.kept) + len(self.buffer) < self.keep_ops)

    def _mark(self, end_s: float) -> None:
        # rows waiting in the buffer ended before end_s (each stands for its copies too)
        done = self.ops + int(len(self.buffer) * self._row_weight)
        if done - self.marks[-1][0] >= CHUNK_OPS:
            self.marks.append((done, end_s))

    def fold(self, horizon_s: float) -> None:
        rows = self.buffer[:]
        self.buffer.clear()          # in place: the engine holds a reference to the list
        if not rows:
            self._close(horizon_s)
            return
        self.ops += len(rows)
        if self._followers:
            self.ops += sum(len(self._followers.get(r[0], ())) for r in rows)
        if self._spill is not None:
            self._spill_csv.writerows(rows)
            self._spill_csv.writerows(self._copies(rows))
        self._mark(rows[-1][9])
        if self.keep_ops == KEEP_ALL:
            self.kept.extend(map(OpRecord._make, rows + self._copies(rows)))
        elif len(self.kept) < self.keep_ops:
            since = self.keep_from_s
            fresh = rows if rows[0][9] >= since else [r for r in rows if r[9] >= since]
            fresh = fresh[:self.keep_ops - len(self.kept)]
            fresh = fresh + self._copies(fresh)
            self.kept.extend(map(OpRecord._make, fresh[:self.keep_ops - len(self.kept)]))
        n = len(rows)
        col = lambda i, dtype: np.fromiter(map(itemgetter(i), rows), dtype, n)  # noqa: E731
        device = col(0, np.int64)
        comm = np.fromiter(map("comm".__eq__, map(itemgetter(5), rows)), bool, n)
        request = col(6, np.int64)
        start = col(8, float)
        end = col(9, float)
        xfer = np.where(comm, col(10, float), start)
        for d in np.unique(device).tolist():
            on = device == d
            tot = self._devices[d]
            tot.ops += int(np.count_nonzero(on))
            c, w = on & comm, on & ~comm
            tot.busy.add(xfer[on], end[on], horizon_s)
            tot.compute.add(start[w], end[w], horizon_s)
            tot.comm.add(xfer[c], end[c], horizon_s)
            tot.spin_s += float(np.sum(xfer[c] - start[c]))
        self._close(horizon_s)
        has = request >= 0
        if has.any():
            r, s = request[has], start[has]
            order = np.lexsort((s, r))                    # by request, then start
            ids, first = np.unique(r[order], return_index=True)
            starts = s[order][first]
            known = self._first_start
            for rid, st in zip(ids.tolist(), starts.tolist()):
                old = known.get(rid)
                if old is None or st < old:
                    known[rid] = st

    def add_exclusive(self, device: int, compute_s: float, comm_s: float, ops: int,
                      end_s: float) -> None:
        """Totals of ops that ran on `device` with nothing else there (a segment ending at
        `end_s`): their intervals overlap no other op's, so they add to the unions as they are."""
        tot = self._devices[device]
        tot.busy.closed_s += compute_s + comm_s
        tot.compute.closed_s += compute_s
        tot.comm.closed_s += comm_s
        tot.ops += ops
        self.ops += ops * (1 + len(self._followers.get(device, ())))
        self._mark(end_s)

    def note_start(self, request: int, start_s: float) -> None:
        """An op of `request` started at `start_s` (for ops recorded only in totals)."""
        if request >= 0:
            old = self._first_start.get(request)
            if old is None or start_s < old:
                self._first_start[request] = start_s

    def _close(self, horizon_s: float) -> None:
        empty = np.empty(0)
        for tot in self._devices:
            for u in (tot.busy, tot.compute, tot.comm):
                if len(u.open_start):
                    u.add(empty, empty, horizon_s)

    def close(self) -> None:
        """Finish the spilled rows' file (written whole, then renamed into place)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
            os.replace(self.spill_path + ".part", self.spill_path)

    def first_start(self, request: int) -> Optional[float]:
        """The earliest start of any op of `request` folded so far (None if it ran none)."""
        return self._first_start.get(request)

    def device_stats(self) -> list[DeviceStats]:
        source = list(range(len(self._devices)))
        for leader, followers in self._followers.items():
            for d in followers:
                source[d] = leader
        return [DeviceStats(d, t.busy.total_s(), t.compute.total_s(), t.comm.total_s(), t.spin_s, t.ops)
                for d, t in ((d, self._devices[s]) for d, s in enumerate(source))]


@dataclass
class Trace:
    """What a run produced: kept op rows (OpRecords, see TraceRecorder's `keep_ops`), request
    records, per-device totals over every op, and `meta` (devices, hardware, makespan_s, ops: the
    number of op records in the run, kept or not). With continuous batching, `steps` holds the
    scheduler's StepRecords (simulator/batching.py) and `itl_s` every inter-token gap."""
    rows: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)      # DeviceStats per device
    steps: list = field(default_factory=list)
    itl_s: list = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple], requests: Iterable[RequestRecord] = (),
                  meta: Optional[dict] = None, chunk_ops: int = CHUNK_OPS) -> "Trace":
        """A trace of finished rows (OpRecord-shaped, any order), e.g. hand-made or read back from
        a file; every row is kept. Folded `chunk_ops` at a time, like a run's recorder."""
        rows = sorted(rows, key=lambda r: r[9])          # a runtime records rows as ops end
        meta = dict(meta or {})
        devices = int(meta.get("devices", max((r[0] for r in rows), default=-1) + 1))
        rec = TraceRecorder(devices)
        for i in range(0, len(rows), chunk_ops):
            rec.buffer.extend(rows[i:i + chunk_ops])
            later = rows[i + chunk_ops:]
            rec.fold(min(r[8] for r in later) if later else float("inf"))
        meta["ops"] = rec.ops
        return cls(rec.kept, list(requests), meta, rec.device_stats())

    def ops(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.rows, columns=list(COLUMNS))

    def records(self) -> list[OpRecord]:
        """The kept op rows as named records."""
        return [OpRecord._make(r) for r in self.rows]

    def request_frame(self) -> pd.DataFrame:
        cols = list(RequestRecord.__dataclass_fields__)
        return pd.DataFrame([[getattr(r, c) for c in cols] for r in self.requests], columns=cols)

    def time_of_op(self, k: int) -> float:
        """About when the k-th op (in end order) ended: the time of the last mark at or before it
        (marks come every `CHUNK_OPS` ops or so)."""
        marks = self.meta.get("marks", [(0, 0.0)])
        best = 0.0
        for count, t in marks:
            if count > k:
                break
            best = t
        return best

    @property
    def total_ops(self) -> int:
        """Op records in the run, whether their rows were kept or not."""
        return int(self.meta.get("ops", len(self.rows)))

    @property
    def complete(self) -> bool:
        """Whether every op's row was kept."""
        return self.total_ops == len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def extend(self, rows: Iterable[tuple]) -> None:
        self.rows.extend(rows)
