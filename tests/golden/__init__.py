"""Golden results: every shipped experiment, reduced to a CI-sized run, pinned to the last digit.

Each experiment in ``experiments/*.yaml`` has a reduction in `REDUCTIONS`: a few keys of the shipped
YAML overridden (fewer requests, a subset of its sweep points, fewer layers), everything else as
shipped (model, hardware, devices, seed, every strategy and strategy variant, the workload's
distributions). `reduced_config` loads the shipped file and applies the overrides, so the shipped
experiment and its golden stay linked: change the shipped YAML and the golden test fails until the
goldens are regenerated.

Rules the overrides must follow (checked by `reduced_config`):

* a key must exist in the shipped YAML; ``model.layers`` may also turn a preset name into
  ``{preset: NAME, layers: N}`` (a *list* of preset names, a model sweep, cannot take it);
* a swept key (a list in the shipped YAML) gets a non-empty sub-list of its values: the golden
  pins a subset of the shipped sweep points;
* a number can only shrink (``requests``, ``warmup``, ``layers``);
* ``name``, ``seed``, ``hardware``, ``devices`` and ``strategies`` are never overridden.

Per experiment, ``tests/golden/`` holds ``NAME.config.yaml`` (the reduced experiment as run),
``NAME.summary.csv`` (one row per strategy and sweep point, every summary column) and
``NAME.requests.csv`` (one row per request of every run). Rows are sorted by their key (strategy,
sweep point, request); floats are written with ``repr`` (full precision, round trip).

Regenerate (deliberately; explain why in the commit message): ``python -m tests.golden --update``.
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from simulator.experiment import load_experiment
from simulator.runner import run_experiment

GOLDEN_DIR = Path(__file__).resolve().parent
REPO = GOLDEN_DIR.parents[1]
EXPERIMENTS = REPO / "experiments"

RTOL = 1e-9          # relative tolerance of numeric columns: float noise only
ATOL = 1e-12         # absolute floor (seconds): noise of a difference of two times near 20 s
MAX_SHOWN = 20       # differences printed per experiment

# What each golden overrides in its shipped experiment (dotted keys into the YAML).
REDUCTIONS: dict[str, dict[str, Any]] = {
    "quickstart": {
        "model.layers": 4,
        "workload.requests": 8,
        "workload.arrival.rate_rps": [2.0, 12.0],
    },
    "tp-vs-pp-a100-pcie": {
        "model.layers": 4,
        "workload.requests": 12,
        "workload.arrival.rate_rps": [4.0, 32.0],
    },
    # The model sweep ([opt-30b, llama-2-70b]) is a list of preset names, which cannot take a
    # `layers` override: both models keep all their layers (single-pass prefill, 2 requests, so the
    # run stays short); the failing point (llama-2-70b on 4 x 24 GB) is pinned with its error.
    "iso-rtx4090": {
        "workload.prompt_tokens": [1024, 8192],
    },
    "iso-a800": {
        "workload.prompt_tokens": [1024, 8192],
    },
    "liger-4-devices": {
        "model.layers": 4,
        "workload.requests": 24,
        "workload.warmup": 4,
        "workload.arrival.rate_rps": [8.0, 64.0],
    },
    # Llama-2-7B with 4 of its layers; 8 requests (1 warm-up) drawn from the Azure conversation
    # trace, the lightest and the heaviest rate; the TPOT bound scaled down with the layers (so
    # that some requests miss it and goodput differs from throughput).
    "serving-azure-conv": {
        "model.layers": 4,
        "workload.requests": 8,
        "workload.warmup": 1,
        "workload.arrival.rate_rps": [0.2, 0.8],
        "slo.tpot_s": 0.0015,
    },
    # Llama-3-70B with 4 of its layers, 12 requests (2 warm-up), the lightest and the heaviest
    # rate: every strategy's continuous-batching host, mixed steps and the scheduler pinned.
    # Llama-3-70B with 4 of its layers, 12 requests (2 warm-up) at the higher rate, both execution
    # modes: the graphs numbers (launch, kernel overhead, custom all-reduce) pinned beside eager.
    "graphs-vs-eager-h100": {
        "model.layers": 4,
        "workload.requests": 12,
        "workload.warmup": 2,
        "workload.arrival.rate_rps": [6.0],
    },
    "serving-70b-h100": {
        "model.layers": 4,
        "workload.requests": 12,
        "workload.warmup": 2,
        "workload.arrival.rate_rps": [2.0, 12.0],
    },
    # Llama-2-13B with 4 of its layers; 100 requests, so that the step (at 40 s) is still inside
    # the run: 2 req/s before it, 12 after.
    "adaptive-step": {
        "model.layers": 4,
        "workload.requests": 100,
    },
    "liger-artifact-2xv100": {
        "workload.requests": 24,
        "workload.warmup": 4,
    },
}

FROZEN_KEYS = ("name", "seed", "hardware", "devices", "strategies")


class ReductionError(ValueError):
    """A reduction that breaks the rules above (or no longer fits its shipped experiment)."""


def shipped_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if not _is_search(p))


def _is_search(path) -> bool:
    """A search spec (`parasim search`, a `search:` section) is not an experiment to pin."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return isinstance(data, dict) and "search" in data


