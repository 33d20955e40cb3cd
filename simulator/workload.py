"""Workloads: which requests arrive when, with how many prompt and output tokens (seeded).

A request is `batch` sequences served together (one forward pass each step), with `prompt_tokens`
tokens per sequence in its prefill and `output_tokens` tokens generated per sequence (1 means
prefill only: a single-pass request). Arrivals are open-loop (all at once, fixed rate, Poisson,
replay of a CSV trace) or closed-loop (N clients, each sending its next request when the previous
one finished, after an optional think time). All randomness comes from one numpy Generator seeded
by the experiment, so the same seed gives the same requests.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Generator, Optional

import numpy as np

from .errors import ConfigError
from .schema import Section

ARRIVALS = ("all_at_once", "fixed_rate", "poisson", "trace", "closed_loop")
DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal", "empirical")


@dataclass(frozen=True)
class Request:
    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    batch: int = 1
    measured: bool = True


@dataclass(frozen=True)
class LengthDist:
    """A token-count distribution; draws are rounded, clipped to [low, high] and to multiples of
    `multiple_of` (the Liger artifact needs batch * length divisible by 4)."""
    kind: str
    value: float = 0.0
    low: float = 1.0
    high: float = 1e9
    mean: float = 0.0
    std: float = 0.0
    values: tuple = ()
    multiple_of: int = 1

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.value, dtype=float)
        elif self.kind == "uniform":
            x = rng.integers(int(self.low), int(self.high) + 1, size=n).astype(float)
        elif self.kind == "normal":
            x = rng.normal(self.mean, self.std, size=n)
        elif self.kind == "lognormal":
            # mean/std of the underlying normal of log(tokens)
            x = rng.lognormal(self.mean, self.std, size=n)
        else:
            x = rng.choice(np.asarray(self.values, dtype=float), size=n)
        x = np.clip(np.rint(x), self.low, self.high)
        m = self.multiple_of
        if m > 1:
            x = np.maximum(m, np.floor(x / m) * m)
            x = np.where(x > self.high, x - m, x)
        return x.astype(np.int64)


@dataclass(frozen=True)
class Workload:
    requests: int
    arrival: str
    rate_rps: float
    batch: int
    prompt: LengthDist
    output: LengthDist
    warmup: int = 0
    clients: int = 1
    think_s: float = 0.0
    trace_rows: tuple = ()          # (arrival_s, prompt_tokens, output_tokens) for 'trace'

    def generate(self, rng: np.random.Generator) -> list[Request]:
        """All requests, in arrival order (closed-loop arrivals are placeholders at 0)."""
        n = self.requests
        if self.arrival == "trace":
            rows = self.trace_rows[:n] if n else self.trace_rows
            return [Request(i, a, int(p), int(o), self.batch, i >= self.warmup)
                    for i, (a, p, o) in enumerate(rows)]
        prompts = self.prompt.draw(rng, n)
        outputs = self.output.draw(rng, n)
        if self.arrival == "fixed_rate":
            times = np.arange(n) / self.rate_rps
        elif self.arrival == "poisson":
            times = np.cumsum(rng.exponential(1.0 / self.rate_rps, size=n))
            times -= times[0]
        else:
            times = np.zeros(n)
        return [Request(i, float(times[i]), int(prompts[i]), int(outputs[i]), self.batch,
                        i >= self.warmup) for i in range(n)]

    def source(self, rng: np.random.Generator):
        """The arrival process for SimRuntime.run: a function of the runtime returning a generator."""
        reqs = self.generate(rng)
        if self.arrival == "closed_loop":
            return _closed_loop(reqs, self.clients, self.think_s)
        return open_loop(reqs)


def open_loop(reqs: list[Request]):
    """An arrival process: each request arrives at its `arrival_s`, then no more."""
    def source(rt) -> Generator:
        for r in reqs:
            if r.arrival_s > rt.now:
                yield rt.env.timeout(r.arrival_s - rt.now)
            rt.arrive(r)
        rt.sources_done()
    return source


def _closed_loop(reqs: list[Request], clients: int, think_s: float):
    from dataclasses import replace

    def source(rt) -> Generator:
        pending = list(reversed(reqs))
        outstanding = [0]

        def send():
            r = replace(pending.pop(), arrival_s=rt.now)
            outstanding[0] += 1
            rt.arrive(r)

        def finished(_req, _t):
            outstanding[0] -= 1
            if pending:
                if think_s > 0:
                    rt.env.timeout(think_s).callbacks.append(lambda _e: send_or_done())
                else:
                    send_or_done()
            elif outstanding[0] == 0:
                rt.sources_done()

        def send_or_done():
            if pending:
                send()

        rt.on_finish(finished)
        for _ in range(min(clients, len(pending))):
            send()
        if not pending and outstanding[0] == 0:
            rt.sources_done()
        yield rt.env.timeout(0)
    return source


# ------------------------------------------------------------------------------------ parsing

def parse_length(value, where: str, key: str) -> LengthDist:
    """An int (fixed) or {dist: fixed|uniform|normal|lognormal|empirical, ...}."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(where, key, f"must be >= 1, got {value}")
        return LengthDist("fixed", value=float(value), low=float(value), high=float(value))
    sec = Section(value, where, key)
    kind = sec.get("dist", str, choices=DISTRIBUTIONS)
    low = sec.get("low", int, 1, min=1)
    high = sec.get("high", int, 10**9, min=low)
    mult = sec.get("multiple_of", int, 1, min=1)
    d = LengthDist(kind, low=float(low), high=float(high), multiple_of=mult)
    if kind == "fixed":
        v = sec.get("value", int, min=1)
        d = LengthDist(kind, value=v, low=float(v), high=float(v), multiple_of=mult)
    elif kind == "uniform":
        if not (sec.has("low") and sec.has("high")):
            raise sec.error("high" if sec.has("low") else "low", "uniform needs both low and high")
    elif kind in ("normal", "lognormal"):
        d = LengthDist(kind, low=float(low), high=float(high), mean=sec.get("mean", float),
                       std=sec.get("std", float, min=0.0), multiple_of=mult)
    else:
        vals = _empirical_values(sec, where, key)
        d = LengthDist(kind, low=float(low), high=float(high), values=tuple(vals), multiple_of=mult)
    sec.done()
    return d


