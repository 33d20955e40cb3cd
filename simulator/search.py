"""`parasim search SPEC.yaml`: the best configuration under latency SLOs.

A spec is an experiment (model, hardware, devices, strategies, serving, workload; any scalar a list:
the search space, as in a sweep) plus a `search:` section::

    search:
      load: {find: max_rate, low_rps: 0.5, high_rps: 32, tolerance: 0.05, keep_up: 0.9}
                                                     # or a fixed rate: {rate_rps: 4}
      slo: {ttft_p90_s: 1.0, tpot_p90_s: 0.05}      # any of ttft_p90_s, tpot_p90_s, e2e_p90_s
      objective: goodput_per_gpu                     # the only one

Each configuration (a sweep point x a strategy variant) is validated as a run's job: one that cannot
fit in memory (or whose TP degree does not divide the model) is pruned with the reason. With
`find: max_rate` the arrival is Poisson and the search bisects the rate per configuration, on a
log scale, for the highest one whose measured requests meet every SLO percentile bound and whose
measured throughput keeps up with it (at least `keep_up` of the rate: a finite run can absorb a
burst it could not sustain; SLO latencies grow with load, so the bound is crossed once; give
enough requests that a burst of them outlasts the batch): a configuration that misses at `low_rps`
has no rate; one that meets at `high_rps` is reported at that bound. Probes of all configurations
run round by round in worker processes or as Ray tasks (``--backend ray``) through the run cache
(OUT/.cache), so a killed search resumes where it stopped.

The winner has the highest goodput per GPU (requests meeting the SLO per second, over the devices
it uses) at its best rate. Outputs: `search.csv` (every configuration: status, best rate, goodput,
per-GPU throughput, latency percentiles at the best rate, probes), `pareto.png` (per-GPU goodput
against p90 end-to-end latency, the Pareto front marked) and `best.yaml`, a ready-to-run experiment
of the winner at its best rate.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import pandas as pd
import yaml

from .errors import ConfigError
from .experiment import Job, load_experiment, read_yaml
from .io import write_csv, write_text
from .jobs import validate_jobs
from .schema import Section

SLO_METRICS = {"ttft_p90_s": "ttft_p90_s", "tpot_p90_s": "tpot_p90_s", "e2e_p90_s": "jct_p90_s"}
OBJECTIVES = ("goodput_per_gpu",)
MAX_RATE_RPS = 1e6


@dataclass(frozen=True)
class Load:
    find: bool                    # bisect for the highest rate meeting the SLO
    rate_rps: float = 0.0         # fixed rate (find False)
    low_rps: float = 0.0
    high_rps: float = 0.0
    tolerance: float = 0.05       # stop when high / low <= 1 + tolerance
    keep_up: float = 0.9          # measured throughput must reach this share of the rate


@dataclass(frozen=True)
class SearchSpec:
    path: str
    name: str
    load: Load
    slo: dict                     # SLO key -> bound (seconds)
    jobs: list                    # one per configuration (the rate still unset)
    pruned: dict                  # job index -> reason


@dataclass
class Config:
    """One configuration's search state."""
    job: Job
    low: float = 0.0
    high: float = 0.0
    best: Optional[dict] = None   # summary row at the best rate so far
    best_rate: float = 0.0
    probes: int = 0
    status: str = "searching"


def load_search(path: str) -> SearchSpec:
    data = read_yaml(path)
    top = Section(data, path)
    if not top.has("search"):
        raise top.error("search", "is required but missing: a search spec is an experiment with "
                                  "a search: {load: ..., slo: ...} section")
    sec = top.section("search")
    load = _load(sec.section("load"), path)
    slo_sec = sec.section("slo")
    slo = {}
    for key in list(slo_sec.data):
        if key not in SLO_METRICS:
            raise slo_sec.error(key, "unknown SLO; allowed: " + ", ".join(SLO_METRICS))
        slo[key] = slo_sec.get(key, float, min=0.0, min_open=True)
    if not slo:
        raise sec.error("slo", "needs at least one of: " + ", ".join(SLO_METRICS))
    sec.get("objective", str, OBJECTIVES[0], choices=OBJECTIVES)
    sec.done()
    rest = {k: v for k, v in top.data.items() if k != "search"}
    workload = rest.get("workload")
    if isinstance(workload, dict) and "arrival" in workload:
        raise ConfigError(path, "workload.arrival", "the search sets the arrival (Poisson at the "
                          "probed or given rate); remove it")
    if "outputs" in rest:
        raise ConfigError(path, "outputs", "a search writes search.csv, pareto.png and best.yaml; "
                          "remove outputs")
    if isinstance(workload, dict):
        rest["workload"] = dict(workload, arrival={"kind": "poisson", "rate_rps": 1.0})
    jobs = load_experiment(path, data=rest)
    if not jobs:
        raise ConfigError(path, "strategies", "the search space is empty")
    errors = validate_jobs(jobs) if len(jobs) > 1 else _one(jobs)
    pruned = {j.index: e for j, e in zip(jobs, errors) if e}
    return SearchSpec(path, jobs[0].experiment, load, slo, jobs, pruned)


