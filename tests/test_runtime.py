"""The runtime seam (simulator/runtime.py): strategies use the Runtime verbs and nothing else, the
simulated runtime implements them, and workload sources never see the runtime or SimPy."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import strategies
from simulator import workload
from simulator.engine import SimRuntime
from simulator.hardware import load_hardware
from simulator.runtime import RUNTIME_VERBS, Runtime

STRATEGY_FILES = sorted(Path(strategies.__file__).parent.glob("*.py"))
EVENT_INTERNALS = {"done", "time", "device", "recorded", "streams", "callbacks", "signal"}
ENGINE_NAMES = {"env", "machine", "serving", "recorder", "cost", "contention", "hw"}


def _attribute_uses(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            yield node.value.id, node.attr, node.lineno


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.name)
def test_strategies_call_only_runtime_verbs(path):
    tree = ast.parse(path.read_text())
    bad = [f"{path.name}:{line}: rt.{attr}" for owner, attr, line in _attribute_uses(tree)
           if owner == "rt" and attr not in RUNTIME_VERBS]
    assert not bad, "not a Runtime verb: " + ", ".join(bad)


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.name)
def test_strategies_touch_no_event_or_engine_internals(path):
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] == "simpy" for n in names) or \
                    any(n.startswith("simulator.") and n.split(".")[1] in
                        ("engine", "machine", "streams", "segment", "serving") for n in names if n):
                bad.append(f"{path.name}:{node.lineno}: imports {names}")
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if node.attr in ENGINE_NAMES and owner in ("rt", "ev", "event"):
                bad.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
            if node.attr in EVENT_INTERNALS and owner in ("ev", "event", "done", "token", "ready",
                                                           "after"):
                bad.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
            if node.attr.startswith("_") and not node.attr.startswith("__") and owner not in \
                    ("self", "cls", None):
                bad.append(f"{path.name}:{node.lineno}: {owner}.{node.attr} (a private name)")
    assert not bad, "; ".join(bad)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The AST checks above are not vacuous: a strategy body that breaks each rule is caught."""
    src = ("import simpy\n"
           "def host(rt, ev):\n"
           "    rt.env.timeout(1)\n    ev.done\n    rt._machine\n    rt.frobnicate()\n")
    tree = ast.parse(src)
    uses = list(_attribute_uses(tree))
    assert ("rt", "frobnicate", 6) in uses and ("ev", "done", 4) in uses
    bad_verbs = [a for o, a, _ in uses if o == "rt" and a not in RUNTIME_VERBS]
    assert set(bad_verbs) == {"env", "_machine", "frobnicate"}


def test_sim_runtime_implements_the_protocol():
    rt = SimRuntime(load_hardware("a100-sxm4-80gb"), 2)
    assert isinstance(rt, Runtime)
    for verb in RUNTIME_VERBS:
        assert hasattr(rt, verb), verb
    expected = {"now", "create_stream", "launch", "launch_seq", "new_event", "record", "wait",
                "query", "synchronize", "wait_any", "when", "profiled_seconds",
                "profiled_slowdown", "next_request", "try_next_request", "first_token_when",
                "finish_when", "mirror", "launch_paced", "record_all", "next_batch",
                "try_next_batch", "batch_done_when", "waiting"}
    assert RUNTIME_VERBS == expected


def test_workload_sources_do_not_touch_the_runtime_or_simpy():
    src = inspect.getsource(workload)
    tree = ast.parse(src)
    for owner, attr, line in _attribute_uses(tree):
        assert owner != "rt", f"workload.py:{line}: rt.{attr}"
        assert attr != "env", f"workload.py:{line}: {owner}.env"
    assert "import simpy" not in src
