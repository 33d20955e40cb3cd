"""The `calibrate` and `validate` commands (argument checks, one-line refusals, progress)."""
from __future__ import annotations

import os
import sys

from simulator.errors import ConfigError

DEFAULT_MODEL = {"preset": "llama-2-7b", "name": "val-llama", "layers": 2, "hidden": 512,
                 "heads": 8, "kv_heads": 8, "ffn": 1376, "vocab": 2000}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _need_torch(device: str, devices: int = 1) -> None:
    """Refuse (ConfigError, exit 2) before anything is written: no torch, no such device, or
    fewer GPUs than `devices`."""
    try:
        import torch
    except ImportError:
        raise ConfigError("argument", "--device", "torch is not installed; pip install "
                          "'parasim[torch]'") from None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("argument", "--device", "cuda asked for but torch sees no CUDA "
                              "device on this machine; use --device cpu")
        have = torch.cuda.device_count()                       # pragma: no cover - needs CUDA
        if have < devices:                                       # pragma: no cover
            raise ConfigError("argument", "--devices", f"{devices} GPUs asked for, torch sees "
                              f"{have}; use --devices {have} or fewer")


def calibrate_command(args) -> int:
    from simulator.model import load_model
    from simulator.runner import check_out_dir
    least = 1 if args.device == "cuda" else 2
    if args.devices < least:
        raise ConfigError("argument", "--devices", f"must be >= {least} with --device "
                          f"{args.device}" + (" (collectives need two)" if least == 2 else "")
                          + f", got {args.devices}")
    if args.reps < 1:
        raise ConfigError("argument", "--reps", f"must be >= 1, got {args.reps}")
    if not args.out.endswith((".yaml", ".yml")):
        raise ConfigError("argument", "--out", f"must name a .yaml file, got {args.out!r}")
    model = load_model(args.model if args.model else DEFAULT_MODEL, "argument", "--model")
    _need_torch(args.device, args.devices)
    from simulator.jobs import HOST_MEMORY_FRACTION, host_memory_bytes
    from simulator.model import memory_per_device
    need = memory_per_device(model, args.devices, 1, 1, 1024).total_bytes * args.devices
    if args.device == "cpu" and need > HOST_MEMORY_FRACTION * host_memory_bytes():
        raise ConfigError("argument", "--model", f"{model.name} needs {need / 2**30:.1f} GiB on "
                          f"{args.devices} devices, more than this machine allows; use a smaller "
                          "model")
    check_out_dir(os.path.dirname(args.out) or ".")
    from .profile import calibrate
    from .shapes import Grid, model_shapes
    shapes = model_shapes(model, args.devices, Grid())
    what = "CPU devices" if args.device == "cpu" else "GPUs"
    _log(f"calibrate: {model.name} on {args.devices} {what}: {shapes.sizes()} shapes, "
         f"{args.reps} timed calls each")
    cal = calibrate(model, args.devices, args.out, shapes, reps=args.reps, log=_log,
                    device_type=args.device)
    print(f"wrote {args.out} and " + ", ".join(os.path.basename(f) for f in cal.files[1:]))
    return 0


def validate_command(args) -> int:
    from simulator.runner import check_out_dir
    if args.repeat < 1:
        raise ConfigError("argument", "--repeat", f"must be >= 1, got {args.repeat}")
    if args.calibration_runs < 0:
        raise ConfigError("argument", "--calibration-runs",
                          f"must be >= 0, got {args.calibration_runs}")
    if not args.warm_up_s >= 0:
        raise ConfigError("argument", "--warm-up-s", f"must be >= 0, got {args.warm_up_s}")
    _need_torch(args.device)
    runtime = "torch-cuda" if args.device == "cuda" else "torch"
    if args.profile is not None:
        from simulator.hardware import load_hardware
        load_hardware(args.profile, where="argument", key="--profile")
    from .validate import plan_validation, validate
    plan = plan_validation(args.file, runtime)  # a model that does not fit: one line, exit 2
    out = args.out or os.path.join("results", plan[1][0].experiment + "-validate")
    check_out_dir(out)
    result = validate(args.file, out, args.profile, repeat=args.repeat, log=_log, plan=plan,
                      calibration_runs=args.calibration_runs, runtime=runtime,
                      warm_up_s=args.warm_up_s)
    cols = ["strategy", "measured_jct_mean_s", "predicted_jct_mean_s", "jct_rel_error",
            "measured_jct_noise", "throughput_rel_error"]
    cols += [c for c in ("microbench_jct_rel_error", "insample_jct_rel_error",
                         "calibration_kernel_slowdown")
             if c in result.frame]
    print(result.frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote in {out}/: " + ", ".join(os.path.basename(f) for f in result.files))
    return 0
