"""In-run calibration: op times as the strategies' own runs see them.

Micro-benchmarks time each op with every device thread released together by a barrier. In a run
on a shared CPU an op starts when its thread wakes from the previous one, gloo's helper threads
and the peer compete for the same cores, and a collective's transfer waits on those wake-ups: on
the 2-core development machine collectives took 5-10x and decode GEMMs 1.5-2.5x their
micro-benchmarked times (docs/validation.md). So `parasim validate` also runs each strategy of the
experiment on TorchRuntime on *other* requests (the experiment's seed plus CALIBRATION_SEED_OFFSET;
they arrive at the experiment's own inter-arrival gaps in another order, arrivals.py: the same
offered load, another pattern), logs every op (TorchRuntime.run_log) and takes, per table shape, the
mean of what the runs measured: a compute op's span, a collective's or send/recv's transfer (its
group's first member's end minus the moment its last member joined, as the simulator times it;
the later members' ends are their lags, lags.py). The mean, not the median:
a run's time is the sum of its ops' times, and under load their distribution has a long tail
(thread wake-ups) that the median drops (in-run all-reduce means were ~3x their medians). Those
means replace the micro-benchmarked rows of the same shapes in a copy of the calibrated profile
(``STEM-inrun.yaml`` and its tables); shapes the runs did not reach keep their micro-benchmarked
rows. Table times come from samples that ran alone on their device where there are enough of them:
what overlap costs is the contention model's (`cores`: the devices share the CPU's cores). One
table serves every strategy (a shape's samples from all runs together), and the validation runs
themselves are never used. How the same shape's times vary from run to run becomes the profile's
jitter (`jitter_ratios`).

The host is calibrated the same way: the simulator charges each launch `host.launch_overhead_us`
of host time, and in a real run the host thread also plans (liger's online scheduler), waits for
the GIL and for a core. The runs' host busy time (TorchRuntime's driver: its time making progress)
per SPMD launch replaces the micro-benchmarked launch cost, and how late the host and the streams
react to events (`host.wakeup_us`, `host.callback_us`, `device.event_wait_us`) is measured too;
over all runs in the in-run profile and per strategy in its variants (a host program's cost and
reactions are its own).
"""
from __future__ import annotations

import copy
import csv
import datetime
import io
import os
import platform
import re
import statistics
from dataclasses import dataclass, replace

import yaml

from simulator.cost_tables import FAMILIES
from simulator.io import write_text
from simulator.jobs import build, simulate
from simulator.ops import Attention, Collective, Elementwise, Gemm, SendRecv
from simulator.safe_yaml import read_yaml_file

from simulator.trace_import.classify import Sample
from simulator.trace_import.overlap import _overlaps

from .arrivals import same_load
from .lags import first_ends, lag_section, member_lags, transfer_seconds
from .profile import _key

CALIBRATION_SEED_OFFSET = 1000
MIN_ALONE = 3           # samples of a shape run alone that make its time (else: every sample)
MIN_JITTER = 10         # samples of a shape run alone that its spread needs to count
JITTER_QUANTILES = 32   # ratios a family's jitter is summarised by
WINSOR_QUANTILE = 0.999  # reaction times above this quantile count as this quantile (robust_mean)


def calibration_runs(jobs, runs: int, log=print, runtime: str = "torch"):
    """Run every job `runs` times on TorchRuntime (`runtime`: "torch" on the CPU, "torch-cuda"
    on GPUs) with seeds offset from the experiment's; return the RunLog of all runs (each op
    entry ends with its run's name) and a description of them for the sources. (`parasim
    validate` interleaves these runs with its measured runs: validate.measure.)"""
    from simulator.torchrt.runtime import RunLog
    run_log = RunLog()
    for job in jobs:
        for i in range(runs):
            calibration_run(job, i, run_log, log, runtime)
    return run_log, describe_runs(jobs, runs)


