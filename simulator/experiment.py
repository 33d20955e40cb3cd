"""Experiments: one YAML file -> a list of independent, validated jobs (sweep points x strategies).

Keys: ``name`` (default: the file's stem; a plain folder name, see `check_name`), ``description``
(free text), ``model``, ``hardware``, ``devices``, ``seed``, ``strategies`` (names, or mappings
``{name: ..., label: ..., <params>}``), ``workload``, ``serving`` (simulator/batching.py),
``slo`` (per-request TTFT/TPOT bounds for goodput, `simulator.metrics.parse_slo`) and ``outputs``.
Any scalar except ``name``, ``description`` and a strategy's ``name`` and ``label`` may be a list:
the experiment is swept over the cartesian product of every such list (in the order the keys
appear; at most `MAX_JOBS` jobs); a list inside a strategy mapping makes one variant of that
strategy per value. Each job is re-parsed from its plain-dict form, so jobs can be sent to worker
processes and cached by content.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .safe_yaml import read_yaml_file
from .schema import Section

TOP_KEYS = ("name", "description", "model", "hardware", "devices", "seed", "strategies",
            "workload", "serving", "slo", "outputs", "execution", "measured_tables")
NOT_SWEPT = ("values", "families")          # keys whose list value is data, not a sweep axis


@dataclass(frozen=True)
class Job:
    """One simulation: a sweep point and one strategy variant, as plain data."""
    index: int
    experiment: str
    where: str
    config: dict                 # name/model/hardware/devices/seed/workload/slo (one sweep point)
    strategy: dict               # {name: ..., params...}
    strategy_key: str            # e.g. "strategies[1]" for error messages
    label: str
    point: dict = field(default_factory=dict)   # swept path -> value
    base_dir: str = "."

    def cache_key(self) -> str:
        """Hash of the job's configuration, of the files it names (a hardware YAML, a model
        config.json, a trace CSV: anything in the configuration that is an existing file), of
        parasim's own code and built-in profiles, and of the aiconfigurator-core version where
        the configuration or those files name its database, so that no change can reuse a stale
        result."""
        blob = json.dumps({"config": self.config, "strategy": self.strategy, "label": self.label},
                          sort_keys=True, default=str)
        extra = [code_fingerprint()]
        database = "aiconfigurator" in blob
        for value in _strings(self.config):
            for path in (os.path.join(self.base_dir, value), value):
                if os.path.isfile(path):
                    for named in [path] + _tables_named_by(path):
                        with open(named, "rb") as fh:
                            content = fh.read()
                        database = database or b"aiconfigurator" in content
                        extra.append(hashlib.sha256(content).hexdigest())
                    break
        if database:            # tables from AIConfigurator's database: its version counts too
            from .aiconfigurator import available, package_version
            extra.append(package_version() if available() else "aiconfigurator absent")
        blob += "".join(extra)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _tables_named_by(path: str) -> list[str]:
    """The measured-table CSVs a hardware profile YAML names (they change its costs too)."""
    if not path.endswith((".yaml", ".yml")):
        return []
    try:
        data = read_yaml_file(path, "hardware profile file")
        tables = data.get("measured_tables", {}) if isinstance(data, dict) else {}
        out = []
        for entry in (tables.values() if isinstance(tables, dict) else []):
            csv = entry.get("csv") if isinstance(entry, dict) else None
            if isinstance(csv, str):
                full = os.path.join(os.path.dirname(os.path.abspath(path)), csv)
                if os.path.isfile(full):
                    out.append(full)
        return out
    except ConfigError:
        return []          # the loader reports a bad file; the key just cannot include it


def _strings(node: Any):
    if isinstance(node, str):
        if node.endswith((".yaml", ".yml", ".json", ".csv")):
            yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


_FINGERPRINT: list = []


def code_fingerprint() -> str:
    """A hash of parasim's source (simulator/, strategies/) and built-in profiles (hwprofiles/)."""
    if not _FINGERPRINT:
        import hwprofiles
        import strategies
        from . import __version__
        h = hashlib.sha256(__version__.encode())
        for pkg_dir in (os.path.dirname(__file__), os.path.dirname(strategies.__file__),
                        os.path.dirname(hwprofiles.__file__)):
            for name in sorted(os.listdir(pkg_dir)):
                if name.endswith((".py", ".yaml")):
                    with open(os.path.join(pkg_dir, name), "rb") as fh:
                        h.update(name.encode() + fh.read())
        _FINGERPRINT.append(h.hexdigest())
    return _FINGERPRINT[0]


def read_yaml(path: str) -> Any:
    """The experiment file's data, read by the shared limited loader (`safe_yaml`)."""
    return read_yaml_file(path, "experiment file")


def _sweep_axes(node: Any, path: str, axes: list) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                continue
            k = str(k)
            if k in NOT_SWEPT:
                continue
            _sweep_axes(v, f"{path}.{k}" if path else k, axes)
    elif isinstance(node, list) and node and all(_is_scalar(x) for x in node):
        axes.append((path, node))


def _is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _set_path(node: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def _deepcopy(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str)) if x is not None else None


def _expand(node: dict, axes: list) -> list[tuple[dict, dict]]:
    out = []
    for values in itertools.product(*(vals for _, vals in axes)):
        copy = _deepcopy(node)
        point = {}
        for (path, _), v in zip(axes, values):
            _set_path(copy, path, v)
            point[path] = v
        out.append((copy, point))
    return out