def shipped_config(name: str) -> dict:
    with open(EXPERIMENTS / f"{name}.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def reduced_config(name: str) -> dict:
    """The shipped experiment `name` with its `REDUCTIONS` applied (see the module's rules)."""
    data = shipped_config(name)
    out = copy.deepcopy(data)
    for key, value in REDUCTIONS[name].items():
        top = key.split(".")[0]
        if top in FROZEN_KEYS:
            raise ReductionError(f"{name}: {key!r} may not be overridden (golden keeps {top} as shipped)")
        if key == "model.layers" and isinstance(out.get("model"), str):
            out["model"] = {"preset": out["model"]}
            old: Any = math.inf
        else:
            old = _get(out, key, name)
        _check_override(name, key, old, value)
        _set(out, key, value)
    return out


def _get(node: Any, key: str, name: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ReductionError(f"{name}: {key!r} is not in experiments/{name}.yaml; update "
                                 "REDUCTIONS in tests/golden/__init__.py")
        node = node[part]
    return node


def _set(node: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _check_override(name: str, key: str, old: Any, new: Any) -> None:
    if isinstance(old, list):
        if not isinstance(new, list) or not new or any(v not in old for v in new):
            raise ReductionError(f"{name}: {key!r} must be a non-empty subset of the shipped sweep "
                                 f"{old!r}, got {new!r}")
    elif isinstance(old, (int, float)) and not isinstance(old, bool):
        if not isinstance(new, (int, float)) or isinstance(new, bool) or new > old:
            raise ReductionError(f"{name}: {key!r} may only shrink ({old!r} shipped), got {new!r}")
    else:
        raise ReductionError(f"{name}: {key!r} is {old!r} in the shipped YAML: only sweep lists and "
                             "numbers can be reduced")


# ------------------------------------------------------------------------------ running

@dataclass
class Result:
    """One reduced run, normalised: rows of plain values (str, int, float), sorted by key."""
    name: str
    keys: list[str]                    # the summary row key: strategy, then each swept key
    summary: list[dict]
    requests: list[dict]


def sweep_keys(config_path: str) -> list[str]:
    jobs = load_experiment(config_path)
    return ["strategy"] + list(dict.fromkeys(k for j in jobs for k in j.point))


def run_reduced(name: str, work_dir: str, profiles: Optional[dict[str, str]] = None) -> Result:
    """Run the reduced experiment `name` through the normal runner into `work_dir`.

    `profiles` maps a built-in profile name to a YAML path that replaces it (the sensitivity
    tests use perturbed copies named like the original, so the `hardware` column is unchanged)."""
    config = reduced_config(name)
    if profiles:
        hw = config["hardware"]
        config["hardware"] = ([profiles.get(h, h) for h in hw] if isinstance(hw, list)
                              else profiles.get(hw, hw))
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    out = os.path.join(work_dir, "out")
    # traced=set(): no timeline or Perfetto file (renderings of the trace, not predictions)
    run_experiment(path, out, progress=False, quiet=True, traced=set())
    keys = sweep_keys(path)
    # a swept `hardware` column holds the replacing path: give it back its profile name; and cut
    # the temporary folder from error messages
    cuts = {p: n for n, p in (profiles or {}).items()}
    cuts[os.path.dirname(os.path.abspath(path)) + os.sep] = ""
    summary = _read_rows(os.path.join(out, "summary.csv"), cuts)
    requests = _read_rows(os.path.join(out, "requests.csv"), cuts)
    return Result(name, keys, _sorted(summary, keys), _sorted(requests, keys + ["request"]))


def _read_rows(path: str, cuts: dict[str, str]) -> list[dict]:
    """A runner CSV as normalised rows, each key of `cuts` replaced by its value."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    for old, new in cuts.items():
        text = text.replace(old, new)
    return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def parse_cell(text: str) -> Any:
    """'' -> '', integers -> int, floats (nan, inf too) -> float, anything else as is."""
    if text == "":
        return ""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return (0, value, "")
    return (1, 0, str(value))


def _sorted(rows: list[dict], keys: list[str]) -> list[dict]:
    return sorted(rows, key=lambda r: tuple(_sort_key(r.get(k, "")) for k in keys))


# ------------------------------------------------------------------------------ golden files

def golden_paths(name: str) -> dict[str, Path]:
    return {"config": GOLDEN_DIR / f"{name}.config.yaml",
            "summary": GOLDEN_DIR / f"{name}.summary.csv",
            "requests": GOLDEN_DIR / f"{name}.requests.csv"}


def write_rows(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([format_cell(r.get(c, "")) for c in columns])


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_golden(result: Result) -> list[Path]:
    paths = golden_paths(result.name)
    with open(paths["config"], "w", encoding="utf-8") as fh:
        fh.write(f"# Generated by `python -m tests.golden --update` from experiments/{result.name}.yaml\n"
                 "# with the overrides in tests/golden/__init__.py (REDUCTIONS). Do not edit by hand.\n")
        yaml.safe_dump(reduced_config(result.name), fh, sort_keys=False)
    write_rows(paths["summary"], result.summary)
    write_rows(paths["requests"], result.requests)
    return list(paths.values())


def load_golden(name: str) -> tuple[dict, list[dict], list[dict]]:
    paths = golden_paths(name)
    with open(paths["config"], encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    return config, read_rows(paths["summary"]), read_rows(paths["requests"])


# ------------------------------------------------------------------------------ comparison

@dataclass(frozen=True)
class Difference:
    table: str              # "summary" or "requests"
    row: str                # "strategy=tp, workload.arrival.rate_rps=2.0"
    column: str             # "" for a missing or extra row
    golden: Any
    now: Any

    def describe(self) -> str:
        where = f"{self.table} [{self.row}]"
        if self.column == "":
            return f"{where}: {self.golden if self.golden else self.now}"
        change = ""
        if _is_number(self.golden) and _is_number(self.now) and self.golden != 0 \
                and not math.isnan(self.golden) and not math.isnan(self.now):
            change = f" ({(self.now - self.golden) / abs(self.golden) * 100:+.3g}%)"
        return f"{where} {self.column}: golden {self.golden!r}, now {self.now!r}{change}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def same_value(golden: Any, now: Any) -> bool:
    if _is_number(golden) and _is_number(now):
        if math.isnan(golden) or math.isnan(now):
            return math.isnan(golden) and math.isnan(now)
        return math.isclose(golden, now, rel_tol=RTOL, abs_tol=ATOL)
    return golden == now


def compare_rows(table: str, golden: list[dict], now: list[dict], keys: list[str]) -> list[Difference]:
    """Every difference between two row sets keyed by `keys`: missing rows, extra rows, then cells
    (columns present in only one side count as differences on every row)."""
    def index(rows: list[dict]) -> dict[tuple, dict]:
        out: dict[tuple, dict] = {}
        for r in rows:
            out[tuple(format_cell(r.get(k, "")) for k in keys)] = r
        return out

    def label(key: tuple) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(keys, key))

    g, n = index(golden), index(now)
    diffs = []
    for key in g:
        if key not in n:
            diffs.append(Difference(table, label(key), "", "row missing now (in the golden)", ""))
    for key in n:
        if key not in g:
            diffs.append(Difference(table, label(key), "", "", "extra row now (not in the golden)"))
    for key, grow in g.items():
        nrow = n.get(key)
        if nrow is None:
            continue
        for col in dict.fromkeys(list(grow) + list(nrow)):
            gv, nv = grow.get(col, "<no column>"), nrow.get(col, "<no column>")
            if not same_value(gv, nv):
                diffs.append(Difference(table, label(key), col, gv, nv))
    if len(golden) != len(g) or len(now) != len(n):
        diffs.append(Difference(table, "all", "", f"duplicate row keys: golden {len(golden)} rows "
                                f"/ {len(g)} keys, now {len(now)} rows / {len(n)} keys", ""))
    return diffs


def compare(result: Result) -> list[Difference]:
    """Differences between a fresh run and the stored golden of the same experiment."""
    config, summary, requests = load_golden(result.name)
    diffs = []
    if config != reduced_config(result.name):
        diffs.append(Difference("config", "reduced experiment", "", "the reduced configuration differs "
                                "from the golden's (the shipped YAML or REDUCTIONS changed)", ""))
    diffs += compare_rows("summary", summary, result.summary, result.keys)
    diffs += compare_rows("requests", requests, result.requests, result.keys + ["request"])
    return diffs


def report(name: str, diffs: list[Difference], limit: int = MAX_SHOWN) -> str:
    lines = [f"golden results of experiment {name!r} differ: {len(diffs)} difference(s)"
             + (f", the first {limit} shown" if len(diffs) > limit else "")]
    lines += ["  " + d.describe() for d in diffs[:limit]]
    lines.append("If the change is intended, regenerate with `python -m tests.golden --update "
                 f"{name}` and explain why in the commit message (tests/golden/README.md).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ profiles

def profile_data(name: str) -> dict:
    text = resources.files("hwprofiles").joinpath(f"{name}.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def sourced_numbers(node: Any, path: tuple = ()) -> Iterable[tuple]:
    """Paths of every ``{value, source}`` number of a profile mapping, in file order."""
    if isinstance(node, dict):
        if "value" in node and "source" in node:
            yield path
            return
        for k, v in node.items():
            yield from sourced_numbers(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from sourced_numbers(v, path + (i,))


def path_label(path: tuple) -> str:
    return ".".join(str(p) for p in path)


INTEGER_NUMBERS = ("max_devices", "sms")     # the profile loader requires integers here


def scaled_profile(name: str, path: tuple, factor: float, folder: str) -> Optional[str]:
    """Write the built-in profile `name` with the number at `path` times `factor` to
    FOLDER/NAME.yaml and return its path; None when the number is one of `INTEGER_NUMBERS` and
    the factor leaves it unchanged after rounding."""
    data = profile_data(name)
    node: Any = data
    for p in path:
        node = node[p]
    old = node["value"]
    new = round(old * factor) if path[-1] in INTEGER_NUMBERS else float(old) * factor
    if new == old:
        return None
    node["value"] = new
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f"{name}.yaml")
    with open(out, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return out


def profiles_used(name: str) -> list[str]:
    hw = reduced_config(name)["hardware"]
    return list(hw) if isinstance(hw, list) else [hw]


def detects(name: str, profile: str, path: tuple, factor: float = 1.03,
            work_dir: Optional[str] = None) -> Optional[list[Difference]]:
    """Run the reduced experiment `name` with `profile`'s number at `path` scaled by `factor`;
    return its differences from the golden (empty: the change goes unnoticed), None when the
    scaled number rounds to itself."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        scaled = scaled_profile(profile, path, factor, os.path.join(tmp, "profile"))
        if scaled is None:
            return None
        return compare(run_reduced(name, os.path.join(tmp, "run"), {profile: scaled}))
