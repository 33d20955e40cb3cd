"""Jobs to runnable objects: validate one job's configuration (hardware, model, workload, strategy,
memory fit) and simulate it. The composition root's build side: it imports both the simulator core
and the strategy registry.

`build` raises `ConfigError` for malformed input and `PointError` (a ConfigError) for a point that
is well-formed but infeasible (a model that does not fit, a TP degree that does not divide the
heads); `validate_jobs` sorts a sweep's jobs into feasible and infeasible ones.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

import strategies as strategy_registry
from strategies.base import Strategy

from . import aiconfigurator as aic
from .batching import Scheduler, ServingConfig, check_workload_fits, kv_cache_blocks, parse_serving
from .cost_tables import merge_tables
from .engine import SimRuntime
from .errors import ConfigError, PointError
from .experiment import Job
from .hardware import EXECUTIONS, HardwareProfile, load_hardware
from .metrics import Slo, parse_slo
from .model import PRESETS, ModelSpec, check_fits, dtype_problem, load_model, memory_per_device
from .schema import Section, check_value
from .trace import Trace
from .workload import Workload, open_loop, parse_workload


@dataclass
class Built:
    model: ModelSpec
    hardware: HardwareProfile
    devices: int
    workload: Workload
    strategy: Strategy
    seed: int
    slo: Optional[Slo] = None
    serving: ServingConfig = ServingConfig()
    kv_blocks: int = 0


def build(job: Job) -> Built:
    """Turn one job's plain configuration into validated objects (ConfigError on bad input)."""
    where, cfg = job.where, job.config
    hardware = load_hardware(_resolve(cfg["hardware"], job.base_dir), where=where, key="hardware")
    hardware = with_execution(hardware, cfg, where)
    model_spec = cfg["model"]
    if isinstance(model_spec, str) and (model_spec.endswith(".json") or os.sep in model_spec):
        model_spec = _resolve(model_spec, job.base_dir)
    model = load_model(model_spec, where, "model")
    _check_dtypes(model, cfg["model"], hardware, where)
    devices = check_value(cfg["devices"], int, where, "devices", min=1, max=hardware.max_devices)
    seed = check_value(cfg.get("seed", 0), int, where, "seed", min=0)
    workload = parse_workload(cfg["workload"], where, "workload", base_dir=job.base_dir)
    serving = parse_serving(cfg.get("serving"), where)
    slo = parse_slo(cfg.get("slo"), where)
    strategy = make_strategy(job.strategy, model, devices, where, job.strategy_key)
    if serving.continuous:
        return _build_continuous(job, model, hardware, devices, workload, strategy, seed, slo,
                                 serving)
    context, prompt = _longest(workload, seed)
    step_tokens = workload.batch * prompt * strategy.concurrent_steps()
    for (tp, pp), split, resident in strategy.layouts():
        try:
            check_fits(model, hardware.device.memory_bytes, tp, pp, workload.batch * resident,
                       context, where, "model", split=split, step_tokens=step_tokens)
        except ConfigError as exc:
            raise PointError(exc.where, exc.key, exc.message) from None
    return Built(model, hardware, devices, workload, strategy, seed, slo)