def calibration_run(job, i: int, run_log, log=print, runtime: str = "torch",
                    keep_load: bool = True) -> None:
    """The job's calibration run `i` (seed: the experiment's + CALIBRATION_SEED_OFFSET + i),
    its ops and host costs added to `run_log` (its host costs under the job's label too);
    `keep_load`: its requests arrive at the experiment's inter-arrival gaps in another order
    (arrivals.same_load), else at its own seed's arrival times."""
    from simulator.torchrt.runtime import HostLog, RunLog
    seed = int(job.config.get("seed", 0)) + CALIBRATION_SEED_OFFSET + i
    built = build(replace(job, config={**job.config, "seed": seed}))
    if keep_load:
        built = replace(built, workload=same_load(build(job), built))
    before = len(run_log.ops)
    one = RunLog(ops=run_log.ops)         # this run's host, then added to the totals
    simulate(built, 0, runtime=runtime, run_log=one)
    run_log.host.add(one.host)
    run_log.host_by_label.setdefault(job.label, HostLog()).add(one.host)
    run = f"{job.label}#{i}"        # each run's clock starts at 0: keep runs apart
    run_log.ops[before:] = [entry + (run,) for entry in run_log.ops[before:]]
    log(f"calibrate: in-run: {job.label} (seed {seed}): {len(run_log.ops) - before} ops")


def describe_runs(jobs, runs: int) -> str:
    labels = ", ".join(j.label for j in jobs)
    return (f"{runs} run(s) of each of {labels} on TorchRuntime with seeds offset by "
            f"{CALIBRATION_SEED_OFFSET} from the experiment's, arriving at the experiment's "
            "inter-arrival gaps in another order")


def measured_times(entries) -> dict:
    """family -> {key strings: [seconds, ...]} from an op log: compute ops their span, collectives
    and send/recv their transfer (end minus the last member's join). Ops no table covers (ragged
    attention, batched GEMMs) are left out. Where a shape ran alone (no op on another stream of its
    device overlapping it) that often, only those samples count (`MIN_ALONE`): the contention
    model adds what overlap costs."""
    samples = op_samples(entries)
    covers = _overlaps(samples)
    alone: dict = {}
    every: dict = {}
    for smp, cov in zip(samples, covers):
        every.setdefault(smp.family, {}).setdefault(smp.key, []).append(smp.seconds)
        if not any(v > 0 for v in cov.values()):
            alone.setdefault(smp.family, {}).setdefault(smp.key, []).append(smp.seconds)
    return {family: {key: (alone.get(family, {}).get(key)
                           if len(alone.get(family, {}).get(key, ())) >= MIN_ALONE else times)
                     for key, times in shapes.items()}
            for family, shapes in every.items()}


def jitter_ratios(entries) -> dict:
    """family -> (ratios, shapes, samples) for the profile's `device.jitter` (jitter.py): per shape
    that ran alone at least MIN_JITTER times, each sample's time (its kernel's: the dispatch is
    drawn apart, `reactions`) over the shape's mean; the family's
    ratios pooled and summarised by JITTER_QUANTILES quantiles (at the midpoints of equal
    slices), which the simulator draws from uniformly. Quantiles, not the ratios' own moments:
    the rare long stalls stay in the tables' means, not in the shape of every draw."""
    samples = op_samples(entries)
    shapes: dict = {}
    for smp, cov in zip(samples, _overlaps(samples)):
        if not any(v > 0 for v in cov.values()):
            shapes.setdefault((smp.family, smp.key), []).append(smp.seconds)
    pooled: dict = {}
    for (family, _shape), times in shapes.items():
        mean = statistics.fmean(times) if len(times) >= MIN_JITTER else 0.0
        if mean > 0:
            counts = pooled.setdefault(family, [0, []])
            counts[0] += 1
            counts[1].extend(t / mean for t in times)
    out = {}
    for family, (n_shapes, ratios) in pooled.items():
        ratios.sort()
        k = JITTER_QUANTILES
        picked = [ratios[min(len(ratios) - 1, int((i + 0.5) / k * len(ratios)))]
                  for i in range(k)]
        out[family] = (picked, n_shapes, len(ratios))
    return out


