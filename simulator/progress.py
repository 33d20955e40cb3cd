"""A minimal progress bar on stderr (no dependency): count, rate and ETA, redrawn in place."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None):
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.done < self.total and now - self._last < 0.1:
            return
        self._last = now
        elapsed = now - self.t0
        frac = self.done / self.total
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(30 * frac)
        line = (f"\r{self.label} [{bar:<30}] {self.done}/{self.total} "
                f"{elapsed:5.1f}s elapsed, eta {eta:5.1f}s {note}")
        self.stream.write(line[:160])
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