def _one(jobs: list) -> list:
    """A space of one configuration: an infeasible one is bad input (as a run's would be)."""
    from .jobs import build
    build(jobs[0])
    return [None]


def _load(sec: Section, path: str) -> Load:
    if sec.has("rate_rps"):
        rate = sec.get("rate_rps", float, min=0.0, min_open=True, max=MAX_RATE_RPS)
        sec.done()
        return Load(False, rate_rps=rate)
    sec.get("find", str, "max_rate", choices=("max_rate",))
    low = sec.get("low_rps", float, 0.25, min=0.0, min_open=True, max=MAX_RATE_RPS)
    high = sec.get("high_rps", float, 64.0, min=0.0, min_open=True, max=MAX_RATE_RPS)
    tol = sec.get("tolerance", float, 0.05, min=0.001, max=1.0)
    keep = sec.get("keep_up", float, 0.9, min=0.0, max=1.0)
    sec.done()
    if high <= low:
        raise sec.error("high_rps", f"must exceed low_rps ({low}), got {high}")
    return Load(True, low_rps=low, high_rps=high, tolerance=tol, keep_up=keep)


def with_rate(job: Job, rate: float, index: int) -> Job:
    cfg = copy.deepcopy(job.config)
    cfg["workload"]["arrival"] = {"kind": "poisson", "rate_rps": float(rate)}
    point = dict(job.point, **{"workload.arrival.rate_rps": float(rate)})
    return replace(job, index=index, config=cfg, point=point)


def meets(row: dict, slo: dict, rate: float = 0.0, keep_up: float = 0.0) -> bool:
    """Every SLO percentile bound holds (a missing or NaN metric fails: it was not measured), and
    the run kept up with the offered `rate`: its throughput reached `keep_up` of it (a finite run
    can absorb a burst far beyond what it sustains; this refuses that)."""
    if row.get("error"):
        return False
    tput, offered = row.get("throughput_rps"), row.get("offered_rps", rate)
    if keep_up and not (isinstance(tput, (int, float)) and tput >= keep_up * offered):
        return False
    for key, bound in slo.items():
        v = row.get(SLO_METRICS[key])
        if v is None or not isinstance(v, (int, float)) or math.isnan(v) or v > bound:
            return False
    return True


def next_rate(c: Config, load: Load) -> Optional[float]:
    """The next rate to probe for `c`, or None when its search is over (status set)."""
    if not load.find:
        return load.rate_rps if c.probes == 0 else None
    if c.probes == 0:
        return load.low_rps
    if c.probes == 1:
        if c.best is None:
            c.status = f"misses the SLO at low_rps ({load.low_rps:g} req/s)"
            return None
        return load.high_rps
    if c.best_rate >= load.high_rps:
        c.status = f"meets the SLO up to high_rps ({load.high_rps:g} req/s), the search bound"
        return None
    if c.high / c.low <= 1.0 + load.tolerance:
        c.status = "ok"
        return None
    return math.sqrt(c.low * c.high)


def record(c: Config, rate: float, row: dict, slo: dict, load: Load) -> None:
    c.probes += 1
    ok = meets(row, slo, rate, load.keep_up if load.find else 0.0)
    if ok and rate >= c.best_rate:
        c.best, c.best_rate = row, rate
    if not load.find:
        c.status = "ok" if ok else "misses the SLO at rate_rps"
        if c.best is None:
            c.best, c.best_rate = row, rate
        return
    if ok:
        c.low = max(c.low, rate)
    else:
        c.high = rate if c.high == 0.0 else min(c.high, rate)
    if c.probes == 1 and ok:
        c.high = load.high_rps


@dataclass
class SearchResult:
    spec: SearchSpec
    frame: pd.DataFrame
    winner: Optional[int] = None      # row of frame
    runner_up: Optional[int] = None
    written: list = field(default_factory=list)


