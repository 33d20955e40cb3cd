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
import math
import os
from dataclasses import dataclass
from typing import Generator, Optional

import numpy as np

from .errors import ConfigError
from .lengths import COLUMNS as DATASET_COLUMNS
from .lengths import LengthPairs, column, dataset
from .schema import Section

ARRIVALS = ("all_at_once", "fixed_rate", "poisson", "trace", "closed_loop")
# the keys each arrival kind takes besides `kind`
ARRIVAL_KEYS = {"all_at_once": (), "fixed_rate": ("rate_rps",),
                "poisson": ("rate_rps", "step_at_s", "step_rate_rps"),
                "trace": ("csv",), "closed_loop": ("clients", "think_s")}
DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal", "empirical", "dataset")
# Sanity bounds on user input, far beyond any real workload (and what a simulation could finish):
MAX_TOKENS = 10_000_000        # tokens per sequence, prompt or output (10x the longest contexts)
MAX_REQUESTS = 1_000_000       # requests per run (a run of that many takes hours already)
MAX_BATCH = 1_000_000          # sequences per request
MAX_TIME_S = 1e9               # arrival times (about 30 years): past it, float seconds lose the
                               # microseconds an op takes


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
    high: float = float(MAX_TOKENS)
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
        if m > 1:       # round down to a multiple, kept inside [low, high] (the loader checks
            x = np.clip(np.floor(x / m) * m, *multiples_in(self.low, self.high, m))  # one exists)
        return x.astype(np.int64)


def multiples_in(low: float, high: float, m: int) -> tuple[float, float]:
    """The smallest and largest multiples of `m` in [low, high] (smallest > high: there is none)."""
    return float(m * math.ceil(low / m)), float(m * math.floor(high / m))


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
    lengths: Optional[LengthPairs] = None     # prompt and output drawn together (else each alone)
    step_at_s: float = 0.0          # poisson: the rate becomes step_rate_rps at this time (0: never)
    step_rate_rps: float = 0.0

    def generate(self, rng: np.random.Generator) -> list[Request]:
        """All requests, in arrival order (closed-loop arrivals are placeholders at 0)."""
        n = self.requests
        if self.arrival == "trace":
            rows = self.trace_rows[:n] if n else self.trace_rows
            return [Request(i, a, int(p), int(o), self.batch, i >= self.warmup)
                    for i, (a, p, o) in enumerate(rows)]
        if self.lengths is not None:
            prompts, outputs = self.lengths.draw(rng, n)
        else:
            prompts = self.prompt.draw(rng, n)
            outputs = self.output.draw(rng, n)
        if self.arrival == "fixed_rate":
            times = np.arange(n) / self.rate_rps
        elif self.arrival == "poisson":
            times = np.cumsum(rng.exponential(1.0 / self.rate_rps, size=n))
            times -= times[0]
            if self.step_at_s > 0:        # a rate step: the same unit-rate process, its clock
                work = times * self.rate_rps          # stretched by the rate in force
                cut = self.step_at_s * self.rate_rps
                times = np.where(work <= cut, work / self.rate_rps,
                                 self.step_at_s + (work - cut) / self.step_rate_rps)
        else:       # all_at_once (an offline throughput benchmark); closed_loop sets its own
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
    """An arrival process: each request arrives at its `arrival_s`, then no more. Like every
    source, a generator function of the serving layer (simulator/serving.py); it never sees the
    runtime."""
    def source(serving) -> Generator:
        for r in reqs:
            serving.expect(r.arrival_s)
            if r.arrival_s > serving.now:
                yield from serving.sleep(r.arrival_s - serving.now)
            serving.arrive(r)
        serving.sources_done()
    return source


