"""`parasim import-trace`: measured tables and contention estimates from a PyTorch profiler trace.

    result = import_trace("trace.json", "tables/")      # or .json.gz

reads the trace (`read`), classifies its ops into parasim's op families (`classify`, `collect`),
aggregates repeated identical shapes by their median time and writes, in the output folder, one
CSV per family in the format `cost_tables.load_table_csv` reads (its key columns and `seconds`,
plus `samples` and `source`, which the loader ignores), `measured_tables.yaml` (the entries a
hardware profile's `measured_tables:` takes) and `contention.yaml` (slowdown estimates from
overlapping ops, `overlap`). Every file says where it comes from: "measured: imported from TRACE
(sha256 ...), torch VERSION, DATE". Nothing is written unless the trace yields at least one op;
every file is written atomically. See docs/validation.md, "Importing profiler traces".
"""
from __future__ import annotations

import datetime as _dt
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import yaml

from ..cost_tables import DTYPE_COLUMNS, FAMILIES, SECONDS, MeasuredTable
from ..errors import ConfigError
from ..io import write_text
from .collect import collect
from .overlap import MIN_COVER, estimate
from .read import load_trace

__all__ = ["ImportResult", "import_trace", "provenance"]


@dataclass
class ImportResult:
    out_dir: str
    source: str                                     # the provenance line
    files: list = field(default_factory=list)       # paths written
    rows: dict = field(default_factory=dict)        # family -> (table rows, samples)
    skipped: Counter = field(default_factory=Counter)
    contention: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)      # family -> MeasuredTable


def provenance(trace, date: str) -> str:
    torch = f"torch {trace.torch_version}" if trace.torch_version else \
        "torch version not in the trace's metadata"
    return f"measured: imported from {trace.path} (sha256 {trace.sha256}), {torch}, {date}"


def import_trace(path: str, out_dir: str, dtypes=(), date: str | None = None,
                 trace=None) -> ImportResult:
    """Import `path` (or the already loaded `trace` of it) into `out_dir`. ConfigError (nothing
    written) for a file that is not a readable Kineto trace, or a trace without one op parasim
    can use."""
    trace = trace if trace is not None else load_trace(path)
    samples, skipped = collect(trace, tuple(dtypes))
    for s in [s for s in samples if s.seconds <= 0 or any(v <= 0 for _, v in s.key
                                                          if not isinstance(v, (str, bool)))]:
        skipped[f"{s.name}: zero duration or zero size"] += 1
        samples.remove(s)
    if not samples:
        why = "; ".join(f"{n} x {r}" for r, n in skipped.most_common(3))
        raise ConfigError(path, "traceEvents", "no op parasim can use (GEMMs, attention, "
                          "elementwise ops, collectives, send/recv with recorded shapes)"
                          + (f"; left out: {why}" if why else f" among {len(trace.cpu) + len(trace.gpu)} "
                             "complete events"))
    date = date or _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    source = provenance(trace, date)
    result = ImportResult(out_dir, source, skipped=skipped)
    grouped = defaultdict(list)
    for s in samples:
        grouped[(s.family, s.key)].append(s.seconds)
    per_family = defaultdict(list)
    for (family, key), times in grouped.items():
        per_family[family].append({**dict(key), SECONDS: statistics.median(times), "samples": len(times)})
    # build every table first: a table the loader would refuse stops the import before any write
    for family in sorted(per_family, key=list(FAMILIES).index):
        rows = sorted(per_family[family], key=lambda r: tuple(str(r[c]) if c in DTYPE_COLUMNS else r[c]
                                                              for c in FAMILIES[family][0]))
        result.tables[family] = MeasuredTable.from_rows(family, rows, source, where=path)
        result.rows[family] = (len(rows), sum(r["samples"] for r in rows))
        per_family[family] = rows
    result.contention = estimate(samples)
    os.makedirs(out_dir, exist_ok=True)
    for family in result.tables:
        rows = per_family[family]
        target = os.path.join(out_dir, f"{family}.csv")
        write_text(target, _csv(family, rows, source))
        result.files.append(target)
    target = os.path.join(out_dir, "measured_tables.yaml")
    write_text(target, _tables_yaml(result, source))
    result.files.append(target)
    target = os.path.join(out_dir, "contention.yaml")
    write_text(target, _contention_yaml(result.contention, trace, source))
    result.files.append(target)
    return result


def _cell(column: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if column == SECONDS:
        return f"{value:.9g}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _csv(family: str, rows: list, source: str) -> str:
    header = list(FAMILIES[family][0]) + [SECONDS, "samples", "source"]
    quoted = '"' + source.replace('"', '""') + '"'
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join([_cell(c, r[c]) for c in header[:-1]] + [quoted]))
    return "\n".join(lines) + "\n"


def _tables_yaml(result: ImportResult, source: str) -> str:
    head = (f"# {source}\n"
            "# The measured_tables entries of a hardware profile (docs/hardware.md, Measured tables):\n"
            "# copy them into a profile YAML. `csv` is read relative to the profile's folder, so keep\n"
            "# the profile in this folder or make the paths absolute. Columns beside the table's\n"
            "# (samples: how many ops the median is over; source) are ignored by the loader.\n")
    body = {"measured_tables": {family: {"csv": f"{family}.csv", "source": source}
                                for family in result.tables}}
    return head + yaml.safe_dump(body, sort_keys=False, width=1000)


METHOD = ("ops of different classes (compute: GEMM, attention; memory: elementwise; comm: "
          "collectives, send/recv) overlapping in time on one device (GPU streams, or threads of "
          "one process). A sample is isolated when nothing on another stream/thread of its device "
          f"overlaps it, overlapped by class b when class-b ops there cover >= {MIN_COVER:.0%} of "
          "it and no third class overlaps it. For each shape seen both isolated and overlapped by "
          "b: median(overlapped) / median(isolated); the estimate is the median over shapes.")


def _contention_yaml(found: dict, trace, source: str) -> str:
    head = f"# {source}\n# Contention slowdowns estimated from overlapping ops in the trace.\n"
    doc = {"source": source, "method": METHOD, "overlap_found": found["overlap_found"],
           "overlapped_samples": found["overlapped_samples"]}
    if not found["overlap_found"]:
        doc["note"] = ("no overlap to estimate from: no two ops of this trace ran at once on one "
                       "device (on different streams or threads); nothing is estimated")
    elif not found["estimates"]:
        doc["note"] = ("ops overlapped, but no shape was seen both isolated and overlapped by a "
                       "single other class; nothing is estimated")
    slowdown = {}
    for e in found["estimates"]:
        detail = (f"{source}; median over {e['shapes']} shape(s) of overlapped/isolated median "
                  f"time ({e['overlapped_samples']} overlapped, {e['isolated_samples']} isolated "
                  "samples)")
        if e["ratio"] < 1:
            detail += f"; measured ratio {e['ratio']} < 1, offered as 1.0"
        slowdown[e["pair"]] = {"value": max(1.0, e["ratio"]), "source": detail}
    if slowdown:
        head += "# `slowdown` has the form of a profile's contention.slowdown entries.\n"
        doc["slowdown"] = slowdown
    doc["estimates"] = found["estimates"]
    doc["not_estimated"] = found["not_estimated"]
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)
