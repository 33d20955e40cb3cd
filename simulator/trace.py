"""The trace: flat per-op records, the one format both runtimes return (DESIGN §1).

One record per op per device it ran on. Times are seconds from the start of the run. For a
collective or send/recv, `start_s` is when the op started on that device (it then may spin,
waiting for the other members) and `transfer_start_s` is when every member had started.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

COLUMNS = ("device", "stream", "priority", "name", "kind", "op_class", "request", "phase",
           "start_s", "end_s", "transfer_start_s", "isolated_s")


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


@dataclass
class Trace:
    """What a run produced: op records (tuples in COLUMNS order) and request records."""
    rows: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def ops(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.rows, columns=list(COLUMNS))

    def request_frame(self) -> pd.DataFrame:
        cols = list(RequestRecord.__dataclass_fields__)
        return pd.DataFrame([[getattr(r, c) for c in cols] for r in self.requests], columns=cols)

    def __len__(self) -> int:
        return len(self.rows)

    def extend(self, rows: Iterable[tuple]) -> None:
        self.rows.extend(rows)