def _empirical_values(sec: Section, where: str, key: str) -> list:
    if sec.has("values"):
        vals = sec.get("values", list)
        if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                               for v in vals):
            raise sec.error("values", "must be a non-empty list of positive numbers")
        return vals
    path = sec.get("csv", str)
    column = sec.get("column", str)
    rows = _read_csv(path, where, f"{key}.csv")
    if not rows or column not in rows[0]:
        raise sec.error("column", f"column {column!r} not in {path}; it has: "
                        + ", ".join(rows[0].keys() if rows else []))
    try:
        return [float(r[column]) for r in rows]
    except ValueError:
        raise sec.error("column", f"column {column!r} of {path} holds non-numbers") from None


def _read_csv(path: str, where: str, key: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(where, key, f"no such file: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def parse_workload(value, where: str, key: str = "workload",
                   base_dir: Optional[str] = None) -> Workload:
    sec = Section(value, where, key)
    arrival_sec = sec.section("arrival", {"kind": "all_at_once"})
    kind = arrival_sec.get("kind", str, choices=ARRIVALS)
    rate = arrival_sec.get("rate_rps", float, 0.0, min=0.0, min_open=kind in ("fixed_rate", "poisson"))
    if kind in ("fixed_rate", "poisson") and not arrival_sec.has("rate_rps"):
        raise arrival_sec.error("rate_rps", f"arrival kind {kind} needs rate_rps")
    clients = arrival_sec.get("clients", int, 1, min=1)
    think = arrival_sec.get("think_s", float, 0.0, min=0.0)
    rows: tuple = ()
    if kind == "trace":
        path = arrival_sec.get("csv", str)
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        rows = _trace_rows(path, where, arrival_sec.key("csv"))
    arrival_sec.done()
    n = sec.get("requests", int, len(rows) if rows else None, min=1)
    if n is None:
        raise sec.error("requests", "is required but missing")
    wl = Workload(
        requests=n, arrival=kind, rate_rps=rate,
        batch=sec.get("batch", int, 1, min=1),
        prompt=parse_length(sec.raw("prompt_tokens", 512), where, sec.key("prompt_tokens")),
        output=parse_length(sec.raw("output_tokens", 1), where, sec.key("output_tokens")),
        warmup=sec.get("warmup", int, 0, min=0), clients=clients, think_s=think, trace_rows=rows)
    if wl.warmup >= wl.requests:
        raise sec.error("warmup", f"must be less than requests ({wl.requests}), got {wl.warmup}")
    sec.done()
    return wl


def _trace_rows(path: str, where: str, key: str) -> tuple:
    rows = _read_csv(path, where, key)
    need = ("arrival_s", "prompt_tokens", "output_tokens")
    if not rows or any(c not in rows[0] for c in need):
        raise ConfigError(where, key, f"{path} needs columns " + ", ".join(need))
    out = []
    for i, r in enumerate(rows):
        try:
            a, p, o = float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"])
        except ValueError:
            raise ConfigError(where, key, f"{path} row {i + 2}: expected numbers") from None
        if a < 0 or p < 1 or o < 1:
            raise ConfigError(where, key, f"{path} row {i + 2}: need arrival_s >= 0 and tokens >= 1")
        out.append((a, p, o))
    out.sort(key=lambda t: t[0])
    return tuple(out)