def _strategy_variants(entry: Any, where: str, key: str) -> list[tuple[dict, str]]:
    """(strategy dict, label) for each variant of one `strategies` entry."""
    if isinstance(entry, str):
        return [({"name": entry}, entry)]
    if not isinstance(entry, dict):
        raise ConfigError(where, key, "each strategy is a name or a mapping with 'name'")
    if "name" not in entry:
        raise ConfigError(where, f"{key}.name", "is required but missing")
    if not isinstance(entry["name"], str):
        raise ConfigError(where, f"{key}.name", "must be one strategy name (a string), got "
                          f"{entry['name']!r}; to compare strategies, give each its own entry")
    if "label" in entry and not isinstance(entry["label"], str):
        raise ConfigError(where, f"{key}.label", f"must be a string, got {entry['label']!r}")
    axes: list = []
    _sweep_axes({k: v for k, v in entry.items() if k not in ("name", "label")}, "", axes)
    _check_job_count(axes, 1, where)
    variants = []
    for copy, point in _expand(dict(entry), axes):
        label = copy.pop("label", None)
        if label is None:
            params = [f"{k}={v}" for k, v in copy.items() if k != "name"]
            label = copy["name"] + (f"[{','.join(params)}]" if params else "")
        elif point:
            label = f"{label}[{','.join(f'{k}={v}' for k, v in point.items())}]"
        variants.append((copy, str(label)))
    return variants


def load_experiment(path: str, overrides: dict | None = None, data: Any = None) -> list[Job]:
    """Parse an experiment file into jobs (or `data`, the file's mapping already read and edited,
    e.g. a search spec without its `search` section). Structural errors raise ConfigError at
    once."""
    data = read_yaml(path) if data is None else data
    where = path
    top = Section(data, where)
    for k in top.data:
        if k not in TOP_KEYS:
            raise top.error(k, "unknown key; allowed here: " + ", ".join(TOP_KEYS))
    data = dict(top.data)
    if overrides:
        data.update(overrides)
    name = check_name(data["name"], where) if "name" in data else \
        check_name(os.path.splitext(os.path.basename(path))[0], where, from_file=True)
    if not isinstance(data.get("description", ""), str):
        raise ConfigError(where, "description", "must be a string (free text; never a sweep axis)")
    for required in ("model", "hardware", "devices", "strategies", "workload"):
        if required not in data:
            raise ConfigError(where, required, "is required but missing")
    strategies = data.pop("strategies")
    if isinstance(strategies, str):
        strategies = [strategies]
    if not isinstance(strategies, list) or not strategies:
        raise ConfigError(where, "strategies", "expected a non-empty list of strategies")
    variants = []
    for i, entry in enumerate(strategies):
        for strat, label in _strategy_variants(entry, where, f"strategies[{i}]"):
            variants.append((strat, f"strategies[{i}]", label))
    labels = [v[2] for v in variants]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup:
        raise ConfigError(where, "strategies", f"two strategies share the label {dup!r}; give each a 'label'")
    data.pop("outputs", None)
    data["name"] = name
    axes: list = []
    _sweep_axes({k: v for k, v in data.items() if k not in ("name", "description")}, "", axes)
    _check_job_count(axes, len(variants), where)
    jobs = []
    base_dir = os.path.dirname(os.path.abspath(path))
    for config, point in _expand(data, axes):
        for strat, skey, label in variants:
            jobs.append(Job(len(jobs), name, where, config, strat, skey, label, point, base_dir))
    return jobs


_NAME = re.compile(r"[\w][\w .,+=@()-]{0,99}")
NAME_RULE = ("letters, digits, spaces and _ - . , + = @ ( ), starting with a letter, digit or _, "
             "at most 100 characters (it names the results folder)")


def check_name(name: Any, where: str, from_file: bool = False) -> str:
    """The experiment's name, which becomes a folder under results/: a plain file name, never a
    path (no separators, not '.' or '..')."""
    if not isinstance(name, str):
        raise ConfigError(where, "name", f"must be a string ({NAME_RULE}), got {name!r}")
    if not _NAME.fullmatch(name):
        hint = "; the file's own name is not a valid experiment name, so set name:" if from_file else ""
        raise ConfigError(where, "name", f"{name!r} is not a plain name; allowed: {NAME_RULE}{hint}")
    return name


MAX_JOBS = 10_000


def _check_job_count(axes: list, variants: int, where: str, key: str = "strategies") -> None:
    """Refuse a sweep of more than MAX_JOBS jobs before expanding it."""
    jobs = variants
    for _, values in axes:
        jobs *= len(values)
    if jobs > MAX_JOBS:
        names = ", ".join(p for p, _ in axes) or "none"
        raise ConfigError(where, axes[0][0] if axes else key, f"the sweep makes {jobs:,} jobs "
                          f"(sweep axes: {names}; strategy variants: {variants}); at most {MAX_JOBS:,}")


def outputs_section(path: str) -> dict:
    """The experiment's raw `outputs` mapping; `simulator.outputs.validate_outputs` checks its keys
    (timeline_window_s, timeline_ops, trace_max_events, slo_s) before the run starts."""
    data = read_yaml(path)
    value = data.get("outputs", {}) if isinstance(data, dict) else {}
    return value if isinstance(value, dict) else {}