def run_search(path: str, out_dir: str, workers: int = 1, progress=print, backend: str = "local",
               ray_address: Optional[str] = None) -> SearchResult:
    """Search the spec at `path` into `out_dir`; probes run on `backend` (`open_backend`)."""
    from .runner import check_out_dir
    from .workers import open_backend
    spec = load_search(path)
    check_out_dir(out_dir)
    with open_backend(backend, workers, ray_address) as pool:
        configs = _bisect(spec, out_dir, pool, progress)
    frame = _frame(spec, configs)
    result = SearchResult(spec, frame)
    _rank(result)
    result.written = _write(result, out_dir)
    return result


def _bisect(spec: SearchSpec, out_dir: str, pool, progress) -> dict:
    configs = {j.index: Config(j) for j in spec.jobs if j.index not in spec.pruned}
    probe_index, rnd = len(spec.jobs), 0
    while True:
        todo = []
        for c in configs.values():
            if c.status != "searching":
                continue
            rate = next_rate(c, spec.load)
            if rate is not None:
                todo.append((c, rate, with_rate(c.job, rate, probe_index)))
                probe_index += 1
        if not todo:
            break
        rnd += 1
        progress(f"round {rnd}: {len(todo)} probe(s) of {sum(c.status == 'searching' for c in configs.values())} configuration(s)")
        rows = _probe(out_dir, [j for _, _, j in todo], pool)
        for (c, rate, job) in todo:
            record(c, rate, rows[job.index], spec.slo, spec.load)
    return configs


def _probe(out_dir: str, jobs: list, pool) -> dict:
    """Summary rows of `jobs` (by job index), from the cache where it has them, the others run
    on `pool` (a `simulator.workers.open_backend` backend)."""
    from .runner import _cached, _store, _work, lost_job
    rows, todo = {}, []
    for job in jobs:
        hit = _cached(out_dir, job)
        if hit is not None:
            rows[job.index] = _with_offered(hit)
        else:
            todo.append(job)
    by_index = {j.index: j for j in todo}

    def done(res) -> None:
        rows[res.index] = _with_offered(res)
        if res.error is None:
            _store(out_dir, by_index[res.index], res)
    pool.run(_work, [(j, False, None, "sim") for j in todo], on_result=done,
             on_wait=lambda: None, lost=lost_job)
    return rows


def _with_offered(res) -> dict:
    """The run's summary row and `offered_rps`, the arrival rate its measured requests actually
    had ((n - 1) over the span of their arrivals: Poisson draws wander from the asked rate)."""
    row = dict(res.row)
    req = res.requests
    if req is not None and len(req):
        m = req[req["measured"]] if "measured" in req else req
        span = float(m["arrival_s"].max() - m["arrival_s"].min()) if len(m) > 1 else 0.0
        if span > 0:
            row["offered_rps"] = (len(m) - 1) / span
    return row


COLUMNS = ["strategy", "devices", "status", "best_rate_rps", "goodput_rps", "goodput_per_gpu_rps",
           "throughput_per_gpu_rps", "output_tokens_per_gpu_s", "ttft_p90_s", "tpot_p90_s",
           "jct_p90_s", "probes"]


def _frame(spec: SearchSpec, configs: dict) -> pd.DataFrame:
    rows = []
    for job in spec.jobs:
        point = {k: v for k, v in job.point.items()}
        base = {"strategy": job.label, "devices": job.config.get("devices"), **point}
        if job.index in spec.pruned:
            rows.append({**base, "status": "pruned: " + spec.pruned[job.index], "probes": 0})
            continue
        c = configs[job.index]
        row = {**base, "status": c.status, "probes": c.probes}
        if c.best is not None and c.status != "searching":
            b, dev = c.best, float(job.config.get("devices") or 1)
            good = b.get("goodput_rps")
            if good is None or (isinstance(good, float) and math.isnan(good)):
                good = b.get("throughput_rps") if meets(b, spec.slo) else 0.0
            row.update(best_rate_rps=c.best_rate, goodput_rps=good, goodput_per_gpu_rps=good / dev,
                       throughput_per_gpu_rps=b.get("throughput_rps", math.nan) / dev,
                       output_tokens_per_gpu_s=b.get("output_tokens_per_s", math.nan) / dev,
                       ttft_p90_s=b.get("ttft_p90_s"), tpot_p90_s=b.get("tpot_p90_s"),
                       jct_p90_s=b.get("jct_p90_s"))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = math.nan
    swept = [c for c in frame.columns if c not in COLUMNS]
    return frame[COLUMNS[:2] + swept + COLUMNS[2:]]