def _build_continuous(job, model, hardware, devices, workload, strategy, seed, slo,
                      serving) -> Built:
    """The KV cache in blocks (what is left of the device memory after the weights and one full
    step's activations), checked to hold the longest request alone."""
    where = job.where
    if type(strategy).batch_host is Strategy.batch_host:
        raise PointError(where, f"{job.strategy_key}.name", f"strategy {strategy.name!r} has no "
                         "continuous-batching host; use serving.scheduler: static")
    reqs = workload.generate(np.random.default_rng(seed))
    longest = max((r.prompt_tokens + r.output_tokens - 1 for r in reqs), default=1)
    check_workload_fits(serving, longest, workload.batch, where)
    tp, pp = strategy.parallel_layout()
    blocks, block_bytes = kv_cache_blocks(model, hardware.device.memory_bytes, tp, pp,
                                          strategy.stage_layers(), serving,
                                          serving.max_num_batched_tokens)
    need = -(-longest // serving.block_size) * workload.batch
    if blocks < need:
        raise PointError(where, "serving.kv_cache_memory_fraction", (
            f"the KV cache holds {blocks} blocks of {serving.block_size} tokens "
            f"({blocks * block_bytes / 2**30:.2f} GiB per device with tp={tp}, pp={pp}) but the "
            f"longest request needs {need}; use more devices, a larger fraction or shorter "
            "requests"))
    return Built(model, hardware, devices, workload, strategy, seed, slo, serving, blocks)


def with_execution(hardware: HardwareProfile, cfg: dict, where: str) -> HardwareProfile:
    """The profile as the experiment runs it: its `execution` mode (eager or graphs), and the
    measured tables of AIConfigurator's database that the profile or the experiment names (the
    experiment's replacing the profile's); the profile's own CSV tables stay on top."""
    execution = check_value(cfg.get("execution", "eager"), str, where, "execution",
                            choices=EXECUTIONS)
    hardware = hardware.for_execution(execution, where, "execution")
    spec, key = hardware.database, "hardware.measured_tables.aiconfigurator"
    if cfg.get("measured_tables") is not None:
        spec, key = parse_measured_tables(cfg["measured_tables"], where), "measured_tables"
    if spec is None:
        return hardware
    database = aic.load_spec(spec, execution, where, key)
    return replace(hardware, measured_tables=merge_tables(database, hardware.measured_tables))


def parse_measured_tables(data: Any, where: str) -> "aic.DatabaseSpec":
    sec = Section(data, where, "measured_tables")
    spec = aic.parse_spec(sec.section("aiconfigurator"))
    sec.done()
    return spec


def _check_dtypes(model: ModelSpec, spec: Any, hardware: HardwareProfile, where: str) -> None:
    """PointError at `model.dtype` or `model.kv_dtype` (`model` when `spec` is a preset name or a
    config.json) when `hardware` cannot run one of the model's dtypes (model.dtype_problem)."""
    problem = dtype_problem(model, hardware.device.peak_flops, hardware.name)
    if problem is None:
        return
    field, message = problem
    if isinstance(spec, dict):
        raise PointError(where, f"model.{field}", message)
    how = (f"{{preset: {spec}, {field}: ...}}" if isinstance(spec, str) and spec.lower() in PRESETS
           else "the config.json's torch_dtype")
    raise PointError(where, "model", f"{model.name}'s {field} {message} (set it with {how})")


def make_strategy(spec: dict, model: ModelSpec, devices: int, where: str, key: str) -> Strategy:
    name = spec.get("name")
    if name not in strategy_registry.REGISTRY:
        raise ConfigError(where, f"{key}.name", f"unknown strategy {name!r}; available: "
                          + ", ".join(strategy_registry.names()))
    cls = strategy_registry.REGISTRY[name]
    params = cls.Params.parse({k: v for k, v in spec.items() if k != "name"}, where, key)
    strategy = cls(model, devices, params)
    try:
        strategy.validate(where, key)
    except ConfigError as exc:
        raise PointError(exc.where, exc.key, exc.message) from None
    return strategy


def _resolve(path: Any, base_dir: str) -> Any:
    """A relative file path in an experiment (hardware YAML, model config.json) is relative to the
    experiment file's folder, as the CSVs it names are; a built-in name is left alone."""
    if isinstance(path, str) and (os.sep in path or path.endswith((".yaml", ".yml", ".json"))) \
            and not os.path.isabs(path):
        return os.path.normpath(os.path.join(base_dir, path))
    return path


def _longest(workload: Workload, seed: int) -> tuple[int, int]:
    """(longest context, longest prompt) in tokens over the workload's requests."""
    reqs = workload.generate(np.random.default_rng(seed))
    if not reqs:
        return 1, 1
    return (max(r.prompt_tokens + r.output_tokens for r in reqs), max(r.prompt_tokens for r in reqs))


TORCH_RUNTIMES = {"torch": "cpu", "torch-cuda": "cuda"}   # runtime -> TorchRuntime device_type


WARMUP_REQUESTS = 2    # a TorchRuntime run first serves this many of its requests, unmeasured


def simulate(built: Built, keep_ops: int = 0, keep_from_s: float = 0.0,
             spill_path: str | None = None, runtime: str = "sim", run_log=None,
             warm_up: bool = True, planning: HardwareProfile | None = None) -> Trace:
    """Run one built job in a fresh SimRuntime, keeping `keep_ops` full op rows (KEEP_ALL: all)
    from `keep_from_s` on, and writing every row to `spill_path` if given; metrics come from the
    recorder's totals either way. `runtime` "torch" ("torch-cuda"): run it for real on
    TorchRuntime on this machine's CPU (its GPUs; TORCH_RUNTIMES); the first `keep_ops` rows
    are kept, nothing is spilled; `run_log`: a torchrt RunLog that gets every op's times and the
    host's busy time; `warm_up`: first serve the workload's first WARMUP_REQUESTS requests, all
    arriving at once, on a runtime of their own and unmeasured, so that the measured run finds its
    tensors allocated and filled (torchrt.work.POOL) as a serving engine's are after its warm-up).
    `planning`: simulated, the host program plans with this profile (SimRuntime's)."""
    scheduler = Scheduler(built.serving, built.kv_blocks) if built.serving.continuous else None
    if runtime in TORCH_RUNTIMES:
        from .torchrt.runtime import TorchRuntime       # imports torch: only when asked for
        device_type = TORCH_RUNTIMES[runtime]
        if warm_up:
            reqs = built.workload.generate(np.random.default_rng(built.seed))[:WARMUP_REQUESTS]
            warm = TorchRuntime(built.hardware, built.devices, keep_ops=0, device_type=device_type)
            fresh = Scheduler(built.serving, built.kv_blocks) if scheduler is not None else None
            first = open_loop([replace(r, arrival_s=0.0) for r in reqs])
            warm.run(copy.deepcopy(built.strategy), first, fresh)
        rt = TorchRuntime(built.hardware, built.devices, keep_ops=keep_ops,
                          device_type=device_type)
        rt.run_log = run_log
    else:
        rt = SimRuntime(built.hardware, built.devices, keep_ops=keep_ops, keep_from_s=keep_from_s,
                        seed=built.seed, spill_path=spill_path, planning=planning)
    source = built.workload.source(np.random.default_rng(built.seed))
    return rt.run(built.strategy, source, scheduler)


HOST_MEMORY_FRACTION = 0.5     # of this machine's RAM a TorchRuntime run may plan to use
GPU_MEMORY_FRACTION = 0.9      # of a GPU's memory a TorchRuntime run on CUDA may plan to use


def host_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):       # pragma: no cover - not POSIX
        return float("inf")