def _closed_loop(reqs: list[Request], clients: int, think_s: float):
    from dataclasses import replace

    def source(serving) -> Generator:
        pending = list(reversed(reqs))
        outstanding = [0]

        def send():
            r = replace(pending.pop(), arrival_s=serving.now)
            outstanding[0] += 1
            serving.arrive(r)

        def finished(_req, _t):
            outstanding[0] -= 1
            if pending:
                if think_s > 0:
                    serving.call_later(think_s, send_or_done)
                else:
                    send_or_done()
            elif outstanding[0] == 0:
                serving.sources_done()

        def send_or_done():
            if pending:
                send()

        serving.on_finish(finished)
        for _ in range(min(clients, len(pending))):
            send()
        if not pending and outstanding[0] == 0:
            serving.sources_done()
        yield from serving.sleep(0)
    return source


# ------------------------------------------------------------------------------------ parsing

def parse_length(value, where: str, key: str, base_dir: Optional[str] = None) -> LengthDist:
    """An int (fixed) or {dist: fixed|uniform|normal|lognormal|empirical|dataset, ...}; token counts
    lie in [1, MAX_TOKENS], and [low, high] must hold a multiple of `multiple_of`. An empirical
    `csv:` path is relative to `base_dir` (the experiment file's folder). `dataset` resamples the
    column of a shipped dataset (`simulator.lengths`) that the key's last part names
    (prompt_tokens or output_tokens)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_TOKENS:
            raise ConfigError(where, key, f"must be a token count in [1, {MAX_TOKENS:,}], got {value}")
        return LengthDist("fixed", value=float(value), low=float(value), high=float(value))
    sec = Section(value, where, key)
    kind = sec.get("dist", str, choices=DISTRIBUTIONS)
    low = sec.get("low", int, 1, min=1, max=MAX_TOKENS)
    high = sec.get("high", int, MAX_TOKENS, min=low, max=MAX_TOKENS)
    mult = sec.get("multiple_of", int, 1, min=1, max=MAX_TOKENS)
    d = LengthDist(kind, low=float(low), high=float(high), multiple_of=mult)
    if kind == "fixed":
        v = sec.get("value", int, min=1, max=MAX_TOKENS)
        low = high = v
        d = LengthDist(kind, value=v, low=float(v), high=float(v), multiple_of=mult)
    elif kind == "uniform":
        if not (sec.has("low") and sec.has("high")):
            raise sec.error("high" if sec.has("low") else "low", "uniform needs both low and high")
    elif kind in ("normal", "lognormal"):
        d = LengthDist(kind, low=float(low), high=float(high), mean=sec.get("mean", float),
                       std=sec.get("std", float, min=0.0), multiple_of=mult)
    elif kind == "dataset":
        which = key.rsplit(".", 1)[-1]
        if which not in DATASET_COLUMNS:
            raise sec.error("dist", "dataset draws prompt_tokens or output_tokens only")
        ds = dataset(sec.raw("name"), where, sec.key("name"))
        vals = column(ds.name, which).astype(float)
        d = LengthDist("empirical", low=float(low), high=float(high), values=tuple(vals),
                       multiple_of=mult)
    else:
        vals = _empirical_values(sec, where, key, base_dir)
        d = LengthDist(kind, low=float(low), high=float(high), values=tuple(vals), multiple_of=mult)
    lo_m, hi_m = multiples_in(low, high, mult)
    if lo_m > hi_m:
        name = "value" if kind == "fixed" else "multiple_of"
        raise sec.error(name, f"no multiple of {mult} lies in [{low}, {high}]; token counts are "
                        f"rounded to multiples of multiple_of, so the range must hold one")
    sec.done()
    return d


def _is_token_count(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and 0 < v <= MAX_TOKENS


def _empirical_values(sec: Section, where: str, key: str, base_dir: Optional[str]) -> list:
    rule = f"finite numbers in (0, {MAX_TOKENS:,}]"
    if sec.has("values"):
        vals = sec.get("values", list)
        if not vals or not all(_is_token_count(v) for v in vals):
            bad = next((v for v in vals if not _is_token_count(v)), None)
            raise sec.error("values", f"must be a non-empty list of token counts ({rule})"
                            + (f"; got {bad!r}" if vals else ""))
        return vals
    path = resolve_path(sec.get("csv", str), base_dir)
    column = sec.get("column", str)
    rows = _read_csv(path, where, f"{key}.csv")
    if not rows or column not in rows[0]:
        raise sec.error("column", f"column {column!r} not in {path}; it has: "
                        + ", ".join(str(k) for k in (rows[0].keys() if rows else [])))
    vals = []
    for i, r in enumerate(rows):
        try:
            v = float(r[column])
        except (TypeError, ValueError):
            v = None
        if v is None or not _is_token_count(v):
            raise sec.error("column", f"{path} row {i + 2}: {column} is {r[column]!r}; "
                            f"token counts must be {rule}")
        vals.append(v)
    return vals


def resolve_path(path: str, base_dir: Optional[str]) -> str:
    """A relative path in an experiment is relative to the experiment file's folder."""
    return os.path.join(base_dir, path) if base_dir and not os.path.isabs(path) else path