def _rank(result: SearchResult) -> None:
    f = result.frame
    ranked = (f["status"] == "ok") | f["status"].str.startswith("meets the SLO up to")
    ok = f[ranked & f["goodput_per_gpu_rps"].notna()]
    ok = ok[ok["goodput_per_gpu_rps"] > 0]
    if ok.empty:
        return
    order = ok.sort_values(["goodput_per_gpu_rps", "jct_p90_s"], ascending=[False, True],
                           kind="stable").index.tolist()
    result.winner = order[0]
    result.runner_up = order[1] if len(order) > 1 else None


def explain(result: SearchResult) -> list[str]:
    """Console lines: the winner and why it beats the runner-up."""
    f, lines = result.frame, []
    if result.winner is None:
        return ["no configuration meets the SLO at any probed rate; see search.csv"]
    w = f.loc[result.winner]
    lines.append(f"winner: {_describe(w)}: {w['goodput_per_gpu_rps']:.3g} req/s per GPU meeting "
                 f"the SLO (best rate {w['best_rate_rps']:.3g} req/s; "
                 f"p90 TTFT {w['ttft_p90_s']:.3g} s, TPOT {w['tpot_p90_s']:.3g} s)")
    if result.runner_up is not None:
        r = f.loc[result.runner_up]
        gain = w["goodput_per_gpu_rps"] / r["goodput_per_gpu_rps"] - 1.0
        binding = _binding(r, result.spec.slo)
        if gain <= 0:
            why = ("it ties with the winner, which has the lower p90 latency or comes first in "
                   "the search space")
        else:
            why = (f"the winner serves {gain:.1%} more per GPU; the runner-up's {binding} is the "
                   "SLO it reaches first as the rate grows")
        lines.append(f"runner-up: {_describe(r)}: {r['goodput_per_gpu_rps']:.3g} req/s per GPU; "
                     + why)
    return lines


def _describe(row) -> str:
    extra = [f"{k.split('.')[-1]}={row[k]}" for k in row.index
             if k not in COLUMNS and not (isinstance(row[k], float) and math.isnan(row[k]))]
    extra.insert(0, f"{int(row['devices'])} GPUs")
    return row["strategy"] + f" ({', '.join(extra)})"


def _binding(row, slo: dict) -> str:
    """The SLO closest to its bound at the best rate."""
    best = max(slo, key=lambda k: (row.get(SLO_METRICS[k]) or 0.0) / slo[k])
    return best.replace("_s", "").replace("_", " ")


def _write(result: SearchResult, out_dir: str) -> list:
    from .plots import plot_pareto
    written = [os.path.join(out_dir, "search.csv")]
    write_csv(written[0], result.frame)
    if plot_pareto(result.frame, os.path.join(out_dir, "pareto.png"), result.winner):
        written.append(os.path.join(out_dir, "pareto.png"))
    best = os.path.join(out_dir, "best.yaml")
    if result.winner is not None:
        write_text(best, best_yaml(result))
        written.append(best)
    elif os.path.exists(best):
        os.remove(best)
    return written


def best_yaml(result: SearchResult) -> str:
    """The winner as a ready-to-run experiment: its configuration at its best rate."""
    spec, row = result.spec, result.frame.loc[result.winner]
    job = next(j for j in spec.jobs if j.label == row["strategy"]
               and all(str(j.point.get(k)) == str(row[k]) for k in j.point))
    cfg: dict[str, Any] = copy.deepcopy(job.config)
    cfg["name"] = f"{spec.name}-best"
    cfg["workload"]["arrival"] = {"kind": "poisson", "rate_rps": float(row["best_rate_rps"])}
    for key in ("hardware", "model"):          # relative files: from the spec's folder
        value = cfg.get(key)
        if isinstance(value, str) and (os.sep in value or value.endswith((".yaml", ".json"))):
            cfg[key] = os.path.normpath(os.path.join(job.base_dir, value))
    cfg["strategies"] = [dict(job.strategy, label=job.label)]
    head = (f"# The winner of search {spec.name!r} ({os.path.basename(spec.path)}): "
            f"{row['goodput_per_gpu_rps']:.4g} req/s per GPU meeting the SLO at "
            f"{row['best_rate_rps']:.4g} req/s.\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)