def op_samples(entries) -> list:
    """The op log as trace_import Samples; a collective's (or send/recv's) members each carry
    their group's transfer, to its first member's end (lags.py: the later members' lags are the
    profile's `device.comm_lag_us`)."""
    out = []
    firsts = first_ends(entries)
    for op, device, stream, start, end, xfer, *run in entries:
        if isinstance(op, Gemm) and op.count != 1:
            continue
        if isinstance(op, (Collective, SendRecv)):
            seconds = transfer_seconds(firsts, op, xfer, start, end, run)
        elif isinstance(op, (Gemm, Attention, Elementwise)):
            seconds = end - start
        else:
            continue
        family, key = _key(op)
        where = f"{run[0]}/{device}" if run else str(device)
        out.append(Sample(family, tuple(str(k) for k in key), seconds, where, str(stream),
                          start * 1e6, end * 1e6, op.name))
    return out


def file_label(label: str) -> str:
    """A strategy label as it appears in file names (``pp[tp=1]`` -> ``pp_tp_1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def variant_path(folder: str, stem: str, label: str) -> str:
    """Where write_inrun_profile puts a strategy's variant (``STEM-inrun-host-LABEL.yaml``)."""
    return os.path.join(folder, f"{stem}-inrun-host-{file_label(label)}.yaml")


def write_inrun_profile(calibrated: str, times: dict, what: str, log=print,
                        host=None, host_by_label: dict | None = None,
                        jitter: dict | None = None,
                        ops_by_label: dict | None = None,
                        lags: list | None = None) -> tuple[str, dict]:
    """``STEM-inrun.yaml`` beside `calibrated`: the same profile whose tables have the in-run
    means in place of the micro-benchmarked rows of the same shapes, the ops' jitter (`jitter`,
    from `jitter_ratios`), the collective members' lags (`lags`, from lags.member_lags) and,
    given `host` (a torchrt HostLog of all runs), the host's and the
    streams' reactions (`reactions`). With
    `host_by_label` (label -> HostLog), also one variant per strategy,
    ``STEM-inrun-host-LABEL.yaml``, with that strategy's own reactions (a host program's cost:
    liger's online scheduler costs far more per launch, and reacts later to events, than tp's
    loop; its sub stream wakes from its waits on a busier machine than pp's stages do). With
    `ops_by_label` (label -> that strategy's op log entries) a variant's tables and jitter are
    that strategy's own runs' too (``STEM-LABEL-inrun-FAMILY.csv``; shapes its runs did not
    reach keep the pooled rows): a shape's time in a run depends on what else the machine runs
    then, which is the strategy's own (pooled tables overpredicted iso by 35-46% beside tp's
    runs in a two-client workload, and by under 1% from iso's runs alone). Returns (the in-run
    profile, label -> variant path)."""
    folder = os.path.dirname(os.path.abspath(calibrated))
    stem = os.path.splitext(os.path.basename(calibrated))[0]
    data = read_yaml_file(calibrated, "calibrated profile")
    stamp = (f"measured: in-run, parasim validate on {platform.node() or 'this host'}, "
             f"{datetime.date.today().isoformat()}")
    replaced = _write_tables(data, folder, stem, times, f"{stamp}: means over {what}")
    if jitter:
        data["device"]["jitter"] = _jitter_section(jitter, f"{stamp}: over {what}")
    _put_lags(data, lags, f"{stamp}: over {what}")
    if host is not None and host.launches:
        data = reactions(data, host, f"{stamp}: over {what}")
    out = os.path.join(folder, f"{stem}-inrun.yaml")
    header = (f"# {os.path.basename(calibrated)} with in-run op times (parasim validate; "
              "docs/validation.md, 'Validate').\n")
    write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=120))
    variants, costs = {}, {}
    for label, own in (host_by_label or {}).items():
        if not own.launches:
            continue
        variant = reactions(data, own, f"{stamp}: in the calibration runs of {label} alone")
        safe = file_label(label)
        mine = (ops_by_label or {}).get(label)
        if mine:
            variant = copy.deepcopy(variant)
            src = f"{stamp}: means over the calibration runs of {label} alone"
            _write_tables(variant, folder, f"{stem}-{safe}", measured_times(mine), src)
            variant["device"].setdefault("jitter", {}).update(
                _jitter_section(jitter_ratios(mine), src))
            _put_lags(variant, member_lags(mine), src)
        costs[label] = {k: _mean_us(v) for k, v in variant["host"].items()}
        for key in (r.key for r in REACTIONS if r.section == "device"):
            costs[label][key] = _mean_us(variant["device"].get(key, {"value": 0.0}))
        variants[label] = variant_path(folder, stem, label)
        write_text(variants[label], header.replace("in-run op times", f"in-run op times and "
                                                   f"{label}'s host costs")
                   + yaml.safe_dump(variant, sort_keys=False, width=120))
    log("calibrate: in-run: " + ", ".join(f"{f} {n}" for f, n in replaced.items() if n)
        + f" shapes measured; wrote {out}")
    for label, c in costs.items():
        log(f"calibrate: in-run: {label}: host {c['launch_overhead_us']:.1f} us per launch, "
            f"wakes {c.get('wakeup_us', 0.0):.0f} us and runs callbacks "
            f"{c.get('callback_us', 0.0):.0f} us after an event; a stream wakes "
            f"{c['event_wait_us']:.0f} us after an event it waits on and "
            f"{c['idle_wakeup_us']:.0f} us after a launch when idle, takes "
            f"{c['dispatch_us']:.0f} us per op and {c['record_us']:.0f} us per event record "
            "(means)")
    return out, variants


