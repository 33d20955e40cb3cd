"""`iso`: intra-sequence overlap (ISO, Xiao and Su, arXiv 2409.11155) on Megatron tensor parallelism.

Weights are sharded over all devices exactly as in `tp` (program.py). A request's prompt is split
into `chunks` consecutive pieces of tokens; chunk c is a chunked-prefill continuation of chunks
0..c-1: its attention op has q_len = its length and kv_len = the tokens up to its end, so it reads
the earlier chunks' keys and values of the same layer (causal: an earlier chunk never reads a later one).

Streams (per device): the compute stream is stream 0 (priority 0, the stream `tp` uses); a
communication stream is created with priority -1 (higher; CUDA: lower number = higher priority), as
Megatron and DeepSpeed-Domino do for their overlapped NCCL calls: an all-reduce whose input is ready
should get its few thread blocks onto the SMs at once instead of queueing behind a GEMM's grid. In
SimRuntime's factor contention model priority only arbitrates ops of the same class, and the comm
stream carries only collectives, so the choice changes no simulated time; it matters on real GPUs.

Schedule per layer ("attention prioritised over MLP", iso_and_overlap.md §1.1, generalised to k
chunks)::

    compute: [A0] [A1] ... [A(k-1)] [M0] [M1] ... [M(k-1)] | next layer [A0] ...
    comm:         [ARa0] [ARa1] ...   [ARa(k-1)] [ARm0] ... [ARm(k-1)]

A_c = norm, QKV, attention, out_proj of chunk c; M_c = add+norm, FFN up, activation, FFN down.
Explicit dependencies (events, per device):
- KV: an event recorded after chunk j's QKV GEMM is waited on by the compute stream before the
  attention op of every later chunk c > j of the same layer (also implied by stream order here;
  the events keep it true if chunks ever move to different streams).
- Each all-reduce waits for the event recorded after its chunk's out_proj / ffn_down.
- The next block of a chunk (its MLP, or its next layer's attention block) waits for the event
  recorded after that chunk's all-reduce: the residual stream needs the reduced value.
The LM head (on the last chunk, which holds each sequence's last token) waits for the last
chunk's final all-reduce. ARa(c) hides under A(c+1..k-1) and M(0..), ARm(c) under later chunks'
MLPs and the next layer's attention blocks; only the first attention block and the last
all-reduce of the forward stay exposed.

Split policies (`split`):
- ``equal_tokens``: lengths differ by at most one token (earlier chunks get the remainder).
- ``balanced``: split points chosen so that the chunks' per-layer compute times, as
  ``rt.profiled_seconds`` reports them for the chunk's ops, are as equal as possible: the largest
  chunk's time is minimised (ties: smaller difference). Causal attention makes later chunks dearer
  per token (chunk 1 of an equal 2-split costs 3x chunk 0's attention, §1.1), so the first chunk
  gets more tokens. Search: for each cut between two chunks, a scan over its range (every
  token when the range is <= 512 tokens, otherwise a 1/256 grid refined token by token around the
  best point), repeated over all cuts until no cut moves.
- a float f in (0, 1), with 2 chunks: the first chunk gets round(f * prompt) tokens.
Every chunk gets at least `min_chunk_tokens` tokens (cuts are clamped); a prompt shorter than
`chunks * min_chunk_tokens` runs as plain `tp`. Decode steps always run as plain `tp` on stream 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Callable, Generator, Sequence

from simulator.ops import Collective, is_comm

from .program import (Step, attention_block, batch_blocks, batch_head_ops, batch_step_ops,
                      head_ops, mlp_block, request_steps)
from .tp import TP, TPParams

SPLITS = ("equal_tokens", "balanced")
COMPUTE_STREAM = 0          # stream 0: priority 0, as in tp
COMM_PRIORITY = -1          # higher than compute (CUDA convention: lower number = higher priority)
_LAUNCH, _RECORD, _WAIT = "launch", "record", "wait"
_COMPUTE, _COMM = "compute", "comm"
_SCAN_EXACT_TOKENS = 512    # scan every cut position in ranges up to this many tokens
_SCAN_GRID_POINTS = 256     # otherwise a grid of this many points, then refine around the best
_MAX_SWEEPS = 32


@dataclass(frozen=True)
class ISOParams(TPParams):
    """`chunks` >= 1; `split`: equal_tokens, balanced, or the first chunk's token share in (0, 1)
    (2 chunks only); `min_chunk_tokens` >= 1; `host_sync` as in tp (decode steps)."""
    chunks: int = 2
    split: str | float = "equal_tokens"
    min_chunk_tokens: int = 16

    def check(self) -> tuple[str, str] | None:
        if self.chunks < 1:
            return "chunks", f"must be >= 1, got {self.chunks}"
        if self.min_chunk_tokens < 1:
            return "min_chunk_tokens", f"must be >= 1, got {self.min_chunk_tokens}"
        if isinstance(self.split, str):
            if self.split not in SPLITS:
                return "split", (f"unknown split {self.split!r}; choose one of: "
                                 f"{', '.join(SPLITS)}, or a fraction in (0, 1) for 2 chunks")
        elif not 0.0 < self.split < 1.0:
            return "split", f"a fraction must lie in (0, 1), got {self.split}"
        elif self.chunks != 2:
            return "split", f"a fraction needs chunks: 2, got chunks: {self.chunks}"
        return None


class ISO(TP):
    name = "iso"
    Params = ISOParams

    def setup(self, rt) -> None:
        self._comm = [rt.create_stream(d, COMM_PRIORITY) for d in range(self.devices)]
        rt.mirror(tuple(range(self.devices)))      # run_program issues every device's alike
        self._lengths: dict = {}          # (batch, prompt_tokens) -> chunk lengths, per runtime

    # ------------------------------------------------------------------------------ splitting
    def chunk_lengths(self, rt, batch: int, prompt_tokens: int) -> tuple[int, ...] | None:
        """Token counts of the chunks for this prompt, or None when it runs as plain tp."""
        p = self.params
        least = p.min_chunk_tokens
        if prompt_tokens < p.chunks * least:
            return None
        key = (batch, prompt_tokens)
        if key not in self._lengths:
            if p.split == "equal_tokens":
                out = equal_token_lengths(prompt_tokens, p.chunks)
            elif p.split == "balanced":
                step = Step(batch, prompt_tokens, prompt_tokens, "prefill")
                cost = lambda a, b: self.chunk_compute_seconds(rt, step, a, b)  # noqa: E731
                out = balanced_lengths(cost, prompt_tokens, p.chunks, least)
            else:
                first = min(max(round(p.split * prompt_tokens), least), prompt_tokens - least)
                out = (first, prompt_tokens - first)
            self._lengths[key] = out
        return self._lengths[key]

    def chunk_compute_seconds(self, rt, step: Step, start: int, end: int) -> float:
        """Per-layer compute time of the chunk of tokens [start, end), as profiled by the runtime."""
        tp = self.devices
        group = tuple(range(tp))
        ops = attention_block(self.model, tp, step, group, q_len=end - start, kv_len=end) \
            + mlp_block(self.model, tp, step, group, q_len=end - start)
        return sum(rt.profiled_seconds(op) for op in ops if not is_comm(op))

    # ------------------------------------------------------------------------------ program
    def prefill_program(self, step: Step, lengths: Sequence[int], group: tuple, tag: str) -> list:
        """The prefill as device-independent instructions (verb, stream kind, op or event name),
        in launch order; event names are unique within the request."""
        model, tp = self.model, len(group)
        ends = list(accumulate(lengths))
        blocks = []                          # per chunk: (attention ops, mlp ops)
        for c, (n, end) in enumerate(zip(lengths, ends)):
            sfx = f".c{c}"
            blocks.append((attention_block(model, tp, step, group, q_len=n, kv_len=end, suffix=sfx),
                           mlp_block(model, tp, step, group, q_len=n, suffix=sfx)))
        return self.program(blocks, head_ops(model, tp, step, group), tag)

    def program(self, blocks: list, head: list, tag: str) -> list:
        """Instructions of a forward pass whose chunks have these per-layer (attention ops, MLP
        ops) `blocks`, then the `head` ops (schedule and dependencies: module docstring)."""
        model = self.model
        prog: list = []
        ready: list = [None] * len(blocks)   # event: the chunk's last all-reduce is done
        for layer in range(model.layers):
            kv: list = []
            for half in (0, 1):              # attention blocks of all chunks, then MLP blocks
                for c, ops in enumerate(b[half] for b in blocks):
                    name = f"{tag}.l{layer}.c{c}." + ("attn" if half == 0 else "mlp")
                    if ready[c] is not None:
                        prog.append((_WAIT, _COMPUTE, ready[c]))
                    for op in ops:
                        if isinstance(op, Collective):
                            continue
                        if op.family == "attention":
                            prog.extend((_WAIT, _COMPUTE, e) for e in kv[:c])
                        prog.append((_LAUNCH, _COMPUTE, op))
                        if op.name.startswith("qkv"):
                            kv.append(f"{name}.kv")
                            prog.append((_RECORD, _COMPUTE, kv[-1]))
                    ready[c] = self._reduce(prog, ops, name)
        if ready[-1] is not None:
            prog.append((_WAIT, _COMPUTE, ready[-1]))
        prog.extend((_LAUNCH, _COMPUTE, op) for op in head)
        return prog

    @staticmethod
    def _reduce(prog: list, ops: list, name: str) -> str | None:
        """Append the block's all-reduce on the comm stream, gated by the block's output; return
        the event that marks it done (None when the block has no collective: tp = 1)."""
        coll = [op for op in ops if isinstance(op, Collective)]
        if not coll:
            return None
        prog.append((_RECORD, _COMPUTE, f"{name}.out"))
        prog.append((_WAIT, _COMM, f"{name}.out"))
        prog.append((_LAUNCH, _COMM, coll[0]))
        prog.append((_RECORD, _COMM, f"{name}.reduced"))
        return f"{name}.reduced"

    def run_program(self, rt, prog: list, group: tuple, request: int, phase: str) -> None:
        """Issue `prog` on every device of `group`, instruction by instruction (as tp launches op
        by op); events are created per device (`record_all`, where the streams have one index)."""
        events: dict = {}
        if len({self._comm[d] for d in group}) == 1:   # one stream index: SPMD verbs, leader first
            comm = self._comm[group[0]]
            for verb, kind, x in prog:
                stream = COMPUTE_STREAM if kind == _COMPUTE else comm
                if verb == _LAUNCH:
                    rt.launch_seq((x,), group, stream, request, phase)
                elif verb == _RECORD:
                    events[x] = rt.record_all(x, group, stream)
                else:
                    for d, ev in zip(group, events[x]):
                        rt.wait(d, stream, ev)
            return
        for verb, kind, x in prog:
            for d in group:
                stream = COMPUTE_STREAM if kind == _COMPUTE else self._comm[d]
                if verb == _LAUNCH:
                    rt.launch(x, d, stream, request, phase)
                elif verb == _RECORD:
                    ev = events[(x, d)] = rt.new_event(f"{x}@{d}")
                    rt.record(ev, d, stream)
                else:
                    rt.wait(d, stream, events[(x, d)])

    # ------------------------------------------------------------------------------ serving
    def serve(self, rt, req, group) -> Generator:
        lengths = self.chunk_lengths(rt, req.batch, req.prompt_tokens)
        if lengths is None:
            yield from TP.serve(self, rt, req, group)
            return
        steps = request_steps(req.batch, req.prompt_tokens, req.output_tokens)
        self.run_program(rt, self.prefill_program(steps[0], lengths, group, f"r{req.id}"),
                         group, req.id, "prefill")
        for i, step in enumerate(steps):
            if i > 0:                        # decode: exactly tp's step
                self.launch_step(rt, req, group, step, COMPUTE_STREAM)
            yield from self.end_step(rt, req, group, i, len(steps), COMPUTE_STREAM)


    # ------------------------------------------------------------------------------ batches
    def batch_host(self, rt) -> Generator:
        """Continuous batching, one step in flight (as tp): the step's tokens are split into
        `chunks` chunks (`batch_chunks`) run as a prefill's chunks are, so one chunk's
        all-reduces hide under another's compute; a step too small to split runs as tp's."""
        group = tuple(range(self.devices))
        while True:
            batch = yield from rt.next_batch()
            if batch is None:
                return
            chunks = self.batch_chunks(batch)
            if chunks is None:
                rt.launch_seq(batch_step_ops(self.model, len(group), batch, group), group,
                              COMPUTE_STREAM, -1, batch.phase)
            else:
                blocks = [batch_blocks(self.model, len(group), part, batch.phase, group, f".c{c}")
                          for c, part in enumerate(chunks)]
                head = batch_head_ops(self.model, len(group), batch, group)
                self.run_program(rt, self.program(blocks, head, f"b{batch.id}"), group, -1,
                                 batch.phase)
            done = rt.new_event(f"batch{batch.id}")
            rt.record(done, group[0], COMPUTE_STREAM)
            rt.batch_done_when(batch, done)
            yield from rt.synchronize(done)

    def batch_chunks(self, batch) -> list | None:
        """The step's entries in `chunks` consecutive chunks of about equal tokens (with a
        fractional `split`, the first chunk gets that share; `balanced` splits equal tokens
        here); a prompt chunk that straddles a cut is cut too (its second part attends to the
        first's keys), a decode or multi-sequence entry never is. None (run as tp) when the step
        has fewer than `chunks * min_chunk_tokens` tokens or only one chunk comes out."""
        p = self.params
        tokens = batch.tokens
        if tokens < p.chunks * p.min_chunk_tokens:
            return None
        if isinstance(p.split, float):
            first = min(max(round(p.split * tokens), p.min_chunk_tokens), tokens - p.min_chunk_tokens)
            targets = [first, tokens - first]
        else:
            targets = list(equal_token_lengths(tokens, p.chunks))
        chunks: list = [[] for _ in targets]
        c, room = 0, targets[0]
        for e in batch.entries:
            while True:
                size = e.q_tokens * e.seqs
                if size <= room or e.seqs > 1 or e.q_tokens == 1 or c == len(targets) - 1:
                    chunks[c].append(e)
                    room -= size
                    break
                if room > 0:
                    head, e = e.cut(room)
                    chunks[c].append(head)
                c += 1
                room = targets[c]
            if room <= 0 and c < len(targets) - 1:
                c += 1
                room += targets[c]
        chunks = [part for part in chunks if part]
        return chunks if len(chunks) > 1 else None


# ---------------------------------------------------------------------------------- split policies

def equal_token_lengths(tokens: int, chunks: int) -> tuple[int, ...]:
    """`chunks` lengths summing to `tokens`, differing by at most one (earlier chunks longer)."""
    base, extra = divmod(tokens, chunks)
    return tuple(base + (1 if i < extra else 0) for i in range(chunks))


def balanced_lengths(cost: Callable[[int, int], float], tokens: int, chunks: int,
                     least: int) -> tuple[int, ...]:
    """Lengths (each >= `least`) that make cost(start, end) of the chunks as equal as possible.

    Starting from equal tokens, each cut is moved in turn to the position in its range that
    minimises (max, |difference|) of its two neighbouring chunks' costs, until no cut moves. For
    two chunks this is a direct search over the single cut."""
    cuts = [0, *accumulate(equal_token_lengths(tokens, chunks))]
    for _ in range(_MAX_SWEEPS):
        moved = False
        for i in range(1, chunks):
            best = _best_cut(cost, cuts[i - 1], cuts[i + 1], least, cuts[i])
            if best != cuts[i]:
                cuts[i], moved = best, True
        if not moved:
            break
    return tuple(b - a for a, b in zip(cuts, cuts[1:]))


def _best_cut(cost, start: int, end: int, least: int, current: int) -> int:
    lo, hi = start + least, end - least

    def score(s: int) -> tuple:
        a, b = cost(start, s), cost(s, end)
        return (max(a, b), abs(a - b), abs(s - current))

    if hi - lo <= _SCAN_EXACT_TOKENS:
        return min(range(lo, hi + 1), key=score)
    stride = max(1, (hi - lo) // _SCAN_GRID_POINTS)
    coarse = min([*range(lo, hi + 1, stride), hi], key=score)
    return min(range(max(lo, coarse - stride), min(hi, coarse + stride) + 1), key=score)
