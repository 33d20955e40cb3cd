"""How far the cost model's roofline lands from AIConfigurator's measured kernel times.

Prints, per GPU, framework and execution mode, the median and 90th-percentile absolute relative
error and the median ratio predicted / measured for each op family (GEMM, prefill and decode
attention, all-reduce). Needs the optional extra: ``pip install -e '.[aiconfigurator]'``.

Usage: ``python benchmarks/database_errors.py [--profile NAME ...] [--framework NAME ...]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import aiconfigurator as aic  # noqa: E402
from simulator.database_check import SYSTEMS, comparison, summary  # noqa: E402
from simulator.hardware import load_hardware  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="append", choices=sorted(SYSTEMS))
    p.add_argument("--framework", action="append", choices=aic.FRAMEWORKS)
    args = p.parse_args(argv)
    if not aic.available():
        print(f"needs aiconfigurator-core: {aic.INSTALL_HINT}", file=sys.stderr)
        return 2
    for name in args.profile or ["a100-sxm4-80gb", "h100-sxm5-80gb"]:
        hw = load_hardware(name)
        for framework in args.framework or aic.FRAMEWORKS:
            ref = aic.DatabaseRef(SYSTEMS[name], framework)
            for execution in ("eager", "graphs") if hw.graphs else ("eager",):
                try:
                    table = summary(comparison(hw, ref, execution))
                except Exception as exc:          # a system without this framework's tables
                    print(f"# {name} / {framework} / {execution}: no comparison ({exc})")
                    continue
                table = table[~table["family"].str.startswith("all_reduce")
                              | table["family"].str.endswith(execution)]
                print(f"# {name} / {framework} {ref.version or '(newest)'} / {execution}")
                print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
