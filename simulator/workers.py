"""Worker processes for a sweep, which never outlive the run that started them.

A worker must die with its parent: when `parasim run --jobs N` is killed (SIGKILL included, which
no handler sees), its workers would otherwise go on simulating points nobody collects. Each worker
therefore, in the pool's initializer:

- on Linux, asks the kernel to send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``
  through ctypes);
- everywhere, exits at once if its parent is already gone, and starts a daemon thread that checks
  every `PARENT_POLL_S` seconds whether its parent process id changed (a dead parent's children
  are re-parented) and exits if so: the portable fallback, and a second guard on Linux.

`open_backend` chooses where a run's jobs go: here (`LocalBackend`: serial, or this pool) or on
Ray (``--backend ray``, `simulator.ray_backend`). Both call back in completion order.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Callable, Iterable, Optional

PARENT_POLL_S = 1.0
PR_SET_PDEATHSIG = 1          # from <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: arrange for this worker to exit when `parent_pid` exits."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass                           # no prctl: the watcher thread below still applies
    if os.getppid() != parent_pid:         # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parasim-parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def run_in_pool(work: Callable, items: Iterable, workers: int, on_result: Callable,
                on_wait: Callable[[], None], wait_s: float = 1.0) -> None:
    """Run ``work(item)`` for every item in `workers` forked processes; call ``on_result(result)``
    in this process as each finishes (in completion order) and ``on_wait()`` about every
    `wait_s` seconds while none does (for a progress line)."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(work, item) for item in items}
        try:
            while pending:
                done, pending = wait(pending, timeout=wait_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_result(fut.result())
                on_wait()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


BACKENDS = ("local", "ray")


class LocalBackend:
    """Jobs in this process (one worker) or in `workers` forked processes (`run_in_pool`)."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def __enter__(self) -> "LocalBackend":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, work: Callable, items: list, on_result: Callable, on_wait: Callable[[], None],
            lost: Optional[Callable] = None) -> None:
        """``on_result(work(item))`` for every item, in completion order. `lost` (what Ray calls
        for a task it lost twice) has nothing to do here: a local worker that dies ends the run."""
        if self.workers > 1 and len(items) > 1:
            run_in_pool(work, items, self.workers, on_result=on_result, on_wait=on_wait)
        else:
            for item in items:
                on_result(work(item))


def open_backend(name: str = "local", workers: int = 1, address: Optional[str] = None):
    """The backend a run's or a search's jobs go to, as a context manager with ``run``: `local`
    (`LocalBackend`) or `ray` (`simulator.ray_backend.RayBackend`, which imports Ray; without
    it, a one-line ConfigError). `address`: a Ray head (else RAY_ADDRESS, else a local Ray)."""
    if name == "ray":
        from .ray_backend import RayBackend
        return RayBackend(address, workers)
    return LocalBackend(workers)
