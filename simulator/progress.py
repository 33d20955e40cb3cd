"""Progress of a run on stderr, drawn by tqdm.

On a terminal: tqdm's bar, redrawn in place. Elsewhere (CI logs, nohup, a pipe): one plain line
(no carriage returns, no bar) at the start, then at most one every `LOG_INTERVAL_S` seconds, and one
at the end, so a long run shows it is alive without filling the log. `enabled=False` (the CLI's
``--no-progress``, and every test) prints nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


class _LineWriter:
    """A file for tqdm that turns its in-place redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """Count finished jobs (sweep point x strategy): `update(n, note)` after each, `tick()` while
    waiting, `close()` at the end."""

    def __init__(self, total: int, label: str = "", enabled: bool = True,
                 stream: Optional[TextIO] = None):
        stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.is_terminal = bool(getattr(stream, "isatty", lambda: False)())
        self._last_line_s = time.time()
        self._bar = None
        if not self.enabled:
            return
        if self.is_terminal:
            self._bar = tqdm(total=total, desc=label, unit="job", file=stream, leave=True,
                             dynamic_ncols=True)
        else:
            self._bar = tqdm(total=total, desc=label, unit="job", file=_LineWriter(stream),
                             ascii=True, ncols=100, mininterval=LOG_INTERVAL_S,
                             maxinterval=LOG_INTERVAL_S * 10, miniters=1,
                             bar_format="{desc}: {n}/{total} jobs, {elapsed} elapsed, "
                                        "eta {remaining}{postfix}")

    def update(self, n: int = 1, note: str = "") -> None:
        if self._bar is None:
            return
        self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(n)

    def tick(self) -> None:
        """Called while waiting for a point: off a terminal, a line when the interval has passed."""
        if self._bar is None or self.is_terminal:
            return
        now = time.time()
        if now - max(self._last_line_s, self._bar.last_print_t) >= LOG_INTERVAL_S:
            self._last_line_s = now
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