def _read_csv(path: str, where: str, key: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(where, key, f"no such file: {path} (relative paths are read from the "
                          "experiment file's folder)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise ConfigError(where, key, f"{path} is not a UTF-8 text file (byte {exc.start}); save it "
                          "as UTF-8 CSV") from None
    except (OSError, csv.Error) as exc:
        raise ConfigError(where, key, f"cannot read {path} as CSV: {exc}") from None


def parse_workload(value, where: str, key: str = "workload",
                   base_dir: Optional[str] = None) -> Workload:
    sec = Section(value, where, key)
    arrival_sec = sec.section("arrival", {"kind": "all_at_once"})
    kind = arrival_sec.get("kind", str, choices=ARRIVALS)
    _check_arrival_keys(arrival_sec, kind)
    rate = arrival_sec.get("rate_rps", float, 0.0, min=0.0, min_open=kind in ("fixed_rate", "poisson"))
    think = arrival_sec.get("think_s", float, 0.0, min=0.0, max=MAX_TIME_S)
    if kind in ("fixed_rate", "poisson") and not arrival_sec.has("rate_rps"):
        raise arrival_sec.error("rate_rps", f"arrival kind {kind} needs rate_rps")
    clients = arrival_sec.get("clients", int, 1, min=1)
    rows: tuple = ()
    if kind == "trace":
        path = resolve_path(arrival_sec.get("csv", str), base_dir)
        rows = _trace_rows(path, where, arrival_sec.key("csv"))
    step_at = arrival_sec.get("step_at_s", float, 0.0, min=0.0, min_open=True, max=MAX_TIME_S)
    step_rate = arrival_sec.get("step_rate_rps", float, 0.0, min=0.0, min_open=True)
    if arrival_sec.has("step_at_s") != arrival_sec.has("step_rate_rps"):
        missing = "step_rate_rps" if arrival_sec.has("step_at_s") else "step_at_s"
        raise arrival_sec.error(missing, "a rate step needs both step_at_s and step_rate_rps")
    arrival_sec.done()
    n = sec.get("requests", int, len(rows) if rows else None, min=1, max=MAX_REQUESTS)
    if n is None:
        raise sec.error("requests", "is required but missing")
    if rows and n > len(rows):
        raise sec.error("requests", f"is {n} but the trace {path} has only {len(rows)} rows; "
                        "give at most that many, or leave requests out to replay the whole trace")
    _check_horizon(arrival_sec, kind, n, min(rate, step_rate) if step_rate else rate, clients,
                   think)
    pairs = _parse_pairs(sec, kind) if sec.has("lengths") else None
    wl = Workload(
        requests=n, arrival=kind, rate_rps=rate,
        batch=sec.get("batch", int, 1, min=1, max=MAX_BATCH),
        prompt=parse_length(sec.raw("prompt_tokens", 512), where, sec.key("prompt_tokens"), base_dir),
        output=parse_length(sec.raw("output_tokens", 1), where, sec.key("output_tokens"), base_dir),
        warmup=sec.get("warmup", int, 0, min=0), clients=clients, think_s=think, trace_rows=rows,
        step_at_s=step_at, step_rate_rps=step_rate,
        lengths=pairs)
    if wl.warmup >= wl.requests:
        raise sec.error("warmup", f"must be less than requests ({wl.requests}), got {wl.warmup}")
    sec.done()
    return wl


def _parse_pairs(sec: Section, kind: str) -> LengthPairs:
    """``lengths: {dataset: NAME, max_prompt_tokens: N, max_output_tokens: N}``: prompt and output
    tokens drawn together from a shipped dataset, in place of prompt_tokens and output_tokens."""
    for other in ("prompt_tokens", "output_tokens"):
        if sec.has(other):
            raise sec.error(other, "cannot be given with lengths, which draws prompt and output "
                            "tokens together; give one or the other")
    if kind == "trace":
        raise sec.error("lengths", "a trace replay takes its token counts from its CSV; leave "
                        "lengths out")
    ls = sec.section("lengths")
    ds = dataset(ls.raw("dataset"), ls.where, ls.key("dataset"))
    pairs = LengthPairs(ds.name,
                        ls.get("max_prompt_tokens", int, MAX_TOKENS, min=1, max=MAX_TOKENS),
                        ls.get("max_output_tokens", int, MAX_TOKENS, min=1, max=MAX_TOKENS))
    ls.done()
    return pairs


def _check_arrival_keys(sec: Section, kind: str) -> None:
    """A key of another arrival kind is refused, not ignored (a rate_rps beside all_at_once would
    otherwise read as if it paced the requests)."""
    own = ARRIVAL_KEYS[kind]
    for name in sec.data:
        if name != "kind" and name not in own:
            used = ", ".join(k for k, keys in ARRIVAL_KEYS.items() if name in keys)
            why = f"is a key of arrival kind {used}, not of {kind}" if used else "unknown key"
            raise sec.error(name, f"{why}; allowed here: " + ", ".join(("kind",) + own))


def _check_horizon(sec: Section, kind: str, n: int, rate: float, clients: int, think: float) -> None:
    """Arrival times must stay finite and below MAX_TIME_S (a rate of 1e-300 requests per second
    would put them at infinity)."""
    if kind in ("fixed_rate", "poisson") and n / rate > MAX_TIME_S:
        raise sec.error("rate_rps", f"{rate:g} requests/s spreads {n} requests over {n / rate:.3g} s; "
                        f"arrivals must stay below {MAX_TIME_S:g} s, so use rate_rps >= "
                        f"{n / MAX_TIME_S:.3g}")
    if kind == "closed_loop" and n * think / clients > MAX_TIME_S:
        raise sec.error("think_s", f"{think:g} s of think time over {n} requests and {clients} "
                        f"client(s) runs past {MAX_TIME_S:g} s; use a smaller think_s")


def _trace_rows(path: str, where: str, key: str) -> tuple:
    rows = _read_csv(path, where, key)
    need = ("arrival_s", "prompt_tokens", "output_tokens")
    if not rows or any(c not in rows[0] for c in need):
        raise ConfigError(where, key, f"{path} needs columns " + ", ".join(need))
    if len(rows) > MAX_REQUESTS:
        raise ConfigError(where, key, f"{path} has {len(rows):,} rows; at most {MAX_REQUESTS:,}")
    rule = (f"need 0 <= arrival_s <= {MAX_TIME_S:g} (finite) and integer token counts in "
            f"[1, {MAX_TOKENS:,}]")
    out = []
    for i, r in enumerate(rows):
        try:
            a, p, o = float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"])
        except (TypeError, ValueError):
            cells = ", ".join(f"{c}={r.get(c)!r}" for c in need)
            raise ConfigError(where, key, f"{path} row {i + 2}: {cells}; {rule}") from None
        if not (0 <= a <= MAX_TIME_S and 1 <= p <= MAX_TOKENS and 1 <= o <= MAX_TOKENS):
            raise ConfigError(where, key, f"{path} row {i + 2}: arrival_s={a}, prompt_tokens={p}, "
                              f"output_tokens={o}; {rule}")
        out.append((a, p, o))
    out.sort(key=lambda t: t[0])
    return tuple(out)