def _put_lags(data: dict, lags: list | None, source: str) -> None:
    """`device.comm_lag_us` of profile `data` from `lags` (none: left as it was)."""
    section = lag_section(lags or [], source)
    if section is not None:
        data["device"]["comm_lag_us"] = section


def _jitter_section(jitter: dict, source: str) -> dict:
    """The profile's `device.jitter` entries from `jitter_ratios`' output."""
    return {family: {"value": [float(f"{r:.4g}") for r in ratios],
                     "source": (f"{source}: quantiles of the op's time over its shape's mean, "
                                f"{shapes} shapes run alone, {n} samples")}
            for family, (ratios, shapes, n) in sorted(jitter.items())}


def reactions(data: dict, host, source: str) -> dict:
    """A copy of profile `data` with the `host` section from a torchrt HostLog (`host_costs`) and
    the streams' mean reactions (REACTIONS, each where the runs had samples of it; else none):
    `device.dispatch_us`, a stream's time per op beyond the kernel's, from the moment it could
    start the op (the later of its launch and the end of the stream's previous item, or when
    its idle thread woke) to its start: the thread's bookkeeping; `device.idle_wakeup_us`, an
    idle stream's wake-up after a launch; `device.record_us`, its time recording an event; and
    `device.event_wait_us`, its wake-up after an event it waited on."""
    device = {k: v for k, v in data["device"].items()
              if k not in {r.key for r in REACTIONS if r.section == "device"}}
    device.update(_reaction_means(host, source, "device"))
    return {**data, "device": device, "host": host_costs(host, source)}


def host_costs(host, source: str) -> dict:
    """The profile's `host` section from a torchrt HostLog: busy seconds per SPMD launch, and the
    mean delays of a blocked host's wake-up and of a callback after its event (each where
    observed). Per SPMD launch: each simulated device has its own host clock (one host
    process per GPU, as SPMD engines run), while TorchRuntime's one host thread launches every
    device's ops in turn; an op launched on n devices costs the simulated hosts one launch time,
    in parallel, and the real thread n, so the busy time is spread over the SPMD launches (a
    launch on one device, as pp's, is one)."""
    out = {"launch_overhead_us": _us(host.busy_s / host.spmd_launches, f"{source}: the host "
                                     f"thread's busy time per SPMD launch ({host.spmd_launches} "
                                     f"of {host.launches} launches)")}
    out.update(_reaction_means(host, source, "host"))
    return out


@dataclass(frozen=True)
class Reaction:
    """A reaction time a profile takes from a HostLog: its profile section and key, the
    HostLog list it is the mean of, what it measures, and what one sample counts."""
    section: str
    key: str
    samples: str
    what: str
    each: str


