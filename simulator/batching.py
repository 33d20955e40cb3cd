"""Continuous batching: an iteration-level scheduler in the serving layer (vLLM V1's semantics).

With ``serving: {scheduler: continuous}`` the strategy's host no longer takes whole requests: it
asks for a *batch* (one forward step over a set of requests, ``Runtime.next_batch``), launches its
ops, and hands back the event after which the step's tokens exist (``Runtime.batch_done_when``).
The `Scheduler` decides every step; strategies never implement admission. docs/serving.md compares
it with vLLM's scheduler line by line; in short, each step:

1. *Running requests first*, in admission order, each with the tokens it still has to compute (the
   rest of its prompt, a recomputed prefix, or one decode token), capped by
   `long_prefill_token_threshold` (if > 0) and by the step's remaining token budget
   (`max_num_batched_tokens`; with `chunked_prefill` a prompt is split across steps). A request
   whose KV blocks cannot grow preempts the most recently admitted running request (its blocks are
   freed and it returns to the front of the waiting queue, to be recomputed from scratch:
   `preemption: recompute`); if it is itself the most recent one, it is preempted.
2. *Then waiting requests*, FCFS (preempted ones first), only if no request was preempted in this
   step, while the budget, `max_num_seqs` running requests and free KV blocks allow. Without
   chunked prefill a prompt that does not fit the remaining budget waits for a later step.

A request in an in-flight batch (pipeline stages or interleaved micro-batches hold several) is
neither scheduled again nor preempted until its batch is done: batches in flight hold disjoint
requests, as vLLM's pipeline-parallel batch queue does.

KV memory is counted in blocks of `block_size` tokens per sequence on the fullest device of the
parallel layout (`kv_cache_blocks`). A request of `batch` sequences counts each one.

A step samples a token for every request whose computed tokens reach its known tokens (prompt plus
tokens generated so far); a chunk that ends inside the prompt samples nothing. The first sampled
token is the request's first token; the request finishes when it has `output_tokens` of them.
The scheduler's own CPU time is not modelled (vLLM's is a few ms per step at large batches).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Optional

from .errors import ConfigError
from .schema import Section

SCHEDULERS = ("static", "continuous")
PREEMPTION = ("recompute",)
PHASES = ("prefill", "decode", "mixed")


@dataclass(frozen=True)
class ServingConfig:
    """The experiment's `serving:` section; defaults follow vLLM V1's online serving defaults
    (max_num_seqs 256, 8192 batched tokens on large GPUs, chunked prefill on, block size 16)."""
    scheduler: str = "static"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0       # 0: no cap per request and step
    block_size: int = 16                        # tokens per KV block
    kv_cache_memory_fraction: float = 0.9       # of the memory left after weights and activations
    preemption: str = "recompute"

    @property
    def continuous(self) -> bool:
        return self.scheduler == "continuous"


_CONTINUOUS_KEYS = ("max_num_seqs", "max_num_batched_tokens", "chunked_prefill",
                    "long_prefill_token_threshold", "block_size", "kv_cache_memory_fraction",
                    "preemption")
MAX_BUDGET = 10_000_000


def parse_serving(value, where: str, key: str = "serving") -> ServingConfig:
    """Read the `serving:` mapping (absent: static serving, today's behaviour)."""
    if value is None:
        return ServingConfig()
    sec = Section(value, where, key)
    scheduler = sec.get("scheduler", str, "static", choices=SCHEDULERS)
    if scheduler == "static":
        extra = [k for k in _CONTINUOUS_KEYS if sec.has(k)]
        if extra:
            raise sec.error(extra[0], "applies only with scheduler: continuous (the static "
                                      "scheduler serves whole requests as each strategy does)")
        sec.done(allowed=("scheduler",) + _CONTINUOUS_KEYS)
        return ServingConfig()
    d = ServingConfig()
    cfg = ServingConfig(
        scheduler=scheduler,
        max_num_seqs=sec.get("max_num_seqs", int, d.max_num_seqs, min=1, max=MAX_BUDGET),
        max_num_batched_tokens=sec.get("max_num_batched_tokens", int, d.max_num_batched_tokens,
                                       min=1, max=MAX_BUDGET),
        chunked_prefill=sec.get("chunked_prefill", bool, d.chunked_prefill),
        long_prefill_token_threshold=sec.get("long_prefill_token_threshold", int,
                                             d.long_prefill_token_threshold, min=0, max=MAX_BUDGET),
        block_size=sec.get("block_size", int, d.block_size, min=1, max=65536),
        kv_cache_memory_fraction=sec.get("kv_cache_memory_fraction", float,
                                         d.kv_cache_memory_fraction, min=0.0, max=1.0,
                                         min_open=True),
        preemption=sec.get("preemption", str, d.preemption, choices=PREEMPTION))
    sec.done()
    if cfg.max_num_batched_tokens < cfg.block_size:
        raise sec.error("max_num_batched_tokens", f"{cfg.max_num_batched_tokens} is smaller than "
                        f"one KV block ({cfg.block_size} tokens, block_size)")
    if cfg.max_num_batched_tokens < cfg.max_num_seqs:
        raise sec.error("max_num_batched_tokens", f"{cfg.max_num_batched_tokens} is smaller than "
                        f"max_num_seqs ({cfg.max_num_seqs}): a step could not give every running "
                        "request its decode token")
    return cfg


def check_workload_fits(cfg: ServingConfig, longest_prefill: int, seqs: int, where: str,
                        key: str = "serving") -> None:
    """Without chunked prefill a step's budget must hold the longest prefill in one piece: a
    prompt, or after a preemption the prompt and all but the last output token (vLLM asks the
    same: max_num_batched_tokens >= max_model_len). A request's `seqs` sequences must fit a
    step."""
    if not cfg.continuous:
        return
    budget = cfg.max_num_batched_tokens
    if seqs > budget:
        raise ConfigError(where, f"{key}.max_num_batched_tokens",
                          f"{budget} is below the {seqs} sequences of one request (workload.batch)")
    if not cfg.chunked_prefill and longest_prefill * seqs > budget:
        raise ConfigError(where, f"{key}.max_num_batched_tokens",
                          f"{budget} is below the longest prefill ({longest_prefill} tokens x "
                          f"{seqs} sequences: a prompt plus the output tokens a recomputation "
                          "after preemption prefills) and chunked_prefill is off, so it might "
                          "never be scheduled; raise it or set chunked_prefill: true")


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BatchEntry(NamedTuple):
    """One request's part of a step: `q_tokens` new tokens per sequence over `context_tokens` keys
    (its KV length after the step), for `seqs` sequences; `decode`: a generated token (not part
    of a prompt or a recomputed prefix); `samples`: the step ends with a sampled token."""
    request: int
    seqs: int
    q_tokens: int
    context_tokens: int
    decode: bool
    samples: bool

    def cut(self, first: int) -> tuple["BatchEntry", "BatchEntry"]:
        """Its first `first` query tokens (they sample nothing) and the rest (which attend to
        the first part's keys too)."""
        head = BatchEntry(self.request, self.seqs, first,
                          self.context_tokens - self.q_tokens + first, self.decode, False)
        return head, BatchEntry(self.request, self.seqs, self.q_tokens - first,
                                self.context_tokens, self.decode, self.samples)


class Batch(NamedTuple):
    """One scheduled forward step."""
    id: int
    entries: tuple
    tokens: int              # sum of q_tokens * seqs
    phase: str               # prefill, decode or mixed (the trace's phase of its ops)


class StepRecord(NamedTuple):
    """What the scheduler decided at one step (steps.csv, the serving plot)."""
    batch: int
    time_s: float
    seqs: int                # sequences in the step
    tokens: int
    prefill_tokens: int
    running: int             # admitted requests after the step was scheduled
    waiting: int             # requests waiting for admission
    kv_blocks_used: int
    kv_blocks_total: int
    preempted: int           # requests preempted while scheduling this step


class _Served:
    """A request inside the scheduler."""
    __slots__ = ("request", "id", "seqs", "prompt", "output", "computed", "generated", "blocks",
                 "last_token_s", "started", "preemptions")

    def __init__(self, request):
        self.request, self.id, self.seqs = request, request.id, request.batch
        self.prompt, self.output = request.prompt_tokens, request.output_tokens
        self.computed = 0         # tokens per sequence whose KV exists
        self.generated = 0        # tokens sampled so far
        self.blocks = 0           # KV blocks held (all sequences)
        self.last_token_s = 0.0
        self.started = False
        self.preemptions = 0

    @property
    def known(self) -> int:
        """Tokens per sequence the next sample needs in the KV cache: the prompt and every token
        generated so far (the newest is fed by the next step)."""
        return self.prompt + self.generated


class Scheduler:
    """The continuous-batching scheduler of one run (module docstring). `serving` is the Serving
    layer (the runtime attaches it): arrivals come from its queue, marks go to it."""

    def __init__(self, config: ServingConfig, kv_blocks: int, serving=None):
        self.cfg = config
        self.kv_blocks = kv_blocks
        self.free = kv_blocks
        self.serving = serving
        self.waiting: deque = deque()
        self.running: list = []
        self.served: dict = {}
        self.in_flight: set = set()
        self.batches = 0
        self.preemptions = 0
        self.steps: list = []
        self.itl_s: list = []     # every inter-token gap of every request

    # ------------------------------------------------------------------------------ scheduling
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self, now: float, parts: int = 1) -> Optional[Batch]:
        """The next step's batch, or None when no request can take part now. `parts` > 1: a host
        that runs that many micro-batches at once asks for one of them, so it gets at most
        1/parts of the token budget and of max_num_seqs (as sequences in the batch)."""
        take = self.serving.try_next_request
        while True:
            req = take()
            if req is None:
                break
            s = self.served[req.id] = _Served(req)
            self.waiting.append(s)
        cfg = self.cfg
        full = budget = cfg.max_num_batched_tokens // parts
        room = -(-cfg.max_num_seqs // parts)        # sequences this batch may hold
        thr = cfg.long_prefill_token_threshold
        entries: list = []
        busy = self.in_flight
        running = self.running
        preempted = 0
        i = 0
        while i < len(running) and budget > 0 and room > 0:
            s = running[i]
            if s.id in busy:
                i += 1
                continue
            new = s.known - s.computed
            if thr and new > thr:
                new = thr
            new = min(new, budget // s.seqs)
            if new <= 0:
                i += 1
                continue
            while not self._grow(s, s.computed + new):
                victim = next((j for j in range(len(running) - 1, i, -1)
                               if running[j].id not in busy), None)
                preempted += 1
                if victim is None:          # s is the most recent request left: it goes
                    self._preempt(running.pop(i))
                    s = None
                    break
                self._preempt(running.pop(victim))
            if s is None:
                continue                    # running[i] is now the next request
            entries.append(self._entry(s, new))
            budget -= new * s.seqs
            room -= s.seqs
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and room > 0 and len(running) < cfg.max_num_seqs:
                s = self.waiting[0]
                new = s.known - s.computed
                if not cfg.chunked_prefill and new * s.seqs > budget:
                    break
                if thr and new > thr:
                    new = thr
                new = min(new, budget // s.seqs)
                if new <= 0 or not self._grow(s, s.computed + new):
                    break
                self.waiting.popleft()
                running.append(s)
                if not s.started:
                    s.started = True
                    self.serving.mark_start(s.id, now)
                entries.append(self._entry(s, new))
                budget -= new * s.seqs
                room -= s.seqs
        if not entries:
            return None
        for e in entries:
            busy.add(e.request)
        tokens = full - budget
        prefill = sum(e.q_tokens * e.seqs for e in entries if not e.decode)
        phase = "decode" if not prefill else "prefill" if prefill == tokens else "mixed"
        batch = Batch(self.batches, tuple(entries), tokens, phase)
        self.batches += 1
        self.steps.append(StepRecord(batch.id, now, sum(e.seqs for e in entries), tokens, prefill,
                                     len(running), len(self.waiting) + self.serving.waiting(),
                                     self.kv_blocks - self.free, self.kv_blocks, preempted))
        return batch

    def _entry(self, s: _Served, new: int) -> BatchEntry:
        end = s.computed + new
        known = s.prompt + s.generated
        return BatchEntry(s.id, s.seqs, new, end, s.generated > 0 and s.computed == known - 1,
                          end == known)

    def _grow(self, s: _Served, tokens: int) -> bool:
        """Give `s` the blocks for `tokens` tokens per sequence, if there are enough free."""
        need = blocks_for(tokens, self.cfg.block_size) * s.seqs - s.blocks
        if need <= 0:
            return True
        if need > self.free:
            return False
        self.free -= need
        s.blocks += need
        return True

    def _preempt(self, s: _Served) -> None:
        self.free += s.blocks
        s.blocks = 0
        s.computed = 0
        s.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)

    # ------------------------------------------------------------------------------ completion
    def commit(self, batch: Batch, t: float) -> None:
        """`batch`'s step ended at `t`: its KV is written, its sampled tokens exist."""
        serving = self.serving
        for e in batch.entries:
            s = self.served[e.request]
            self.in_flight.discard(e.request)
            s.computed = e.context_tokens
            if not e.samples:
                continue
            s.generated += 1
            if s.generated == 1:
                serving.mark_first_token(s.id, t)
            else:
                self.itl_s.append(t - s.last_token_s)
            s.last_token_s = t
            if s.generated >= s.output:
                self.running.remove(s)
                self.free += s.blocks
                s.blocks = 0
                del self.served[s.id]
                serving.mark_finish(s.id, t)


def kv_cache_blocks(model, memory_bytes: float, tp: int, pp: int, split, cfg: ServingConfig,
                    activation_tokens: int) -> tuple[int, float]:
    """(KV blocks, bytes per block) on the fullest device: `kv_cache_memory_fraction` of what is
    left after the weights and the activations of an `activation_tokens`-token step
    (model.memory_per_device's terms), over the bytes of one block of that device's layers
    (block_size tokens x K and V x local KV width x the model's `kv_dtype_bytes`)."""
    from .model import memory_per_device, split_layers
    fp = memory_per_device(model, tp, pp, 1, activation_tokens, split)
    left = memory_bytes - fp.weights_bytes - fp.activation_bytes
    stages = tuple(split) if split is not None else split_layers(model.layers, pp)
    kv_local = max(model.kv_heads // tp, 1) * model.head_dim
    block_bytes = float(cfg.block_size * 2 * kv_local * model.kv_dtype_bytes * max(stages))
    if left <= 0:
        return 0, block_bytes
    return int(math.floor(cfg.kv_cache_memory_fraction * left / block_bytes)), block_bytes
