"""The `parasim` command line (the composition root, with the runner).

    parasim run FILE.yaml [--out DIR] [--jobs N]     run an experiment, write DIR/summary.csv ...
    parasim hardware list | show NAME|PATH            built-in profiles, one profile with sources
    parasim models list | show NAME|PATH              model presets, one model with its sizes
    parasim cost --hardware H [--json] OP ARGS        the cost model's answer for one op
    parasim compare DIR [--slo-s X]                   strategy comparisons from a run's summary

User errors print one line (file: key: what is wrong; what is allowed) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import ConfigError

EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit 2, like every other user error
        raise ConfigError("argument", "", f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="parasim", description="Simulate parallelism strategies of LLM inference.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run an experiment YAML")
    r.add_argument("file")
    r.add_argument("--out", help="output folder (default: results/<experiment name>)")
    r.add_argument("--jobs", type=int, default=1, help="worker processes for sweep points")
    r.add_argument("--no-progress", action="store_true")

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
    g.add_argument("--dtype", default="fp16")
    a = cs.add_parser("attention")
    for k, d in (("batch", 1), ("q-len", None), ("kv-len", None), ("heads", None),
                 ("kv-heads", None), ("head-dim", 128)):
        a.add_argument(f"--{k}", type=int, required=d is None, default=d)
    a.add_argument("--no-causal", action="store_true")
    a.add_argument("--dtype", default="fp16")
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
    return p


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _dispatch(args)
    except ConfigError as exc:
        print(f"parasim: error: {exc.line()}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("parasim: interrupted; finished points are cached and will be skipped on re-run",
              file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "hardware":
        return _hardware(args)
    if args.command == "models":
        return _models(args)
    if args.command == "cost":
        return _cost(args)
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
    from .experiment import load_experiment
    from .runner import run_experiment
    if args.jobs < 1:
        raise ConfigError("argument", "--jobs", f"must be >= 1, got {args.jobs}")
    jobs = load_experiment(args.file)
    out = args.out or os.path.join("results", jobs[0].experiment if jobs else "run")
    summary = run_experiment(args.file, out, workers=args.jobs,
                             progress=not args.no_progress and sys.stderr.isatty())
    _print_summary(summary)
    written = [f for f in ("summary.csv", "requests.csv", "compare.csv", "latency_throughput.png",
                           "timeline.png", "trace.json") if os.path.exists(os.path.join(out, f))]
    print(f"\nwrote in {out}/: " + ", ".join(written))
    return 1 if summary["error"].astype(str).str.len().gt(0).any() else 0


def _print_summary(summary) -> None:
    cols = [c for c in summary.columns if c not in ("experiment", "model", "hardware", "error")]
    show = summary[cols[:14]].copy()
    for c in show.columns:
        if c.endswith("_s"):
            show[c] = show[c].map(lambda v: f"{v * 1e3:.2f}ms" if v == v else "-")
        elif c == "throughput_rps":
            show[c] = show[c].map(lambda v: f"{v:.3f}" if v == v else "-")
    print(show.to_string(index=False))
    errs = summary[summary["error"].astype(str).str.len() > 0]
    for _, row in errs.iterrows():
        print(f"failed: {row['strategy']}: {row['error']}", file=sys.stderr)


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
    print(f"  topology     {p.interconnect.topology} (shared link: {p.interconnect.shared_link})")
    for n, lp in p.interconnect.collectives.items():
        regimes = getattr(lp, "regimes", None) or (lp,)
        print(f"  collectives  n={n}: " + "; ".join(
            f"alpha {r.alpha_s * 1e6:.1f} us, busbw {r.bandwidth_bytes_per_s / 1e9:.1f} GB/s"
            for r in regimes))
    print("  sources:")
    for key, src in p.sources.items():
        print(f"    {key}: {src}")
    return 0


def _models(args) -> int:
    from .model import PRESETS, load_model
    if args.action == "list":
        for name, m in PRESETS.items():
            print(f"{name:14s} {m.total_params() / 1e9:7.1f}B params, {m.layers} layers, "
                  f"hidden {m.hidden}, heads {m.heads}/{m.kv_heads}, ffn {m.ffn}")
        return 0
    m = load_model(args.name, where="argument")
    print(json.dumps({**m.__dict__, "params": m.total_params(), "weight_bytes": m.weight_bytes(),
                      "kv_cache_bytes_per_token": m.kv_cache_bytes_per_token()}, indent=2))
    return 0


def _cost(args) -> int:
    from .cost import CostModel
    from .hardware import load_hardware
    from .ops import Attention, Collective, Elementwise, Gemm, SendRecv
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
    if args.op == "gemm":
        op = Gemm(args.m, args.n, args.k, dtype)
    elif args.op == "attention":
        if args.kv_len < args.q_len:
            raise ConfigError("argument", "--kv-len", "must be >= --q-len")
        op = Attention(args.batch, args.q_len, args.kv_len, args.heads, args.kv_heads, args.head_dim,
                       not args.no_causal, dtype)
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
