"""Progress on stderr: plain lines off a terminal, nothing when disabled."""
from __future__ import annotations

import io

import simulator.progress as progress


def test_off_a_terminal_progress_is_plain_lines(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    stream = io.StringIO()
    bar = progress.Progress(3, "e.yaml", stream=stream)
    for label in ("tp", "pp", "iso"):
        bar.update(1, label)
        bar.tick()
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("e.yaml: 0/3 jobs")
    assert lines[-1].startswith("e.yaml: 3/3 jobs") and lines[-1].endswith(", iso")


def test_lines_are_rate_limited_and_disabled_progress_is_silent():
    stream = io.StringIO()
    bar = progress.Progress(50, "e.yaml", stream=stream)
    for _ in range(50):
        bar.update(1)
        bar.tick()
    bar.close()
    assert len(stream.getvalue().splitlines()) <= 3          # start, end (and perhaps one between)
    quiet = io.StringIO()
    bar = progress.Progress(5, "e.yaml", enabled=False, stream=quiet)
    bar.update(5)
    bar.close()
    assert quiet.getvalue() == ""
