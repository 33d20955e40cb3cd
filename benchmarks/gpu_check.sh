#!/usr/bin/env bash
# The GPU check (docs/validation.md, "On a GPU"): on a machine with one CUDA GPU, calibrate it
# (GEMM, attention, elementwise, two-stream contention, the runtime's own costs) and run the
# closed loop of experiments/validation/validate-gpu.yaml (tp, iso and liger on one device),
# then pack the profile, its tables, validation.csv and the side-by-side trace into one archive.
#
# Usage, from the repository root:  OUT=some/folder bash benchmarks/gpu_check.sh
# Needs python3 with torch (CUDA), numpy, pandas, matplotlib and pyyaml; simpy is installed from
# .whl/ when it is missing (pip download simpy==4.1.1 into .whl on a machine with the internet).
# Each step has its own time limit; together they stay under 8 minutes. The validation warms up
# for 15 s (`--warm-up-s`; the CPU loop has none): an assumption, no GPU has run it yet, that a
# GPU's clocks and libraries settle within seconds of load; the limit leaves no room for more.
set -uo pipefail
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT/work"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import simpy" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/parasim-site \
        .whl/simpy-*.whl || { echo "gpu_check: simpy is missing and .whl/ has no wheel"; exit 2; }
    export PYTHONPATH="$PYTHONPATH:/tmp/parasim-site"
fi
parasim() { python3 -c 'import sys; from simulator.cli import main; sys.exit(main())' "$@"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(0))'
} > "$OUT/work/machine.txt" 2>&1
cat "$OUT/work/machine.txt"

status=0
echo "== calibrate (one GPU, the default small model's shapes)"
timeout 120 parasim calibrate --device cuda --devices 1 --reps 7 --out "$OUT/work/gpu.yaml" \
    2>&1 | tee "$OUT/work/calibrate.log" || status=1
echo "== validate (calibrates again for the experiment's own shapes, then measures and predicts)"
timeout 270 parasim validate experiments/validation/validate-gpu.yaml --device cuda \
    --repeat 3 --calibration-runs 2 --warm-up-s 15 --out "$OUT/work/validate" 2>&1 \
    | tee "$OUT/work/validate.log" || status=1
tar czf "$OUT/gpu-check.tgz" -C "$OUT/work" . && cp "$OUT/work/validate/validation.csv" \
    "$OUT/validation.csv" 2>/dev/null
echo "gpu_check: wrote $OUT/gpu-check.tgz (status $status)"
exit $status
