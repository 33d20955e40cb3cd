"""Sweeps on Ray (``parasim run|search ... --backend ray``): every job is a Ray task.

The task is the pure function the local pool runs (`simulator.runner._work`), wrapped only to
check that the worker runs the driver's code (`code_fingerprint`: the cache key has it, so a node
with other code would cache its results under the wrong key; such a job is recorded as failed, with
the node's name). Jobs are plain data (the `Job` configuration dicts); results come back in
completion order to the driver, which alone reads and writes the cache and assembles the results,
so the output files are byte-identical to the local backend's.

Where: ``--ray-address HOST:PORT`` (or ``ray://HOST:PORT``, or ``auto``), else the ``RAY_ADDRESS``
environment variable, else a local Ray started for the run (``--jobs`` CPUs if more than one,
else every core) and shut down after it. A Ray session the caller already opened (a notebook, a
test) is used as it is and left open.

Retry rule: Ray's own retries are off (``max_retries=0``); a task whose result is a
`ray.exceptions.RayError` (its worker or node died, its object was lost, it raised outside the
simulation) is submitted once more, and if that fails too the job is recorded as failed with the
error, as a point failing while simulating is. A simulation error is never a Ray error: the job
catches it and returns it in its result.

Ray is an optional extra (``pip install -e '.[ray]'``), imported only here.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Optional

from .errors import ConfigError
from .experiment import code_fingerprint

NEEDS_RAY = "--backend ray needs Ray: pip install -e '.[ray]'"
DEFAULT_PORTS = {"": 6379, "ray": 10001}      # a head's GCS port; Ray Client's port
CONNECT_TIMEOUT_S = 5.0
WAIT_S = 1.0


def import_ray():
    """The `ray` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("argument", "", NEEDS_RAY) from None
    return ray


def resolve_address(address: Optional[str]) -> tuple[Optional[str], str]:
    """The Ray address to connect to (None: start a local one) and where it came from."""
    if address:
        return address, "--ray-address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else (None, "")


def check_reachable(address: str, key: str) -> None:
    """A one-line ConfigError unless something listens at `address` (``auto`` is left to Ray).
    Ray itself would retry a dead address for minutes, logging as it goes."""
    if address == "auto":
        return
    scheme, _, rest = address.rpartition("://")
    host, sep, port_text = rest.rstrip("/").rpartition(":")
    if not sep:
        host, port_text = rest.rstrip("/"), str(DEFAULT_PORTS.get(scheme, 6379))
    allowed = ("give HOST:PORT of a Ray head (started with 'ray start --head'), ray://HOST:PORT "
               "or auto")
    if scheme not in DEFAULT_PORTS or not host or not port_text.isdigit():
        raise ConfigError("argument", key, f"{address!r} is not a Ray address; {allowed}")
    try:
        socket.create_connection((host, int(port_text)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError("argument", key, f"no Ray head answers at {host}:{port_text} ({reason}); "
                          f"{allowed}, or give neither --ray-address nor RAY_ADDRESS to start a "
                          "local Ray for the run") from None


def _task(work: Callable, lost: Callable, item, fingerprint: str):
    """What a Ray worker runs: `work(item)`, if this node has the driver's parasim code."""
    mine = code_fingerprint()
    if mine != fingerprint:
        return lost(item, f"node {socket.gethostname()} runs other parasim code (fingerprint "
                          f"{mine[:12]}, the driver's {fingerprint[:12]}); install the same commit "
                          "on every node")
    return work(item)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


class RayBackend:
    """Jobs as Ray tasks; a context manager. Entering checks the address (a one-line
    ConfigError for one nobody answers at); the first `run` with work connects (or starts a
    local Ray), so a run that is all cached starts none; exiting shuts down what it started."""

    def __init__(self, address: Optional[str] = None, workers: int = 1):
        self.ray = import_ray()
        self.address, self.key = resolve_address(address)
        self.workers = workers
        self.owned = False

    def __enter__(self) -> "RayBackend":
        if self.address:
            check_reachable(self.address, self.key)
        return self

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            kwargs = dict(address=self.address)
        else:
            kwargs = dict(address="local", include_dashboard=False,
                          num_cpus=self.workers if self.workers > 1 else None)
        try:
            ray.init(logging_level=logging.ERROR, **kwargs)
        except Exception as exc:           # a port that is no Ray head, a version mismatch
            where = self.address or "a local Ray"
            raise ConfigError("argument", self.key or "--backend",
                              f"cannot start Ray at {where}: {_first_line(exc)}") from None
        self.owned = True

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False

    def run(self, work: Callable, items: list, on_result: Callable, on_wait: Callable[[], None],
            lost: Callable) -> None:
        """``on_result(work(item))`` for every item, each a Ray task, in completion order;
        ``on_wait()`` about every second while none finishes. A task lost twice (a RayError)
        gives ``on_result(lost(item, message))``."""
        if not items:
            return
        self._connect()
        ray = self.ray
        task = ray.remote(max_retries=0)(_task)
        fingerprint = code_fingerprint()

        def submit(item):
            return task.remote(work, lost, item, fingerprint)
        pending = {submit(item): (item, 0) for item in items}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    item, tries = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if tries == 0:
                            pending[submit(item)] = (item, 1)
                            continue
                        result = lost(item, f"Ray lost the task twice ({_first_line(exc)})")
                    on_result(result)
                on_wait()
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            raise
