"""The `parasim` command line (the composition root, with the runner).

    parasim run FILE.yaml [--out DIR] [--jobs N]     run an experiment, write DIR/summary.csv ...
    parasim run FILE.yaml --dry-run                   validate every point, simulate nothing
    parasim run|search FILE.yaml --backend ray [--ray-address HOST:PORT]   jobs as Ray tasks
    parasim strategies list                           strategies with parameters and defaults
    parasim hardware list | show NAME|PATH            built-in profiles, one profile with sources
    parasim models list | show NAME|PATH              model presets, one model with its sizes
    parasim cost --hardware H [--json] OP ARGS        the cost model's answer for one op
    parasim compare DIR [--slo-s X]                   strategy comparisons from a run's summary
    parasim import-trace TRACE.json [--out DIR]       measured tables from a PyTorch profiler trace
    parasim calibrate --device cpu --out PROFILE.yaml  a hardware profile measured on this machine
    parasim validate FILE.yaml --device cpu           measured (torch) vs simulated, per strategy

User errors print one line (file: key: what is wrong; what is allowed) and exit with status 2.
`parasim run`'s exit status: see RUN_EXIT_STATUS.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USER = 0, 1, 2
RUN_EXIT_STATUS = """\
exit status:
  0  every feasible point ran. Infeasible points (e.g. a model that does not fit in device memory
     at that point, a TP degree that does not divide the heads) are found before anything is
     simulated, skipped, counted on the console with their reasons and listed in summary.csv's
     'error' column ("infeasible: KEY: reason").
  1  a feasible point failed while simulating (a deadlock, or an internal error of parasim:
     please report it); its error is in summary.csv, every other point's results are written.
  2  bad input, nothing simulated or written: a malformed experiment or outputs mapping, no
     feasible point at all, or an --out that is a file or cannot be created.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit 2, like every other user error
        raise ConfigError("argument", "", f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(prog="parasim", description="Simulate parallelism strategies of LLM inference.")
    p.add_argument("--version", action="version", version=f"parasim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run an experiment YAML", epilog=RUN_EXIT_STATUS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file")
    r.add_argument("--out", help="output folder (default: results/<experiment name>)")
    r.add_argument("--jobs", type=int, default=1, help="worker processes for sweep points")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the experiment and every point, list the points and which are "
                        "infeasible and why; simulate and write nothing")
    r.add_argument("--runtime", choices=("sim", "torch"), default="sim",
                   help="sim: simulate (default); torch: run the strategies for real on this "
                        "machine's CPU with torch (pip install parasim[torch]; tiny models only, "
                        "see docs/torch_runtime.md)")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="with --runtime torch: run on this machine's CPU (default) or its GPUs")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (default: a bar on a terminal, else a line about "
                        "every 10 s)")

    se = sub.add_parser("search", help="find the best configuration under latency SLOs")
    se.add_argument("file")
    se.add_argument("--out", default=None, help="output folder (default: results/<name>-search)")
    se.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    for command in (r, se):
        _backend_arguments(command)
    st = sub.add_parser("strategies", help="list strategies with their parameters")
    sts = st.add_subparsers(dest="action", required=True, parser_class=_Parser)
    sts.add_parser("list")

    h = sub.add_parser("hardware", help="list or show hardware profiles")
    hs = h.add_subparsers(dest="action", required=True, parser_class=_Parser)
    hs.add_parser("list")
    show = hs.add_parser("show")
    show.add_argument("name")

    m = sub.add_parser("models", help="list or show model presets")
    ms = m.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ms.add_parser("list")
    mshow = ms.add_parser("show")
    mshow.add_argument("name")

    c = sub.add_parser("cost", help="ask the cost model about one op")
    c.add_argument("--hardware", required=True)
    c.add_argument("--json", action="store_true")
    cs = c.add_subparsers(dest="op", required=True, parser_class=_Parser)
    g = cs.add_parser("gemm")
    for k in ("m", "n", "k"):
        g.add_argument(f"--{k}", type=int, required=True)
    g.add_argument("--dtype", default="fp16", help="the operands' dtype (sets the rate)")
    g.add_argument("--out-dtype", default=None, help="the output's dtype (default: --dtype; an "
                   "fp8 GEMM of a served model writes bf16)")
    a = cs.add_parser("attention")
    for k, d in (("batch", 1), ("q-len", None), ("kv-len", None), ("heads", None),
                 ("kv-heads", None), ("head-dim", 128)):
        a.add_argument(f"--{k}", type=int, required=d is None, default=d)
    a.add_argument("--no-causal", action="store_true")
    a.add_argument("--dtype", default="fp16", help="queries' and compute dtype")
    a.add_argument("--kv-dtype", default=None, help="the KV cache's dtype (default: --dtype)")
    e = cs.add_parser("elementwise")
    e.add_argument("--bytes", type=float, required=True)
    for kind in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all"):
        k = cs.add_parser(kind)
        k.add_argument("--bytes", type=float, required=True)
        k.add_argument("--devices", type=int, required=True)
    sr = cs.add_parser("send-recv")
    sr.add_argument("--bytes", type=float, required=True)

    cmp_ = sub.add_parser("compare", help="compare strategies of a finished run")
    cmp_.add_argument("dir")
    cmp_.add_argument("--slo-s", type=float, default=None, help="JCT service-level objective (s)")
    cmp_.add_argument("--stat", choices=("mean", "p50", "p90", "p99"), default="mean",
                      help="JCT statistic compared (default mean)")
    cmp_.add_argument("--at", choices=("max", "mid"), default="max",
                      help="equal-throughput point: highest common throughput, or mid of the overlap")

    it = sub.add_parser("import-trace", help="measured tables and contention estimates from a "
                        "PyTorch profiler (Kineto) trace")
    it.add_argument("trace", help="a trace from torch.profiler's export_chrome_trace (.json or .json.gz)")
    it.add_argument("--out", help="output folder (default: tables/<trace name>)")
    it.add_argument("--dtype", action="append", choices=("fp32", "fp16", "bf16", "fp8"),
                    help="keep only GEMM and attention shapes of this dtype (repeatable; default: "
                         "every dtype the trace has)")
    ca = sub.add_parser("calibrate", help="measure this machine (through TorchRuntime's work) into "
                        "a hardware profile and measured tables")
    ca.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ca.add_argument("--devices", type=int, default=2, help="simulated devices (default 2)")
    ca.add_argument("--model", default=None, help="model preset or config.json whose shapes to "
                    "measure (default: the validate-cpu experiment's small llama)")
    ca.add_argument("--out", required=True, help="the profile YAML to write (tables beside it)")
    ca.add_argument("--reps", type=int, default=7, help="timed calls per shape (median; default 7)")
    va = sub.add_parser("validate", help="run each strategy on TorchRuntime and in the simulator "
                        "with a calibrated profile; validation.csv and validation_trace.json")
    va.add_argument("file")
    va.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    va.add_argument("--profile", default=None, help="a calibrated profile (default: calibrate "
                    "first, into the output folder)")
    va.add_argument("--out", default=None, help="output folder (default: results/<name>-validate)")
    va.add_argument("--calibration-runs", type=int, default=2, metavar="N",
                    help="in-run calibration: N TorchRuntime runs of each strategy on other "
                    "requests before validating (0: micro-benchmarks only; default 2)")
    va.add_argument("--repeat", type=int, default=2, help="measured runs per strategy (default 2; "
                    "their spread is the noise)")
    va.add_argument("--warm-up-s", type=float, default=0.0, metavar="SECONDS",
                    help="unmeasured rounds of every strategy until this long has passed, before "
                    "the measured and calibration runs (default 0: none)")
    return p


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine, --jobs worker processes (default); ray: each job a "
                        "Ray task (pip install -e '.[ray]'; see docs/cluster.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --backend ray: the Ray head, HOST:PORT (default: RAY_ADDRESS, else "
                        "a local Ray started for the run, --jobs CPUs if more than 1)")


