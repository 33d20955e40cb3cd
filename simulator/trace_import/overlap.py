"""Contention estimates from ops that overlap in a trace.

Parasim's factor model (`simulator/contention.py`) needs `slowdown[a, b]`: how much slower an op of
class `a` (compute, memory, comm) runs while an op of class `b` runs beside it on the same device.
A trace where ops of different classes ran at once on one device (two GPU streams, or two CPU
threads of one process) holds evidence for it:

- a sample is *alone* when no op on another stream or thread of its device overlaps it at all;
- it is *overlapped by b* when ops of class b on other lanes of its device cover at least half of
  its duration and no op of a third class overlaps it;
- for each shape (family and table key) of class a seen both alone and overlapped by b, the ratio
  median(overlapped times) / median(alone times); the estimate is the median of those ratios over
  shapes, with the counts it rests on.

A ratio below 1 (noise, or a shape that ran faster overlapped) is reported as measured; the value
offered for a profile is then 1.0 (the profile loader requires slowdowns >= 1).
"""
from __future__ import annotations

import bisect
import statistics
from collections import defaultdict

CLASSES = ("compute", "memory", "comm")
MIN_COVER = 0.5


def _overlaps(samples: list) -> list:
    """For each sample, {class: microseconds of it covered by ops of that class on other lanes}
    (overlaps of several ops of one class are summed and capped at the sample's duration)."""
    out = [defaultdict(float) for _ in samples]
    by_device = defaultdict(list)
    for i, s in enumerate(samples):
        by_device[s.device].append(i)
    for idx in by_device.values():
        idx.sort(key=lambda i: samples[i].start)
        starts = [samples[i].start for i in idx]
        longest = max(samples[i].end - samples[i].start for i in idx)
        for i in idx:
            s = samples[i]
            lo = bisect.bisect_left(starts, s.start - longest)
            hi = bisect.bisect_left(starts, s.end)
            for j in idx[lo:hi]:
                o = samples[j]
                if o.lane == s.lane or j == i:
                    continue
                cover = min(s.end, o.end) - max(s.start, o.start)
                if cover > 0:
                    out[i][o.op_class] += cover
            for c in out[i]:
                out[i][c] = min(out[i][c], s.end - s.start)
    return out


def estimate(samples: list) -> dict:
    """{"overlap_found": bool, "estimates": [...], "not_estimated": [...]}."""
    covers = _overlaps(samples)
    alone = defaultdict(list)                   # (family, key) -> seconds
    over = defaultdict(list)                    # (b, family, key) -> seconds
    overlapped_any = 0
    for s, cov in zip(samples, covers):
        shape = (s.family, s.key)
        if not any(v > 0 for v in cov.values()):
            alone[shape].append(s.seconds)
            continue
        overlapped_any += 1
        dur = s.end - s.start
        others = [c for c, v in cov.items() if v > 0 and c != s.op_class]
        if len(others) == 1 and dur > 0 and cov[others[0]] >= MIN_COVER * dur:
            over[(others[0],) + shape].append(s.seconds)
    estimates, missing = [], []
    for a in CLASSES:
        for b in CLASSES:
            if a == b:
                continue
            ratios, n_over, n_alone = [], 0, 0
            for (cls_b, family, key), times in over.items():
                shape = (family, key)
                if cls_b != b or _class(family) != a or shape not in alone:
                    continue
                ratios.append(statistics.median(times) / statistics.median(alone[shape]))
                n_over += len(times)
                n_alone += len(alone[shape])
            pair = f"{a}_by_{b}"
            if ratios:
                estimates.append({"pair": pair, "ratio": round(statistics.median(ratios), 4),
                                  "shapes": len(ratios), "overlapped_samples": n_over,
                                  "isolated_samples": n_alone})
            else:
                missing.append(pair)
    return {"overlap_found": overlapped_any > 0, "overlapped_samples": overlapped_any,
            "estimates": estimates, "not_estimated": missing}


def _class(family: str) -> str:
    return {"gemm": "compute", "attention": "compute", "elementwise": "memory"}.get(family, "comm")
