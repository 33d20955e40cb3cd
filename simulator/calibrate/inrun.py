"""In-run calibration: op times as the strategies' own runs see them.

Micro-benchmarks time each op with every device thread released together by a barrier. In a run
on a shared CPU an op starts when its thread wakes from the previous one, gloo's helper threads
and the peer compete for the same cores, and a collective's transfer waits on those wake-ups: on
the 2-core development machine collectives took 5-10x and decode GEMMs 1.5-2.5x their
micro-benchmarked times (docs/validation.md). So `parasim validate` also runs each strategy of the
experiment on TorchRuntime on *other* requests (the experiment's seed plus CALIBRATION_SEED_OFFSET,
a different arrival sequence), logs every op (TorchRuntime.op_log) and takes, per table shape, the
mean of what the runs measured: a compute op's span, a collective's or send/recv's transfer (its
end minus the moment its last member joined, as the simulator times it). The mean, not the median:
a run's time is the sum of its ops' times, and under load their distribution has a long tail
(thread wake-ups) that the median drops (in-run all-reduce means were ~3x their medians). Those
means, plus the stream gap the micro-benchmarks measured, replace the micro-benchmarked rows of the
same shapes in a copy of the calibrated profile (``STEM-inrun.yaml`` and its tables); shapes the
runs did not reach keep their micro-benchmarked rows. One table serves every strategy (a shape's
samples from all runs together), and the validation runs themselves are never used.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import statistics
from dataclasses import replace

import yaml

from simulator.cost_tables import FAMILIES
from simulator.io import write_text
from simulator.jobs import build, simulate
from simulator.ops import Attention, Collective, Elementwise, Gemm, SendRecv
from simulator.safe_yaml import read_yaml_file

from .profile import _key

CALIBRATION_SEED_OFFSET = 1000


def calibration_runs(jobs, runs: int, log=print) -> tuple[list, str]:
    """Run every job `runs` times on TorchRuntime with seeds offset from the experiment's; return
    the op log of all runs and a description of them for the tables' sources."""
    entries: list = []
    for job in jobs:
        for i in range(runs):
            seed = int(job.config.get("seed", 0)) + CALIBRATION_SEED_OFFSET + i
            built = build(replace(job, config={**job.config, "seed": seed}))
            before = len(entries)
            simulate(built, 0, runtime="torch", op_log=entries)
            log(f"calibrate: in-run: {job.label} (seed {seed}): {len(entries) - before} ops")
    labels = ", ".join(j.label for j in jobs)
    what = (f"{runs} run(s) of each of {labels} on TorchRuntime with seeds offset by "
            f"{CALIBRATION_SEED_OFFSET} from the experiment's")
    return entries, what


def measured_times(entries) -> dict:
    """family -> {key strings: [seconds, ...]} from an op log: compute ops their span, collectives
    and send/recv their transfer (end minus the last member's join). Ops no table covers (ragged
    attention, batched GEMMs) are left out."""
    out: dict = {}
    for op, _device, _stream, start, end, xfer in entries:
        if isinstance(op, Gemm) and op.count != 1:
            continue
        if isinstance(op, (Collective, SendRecv)):
            seconds = end - max(xfer, start)
        elif isinstance(op, (Gemm, Attention, Elementwise)):
            seconds = end - start
        else:
            continue
        family, key = _key(op)
        out.setdefault(family, {}).setdefault(tuple(str(k) for k in key), []).append(seconds)
    return out


def write_inrun_profile(calibrated: str, times: dict, gap_s: float, what: str, log=print) -> str:
    """``STEM-inrun.yaml`` beside `calibrated`: the same profile whose tables have the in-run
    means (plus `gap_s`) in place of the micro-benchmarked rows of the same shapes."""
    folder = os.path.dirname(os.path.abspath(calibrated))
    stem = os.path.splitext(os.path.basename(calibrated))[0]
    data = read_yaml_file(calibrated, "calibrated profile")
    tables = data.setdefault("measured_tables", {})
    source = (f"measured: in-run, parasim validate on {platform.node() or 'this host'}, "
              f"{datetime.date.today().isoformat()}: means over {what}; stream gap "
              f"{gap_s * 1e6:.1f} us added")
    replaced = {}
    for family in sorted(set(times) | set(tables)):
        columns = FAMILIES[family][0]
        rows = _read_rows(os.path.join(folder, tables[family]["csv"])) if family in tables else []
        measured = times.get(family, {})
        kept = [r for r in rows if tuple(r.get(c, "") for c in columns) not in measured]
        for key, samples in sorted(measured.items()):
            kernel = statistics.fmean(samples)
            kept.append({**dict(zip(columns, key)), "seconds": f"{kernel + gap_s:.9g}",
                         "kernel_s": f"{kernel:.9g}", "dispatch_s": f"{gap_s:.9g}",
                         "samples": str(len(samples)), "source": source})
        name = f"{stem}-inrun-{family}.csv"
        write_text(os.path.join(folder, name), _csv(columns, kept))
        old = tables.get(family, {}).get("source", "")
        tables[family] = {"csv": name, "source": source + (
            f"; shapes the runs did not reach: {old}" if old and len(kept) > len(measured) else "")}
        replaced[family] = len(measured)
    out = os.path.join(folder, f"{stem}-inrun.yaml")
    header = (f"# {os.path.basename(calibrated)} with in-run op times (parasim validate; "
              "docs/validation.md, 'In-run calibration').\n")
    write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=120))
    log("calibrate: in-run: " + ", ".join(f"{f} {n}" for f, n in replaced.items() if n)
        + f" shapes measured; wrote {out}")
    return out


def _read_rows(path: str) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _csv(columns: tuple, rows: list) -> str:
    buf = io.StringIO()
    header = list(columns) + ["seconds", "kernel_s", "dispatch_s", "samples", "source"]
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()