def _check_backend(args) -> None:
    """Before anything is validated or run: --jobs, and Ray installed where it is asked for."""
    if args.jobs < 1:
        raise ConfigError("argument", "--jobs", f"must be >= 1, got {args.jobs}")
    if args.ray_address is not None and args.backend != "ray":
        raise ConfigError("argument", "--ray-address", "needs --backend ray")
    if args.backend == "ray":
        if getattr(args, "runtime", "sim") == "torch":
            raise ConfigError("argument", "--backend", "--runtime torch measures this machine; "
                              "it runs with --backend local only")
        from .ray_backend import import_ray
        import_ray()


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _dispatch(args)
    except ConfigError as exc:
        print(f"parasim: error: {exc.line()}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:              # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("parasim: interrupted; finished points are cached and will be skipped on re-run",
              file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "search":
        return _search(args)
    if args.command == "hardware":
        return _hardware(args)
    if args.command == "models":
        return _models(args)
    if args.command == "strategies":
        from .console import strategy_lines
        print("\n".join(strategy_lines()))
        return EXIT_OK
    if args.command == "cost":
        return _cost(args)
    if args.command == "import-trace":
        return _import_trace(args)
    if args.command in ("calibrate", "validate"):
        from .calibrate.cli import calibrate_command, validate_command
        return (calibrate_command if args.command == "calibrate" else validate_command)(args)
    if args.command == "compare":
        from .compare import compare_dir
        if args.slo_s is not None and not 0 < args.slo_s < math.inf:
            raise ConfigError("argument", "--slo-s", f"must be a finite number of seconds > 0, "
                              f"got {args.slo_s}")
        table = compare_dir(args.dir, args.slo_s, stat=args.stat, at=args.at)
        if table.empty:
            print(f"fewer than two strategies in {args.dir}/summary.csv; nothing to compare")
        else:
            print(table.to_string(index=False))
        return 0
    return EXIT_USER


def _run(args) -> int:
    from .console import print_plan, print_problems, print_summary
    from .runner import check_out_dir, execute, plan_run
    _check_backend(args)
    runtime = args.runtime
    if args.device == "cuda" and runtime != "torch":
        raise ConfigError("argument", "--device", "cuda runs the strategies for real: use it "
                          "with --runtime torch")
    if runtime == "torch":
        try:
            import torch
        except ImportError:
            raise ConfigError("argument", "--runtime", "torch is not installed; pip install "
                              "'parasim[torch]' or use --runtime sim") from None
        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("argument", "--device", "cuda asked for but torch sees no "
                                  "CUDA device on this machine; use --device cpu")
            runtime = "torch-cuda"                               # pragma: no cover - needs CUDA
    plan = plan_run(args.file, runtime)   # bad input: ConfigError (exit 2) before anything runs
    out = args.out or os.path.join("results", plan.jobs[0].experiment if plan.jobs else "run")
    check_out_dir(out)
    if args.dry_run:
        print_plan(plan)
        return EXIT_OK
    report = execute(args.file, out, workers=args.jobs, progress=not args.no_progress, plan=plan,
                     runtime=runtime, backend=args.backend, ray_address=args.ray_address)
    if runtime != "sim":
        where = "GPUs" if runtime == "torch-cuda" else "CPU"
        print(f"runtime: torch (measured on this machine's {where}; times are real seconds, not "
              "a simulation of the hardware profile)")
    print_summary(report.summary)
    print_problems(report, out, sys.stderr)
    for note in report.written.notes:
        print(note)
    written = ["summary.csv", "requests.csv"] + [os.path.basename(f) for f in report.written.files]
    if report.plan.options.trace == "full":
        written.append("ops/ (every op row of the timeline point's jobs, gzipped CSV)")
    print(f"\nwrote in {out}/: " + ", ".join(written))
    return EXIT_FAILED if report.failed else EXIT_OK


def _search(args) -> int:
    from .search import explain, load_search, run_search
    _check_backend(args)
    spec = load_search(args.file)            # bad input: one line, exit 2, before any probe
    out = args.out or os.path.join("results", spec.name + "-search")
    for index, reason in sorted(spec.pruned.items()):
        job = spec.jobs[index]
        print(f"pruned: {job.label} {_point_text(job.point)}: {reason}")
    result = run_search(args.file, out, workers=args.jobs, backend=args.backend,
                        ray_address=args.ray_address)
    for line in explain(result):
        print(line)
    print(f"\nwrote in {out}/: " + ", ".join(os.path.basename(f) for f in result.written))
    return EXIT_OK


def _point_text(point: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()
                     if k != "workload.arrival.rate_rps")


def _import_trace(args) -> int:
    from .runner import check_out_dir
    from .trace_import import import_trace
    from .trace_import.read import load_trace
    name = os.path.basename(args.trace)
    for ext in (".gz", ".json"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    out = args.out or os.path.join("tables", name or "trace")
    trace = load_trace(args.trace)      # a file that is no trace is refused before --out is touched
    check_out_dir(out)
    result = import_trace(args.trace, out, tuple(args.dtype or ()), trace=trace)
    for family, (rows, samples) in result.rows.items():
        print(f"{family:15s} {rows:5d} shape(s) from {samples} op(s)")
    for reason, n in result.skipped.most_common():
        print(f"left out: {n} x {reason}")
    found = result.contention
    if not found["overlap_found"]:
        print("contention: no overlap in the trace to estimate from")
    for e in found["estimates"]:
        print(f"contention: {e['pair']} {e['ratio']} ({e['shapes']} shape(s))")
    print(f"\nwrote in {out}/: " + ", ".join(os.path.basename(f) for f in result.files))
    return EXIT_OK


def _hardware(args) -> int:
    from .hardware import builtin_names, load_hardware
    if args.action == "list":
        for name in builtin_names():
            p = load_hardware(name)
            print(f"{name:18s} {p.interconnect.topology:12s} {p.description}")
        return 0
    p = load_hardware(args.name, where="argument")
    d = p.device
    print(f"{p.name}: {p.description}")
    print(f"  device       {d.name}: {d.sms} SMs, "
          + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in d.peak_flops.items())
          + f", {d.memory_bytes / 2**30:.1f} GiB at {d.memory_bandwidth_bytes_per_s / 1e9:.0f} GB/s")
    print(f"  kernels      GEMM {d.gemm_efficiency:.3g} of peak, memory {d.memory_efficiency:.3g} of "
          f"bandwidth, {d.kernel_overhead_s * 1e6:.3g} us per kernel; host {p.launch_overhead_s * 1e6:.3g}"
          " us per launch")
    if d.attention_floor_s or d.attention_block_s or d.attention_memory_efficiency:
        print(f"  attention    {d.attention_efficiency:.3g} of peak, memory "
              f"{d.attention_memory_efficiency or d.memory_efficiency:.3g}, floor "
              f"{d.attention_floor_s * 1e6:.3g} us, {d.attention_block_s * 1e6:.3g} us per wave of blocks")
    else:
        print(f"  attention    {d.attention_efficiency:.3g} of peak (plain roofline)")
    if d.fp8_gemm_efficiency or d.fp8_quantize_s:
        print(f"  fp8 GEMM     {d.fp8_gemm_efficiency or d.gemm_efficiency:.3g} of the fp8 peak, input "
              f"quantisation {d.fp8_quantize_s * 1e6:.3g} us + 5 bytes per element")
    if d.dispatch_s or d.event_wait_s or d.idle_wakeup_s or d.record_s or p.wakeup_s \
            or p.callback_s:
        print(f"  reactions    stream {d.dispatch_s * 1e6:.3g} us per op, "
              f"{d.record_s * 1e6:.3g} us per event record, wakes "
              f"{d.event_wait_s * 1e6:.3g} us after an event it waits on and "
              f"{d.idle_wakeup_s * 1e6:.3g} us after a launch when idle; host wakes "
              f"{p.wakeup_s * 1e6:.3g} us, runs callbacks {p.callback_s * 1e6:.3g} us after an event")
    if d.jitter:
        print("  jitter       " + ", ".join(
            f"{f} CV {v:.3g}" if not isinstance(v, tuple) else
            f"{f} {min(v):.2g}-{max(v):.2g}x of the mean" for f, v in d.jitter.items()))
    c = p.contention
    if c.model == "cores":
        print(f"  contention   cores: {c.cores:g} shared by every device, {c.threads_per_op:g} "
              "per running op")
    print(f"  topology     {p.interconnect.topology} (shared link: {p.interconnect.shared_link})")
    _print_collectives("collectives", p.interconnect.collectives)
    if p.graphs is not None:
        print(f"  graphs       host {p.graphs.launch_overhead_s * 1e6:.3g} us per kernel, "
              f"{p.graphs.kernel_overhead_s * 1e6:.3g} us per kernel on the device")
        _print_collectives("graphs", p.graphs.collectives)
    if p.database is not None:
        ref = p.database.ref
        print(f"  tables       AIConfigurator {ref.system} {ref.framework} {ref.version or '(newest)'}: "
              + ", ".join(p.database.families))
    print("  sources:")
    for key, src in p.sources.items():
        print(f"    {key}: {src}")
    return 0


def _print_collectives(label: str, collectives) -> None:
    for n, lp in collectives.items():
        regimes = getattr(lp, "regimes", None) or (lp,)
        print(f"  {label:12s} n={n}: " + "; ".join(
            f"alpha {r.alpha_s * 1e6:.1f} us, busbw {r.bandwidth_bytes_per_s / 1e9:.1f} GB/s"
            for r in regimes))


def _models(args) -> int:
    from .model import PRESETS, load_model
    if args.action == "list":
        for name, m in PRESETS.items():
            print(f"{name:14s} {m.total_params() / 1e9:7.1f}B params, {m.layers} layers, "
                  f"hidden {m.hidden}, heads {m.heads}/{m.kv_heads}, ffn {m.ffn}")
        return 0
    m = load_model(args.name, where="argument")
    print(json.dumps({**m.__dict__, "kv_dtype": m.kv_cache_dtype,
                      "activation_dtype": m.activation_dtype, "params": m.total_params(),
                      "weight_bytes": m.weight_bytes(),
                      "kv_cache_bytes_per_token": m.kv_cache_bytes_per_token()}, indent=2))
    return 0


def _cost(args) -> int:
    from .cost import CostModel
    from .hardware import load_hardware
    from .ops import DTYPE_BYTES, Attention, Collective, Elementwise, Gemm, SendRecv
    hw = load_hardware(args.hardware, where="argument", key="--hardware")
    for name in ("m", "n", "k", "batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "devices"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError("argument", f"--{name.replace('_', '-')}", f"must be >= 1, got {v}")
    if getattr(args, "bytes", None) is not None and not 0 <= args.bytes < math.inf:
        raise ConfigError("argument", "--bytes", f"must be a finite number >= 0, got {args.bytes}")
    dtype = getattr(args, "dtype", "fp16")
    if dtype not in hw.device.peak_flops:
        raise ConfigError("argument", "--dtype", f"{dtype!r} not in profile {hw.name}; it has "
                          + ", ".join(hw.device.peak_flops))
    for flag in ("out_dtype", "kv_dtype"):
        value = getattr(args, flag, None)
        if value is not None and value not in DTYPE_BYTES:
            raise ConfigError("argument", f"--{flag.replace('_', '-')}", f"{value!r} is not one "
                              "of " + ", ".join(DTYPE_BYTES))
    if args.op == "gemm":
        op = Gemm(args.m, args.n, args.k, dtype, out_dtype=args.out_dtype)
    elif args.op == "attention":
        if args.kv_len < args.q_len:
            raise ConfigError("argument", "--kv-len", "must be >= --q-len")
        op = Attention(args.batch, args.q_len, args.kv_len, args.heads, args.kv_heads, args.head_dim,
                       not args.no_causal, dtype, kv_dtype=args.kv_dtype)
    elif args.op == "elementwise":
        op = Elementwise(args.bytes)
    elif args.op == "send-recv":
        op = SendRecv(args.bytes, 0, 1)
    else:
        if args.devices > hw.max_devices:
            raise ConfigError("argument", "--devices", f"profile {hw.name} has at most {hw.max_devices}")
        op = Collective(args.op.replace("-", "_"), args.bytes, tuple(range(args.devices)))
    c = CostModel(hw).cost(op)
    out = {"seconds": c.seconds, "bound": c.bound, "op_class": c.op_class, "flops": c.flops,
           "bytes": c.bytes, "detail": getattr(c, "detail", ""), "hardware": hw.name, "op": args.op}
    if args.json:
        print(json.dumps(out))
    else:
        detail = getattr(c, "detail", "")
        print(f"{args.op} on {hw.name}: {c.seconds * 1e6:.2f} us ({c.bound}-bound"
              + (f"; {detail})" if detail else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