def torch_fit_problem(built: Built, memory_bytes: float | None = None,
                      runtime: str = "torch") -> Optional[str]:
    """Why `built` cannot run on TorchRuntime on this machine (``KEY: reason``), or None. On CPU
    all its devices' memory (simulator.model.memory_per_device, as the device check counts it)
    must fit in HOST_MEMORY_FRACTION of the RAM, since every device lives in this process; on
    CUDA ("torch-cuda") it needs a GPU per device and each device's memory within
    GPU_MEMORY_FRACTION of GPU 0's (`memory_bytes`: that memory, for tests)."""
    tp, pp = built.strategy.parallel_layout()
    batch = built.workload.batch * built.strategy.resident_requests()
    context, prompt = _longest(built.workload, built.seed)
    step_tokens = built.workload.batch * prompt * built.strategy.concurrent_steps()
    per_device = memory_per_device(built.model, tp, pp, batch, context,
                                   built.strategy.stage_layers(), step_tokens).total_bytes
    if runtime == "torch-cuda":
        return _gpu_fit_problem(built, per_device, memory_bytes)
    ram = host_memory_bytes() if memory_bytes is None else memory_bytes
    need = per_device * built.devices
    if need <= HOST_MEMORY_FRACTION * ram:
        return None
    return (f"model: {built.model.name} needs {need / 2**30:.1f} GiB over {built.devices} devices "
            f"but --runtime torch runs them all in this process, allowed "
            f"{HOST_MEMORY_FRACTION * ram / 2**30:.1f} GiB ({HOST_MEMORY_FRACTION:.0%} of the RAM); "
            "use a smaller model (e.g. fewer layers, a smaller hidden size)")


def _gpu_fit_problem(built: Built, per_device: float, memory_bytes: float | None) -> Optional[str]:
    if memory_bytes is None:                                       # pragma: no cover - needs CUDA
        import torch
        have = torch.cuda.device_count()
        if have < built.devices:
            return (f"devices: {built.devices} devices need as many GPUs, torch sees {have}; "
                    "use fewer devices")
        memory_bytes = float(torch.cuda.get_device_properties(0).total_memory)
    if per_device <= GPU_MEMORY_FRACTION * memory_bytes:
        return None
    return (f"model: {built.model.name} needs {per_device / 2**30:.1f} GiB per device, more than "
            f"{GPU_MEMORY_FRACTION:.0%} of a GPU's {memory_bytes / 2**30:.1f} GiB; use a smaller "
            "model or more devices")


def validate_jobs(jobs: list[Job]) -> list[Optional[str]]:
    """Validate every job; structural errors raise at once, point errors are returned per job as
    ``KEY: what is wrong`` (None for a feasible job). When no job is feasible, the first job's
    PointError is raised: a sweep with nothing to run is bad input."""
    errors: list[Optional[str]] = []
    for job in jobs:
        try:
            build(job)
            errors.append(None)
        except PointError as exc:
            errors.append(f"{exc.key}: {exc.message}" if exc.key else exc.message)
    if jobs and all(errors):
        build(jobs[0])          # every point is invalid: raise the first one's error
    return errors