REACTIONS = (
    Reaction("device", "dispatch_us", "dispatches_s",
             "delay from the moment a stream could start an op to its start", "ops"),
    Reaction("device", "event_wait_us", "event_waits_s",
             "delay from an event to the stream blocked on it resuming", "waits"),
    Reaction("device", "idle_wakeup_us", "idle_wakeups_s",
             "delay from a launch to an idle stream to its thread waking for it", "launches"),
    Reaction("device", "record_us", "records_s", "time a stream takes to record an event", "records"),
    Reaction("host", "wakeup_us", "wakeups_s",
             "delay from the event ending a blocking wait to the host resuming", "waits"),
    Reaction("host", "callback_us", "callbacks_s",
             "delay from an event to its host callbacks running", "events"),
)


def _reaction_means(host, source: str, section: str) -> dict:
    """The `section`'s reaction means (REACTIONS) that the HostLog observed."""
    return {r.key: _mean(getattr(host, r.samples), f"{source}: mean {r.what}", r.each)
            for r in REACTIONS if r.section == section and getattr(host, r.samples)}


def _mean(values_s: list, source: str, what: str) -> dict:
    """A reaction's mean in us. Means, not the lists of times a profile may also give (jitter.py):
    drawing them made tp's and iso's predictions noisier here, while it helped liger's
    (docs/validation.md, 'Errors measured'). Winsorised (`robust_mean`)."""
    return _us(robust_mean(values_s), f"{source} ({len(values_s)} {what}, the top "
               f"{1 - WINSOR_QUANTILE:.1%} capped at their {WINSOR_QUANTILE:.1%} quantile)")


def robust_mean(values: list) -> float:
    """The mean with the values above the WINSOR_QUANTILE quantile capped there. A run's long
    tail of reactions counts (a run's time is their sum), but one stall of a thread for a
    tenth of a second in a whole run (seen in one of a dozen runs here) would, as part of a
    per-op mean, lengthen every op of every predicted run. Fewer than 1 / (1 - quantile) values
    have no such tail to cap: their plain mean."""
    if len(values) * (1 - WINSOR_QUANTILE) < 1:
        return statistics.fmean(values)
    ordered = sorted(values)
    cap = ordered[int(WINSOR_QUANTILE * (len(ordered) - 1))]
    return statistics.fmean(min(v, cap) for v in ordered)


def _mean_us(entry: dict) -> float:
    value = entry["value"]
    return sum(value) / len(value) if isinstance(value, list) else value


def _us(seconds: float, source: str) -> dict:
    return {"value": float(f"{max(0.0, seconds) * 1e6:.6g}"), "source": source}


def _write_tables(data: dict, folder: str, stem: str, times: dict, source: str) -> dict:
    """Write ``STEM-inrun-FAMILY.csv`` per family (the profile's rows with the measured shapes
    replaced) and point `data`'s measured_tables at them; family -> shapes measured."""
    tables = data.setdefault("measured_tables", {})
    replaced = {}
    for family in sorted(set(times) | set(tables)):
        columns = FAMILIES[family][0]
        rows = _read_rows(os.path.join(folder, tables[family]["csv"])) if family in tables else []
        measured = times.get(family, {})
        kept = [r for r in rows if tuple(r.get(c, "") for c in columns) not in measured]
        for key, samples in sorted(measured.items()):
            kernel = statistics.fmean(samples)
            kept.append({**dict(zip(columns, key)), "seconds": f"{kernel:.9g}",
                         "samples": str(len(samples)), "source": source})
        name = f"{stem}-inrun-{family}.csv"
        write_text(os.path.join(folder, name), _csv(columns, kept))
        old = tables.get(family, {}).get("source", "")
        tables[family] = {"csv": name, "source": source + (
            f"; shapes the runs did not reach: {old}" if old and len(kept) > len(measured) else "")}
        replaced[family] = len(measured)
    return replaced


def _read_rows(path: str) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _csv(columns: tuple, rows: list) -> str:
    buf = io.StringIO()
    header = list(columns) + ["seconds", "samples", "source"]
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()
