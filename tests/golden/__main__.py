"""Regenerate, check or measure the coverage of the golden results.

    python -m tests.golden --update [NAME ...]   rewrite tests/golden/NAME.* (default: every experiment)
    python -m tests.golden --check [NAME ...]    run and print the differences from the goldens
    python -m tests.golden --coverage [PROFILE ...]
        for every sourced number of each built-in profile the goldens use, scale it by 1.03 and
        report the first golden experiment (cheapest first) whose results change, or that none does

Run from the repository root. A regeneration must be explained in its commit message.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

from . import (REDUCTIONS, compare, detects, path_label, profile_data, profiles_used, report,
               run_reduced, shipped_names, sourced_numbers, write_golden)

# cheapest first: the order in which --coverage tries the experiments that use a profile
COST_ORDER = ["liger-artifact-2xv100", "tp-vs-pp-a100-pcie", "quickstart", "liger-4-devices",
              "iso-rtx4090", "iso-a800"]


def _names(given: list[str]) -> list[str]:
    names = given or shipped_names()
    unknown = [n for n in names if n not in REDUCTIONS]
    if unknown:
        sys.exit(f"no reduction for {', '.join(unknown)}: add it to REDUCTIONS in tests/golden/__init__.py")
    return names


def update(names: list[str]) -> None:
    for name in _names(names):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_reduced(name, tmp)
        for path in write_golden(result):
            print(f"wrote {path}")
        print(f"  {name}: {len(result.summary)} summary rows, {len(result.requests)} request rows, "
              f"{time.perf_counter() - t:.1f} s")


def check(names: list[str]) -> int:
    bad = 0
    for name in _names(names):
        with tempfile.TemporaryDirectory() as tmp:
            diffs = compare(run_reduced(name, tmp))
        print(report(name, diffs) if diffs else f"{name}: identical to the golden")
        bad += bool(diffs)
    return 1 if bad else 0


def coverage(profiles: list[str]) -> int:
    by_profile: dict[str, list[str]] = {}
    for name in COST_ORDER + [n for n in shipped_names() if n not in COST_ORDER]:
        for hw in profiles_used(name):
            by_profile.setdefault(hw, []).append(name)
    missed = []
    for hw in profiles or sorted(by_profile):
        print(f"\n{hw} (goldens: {', '.join(by_profile.get(hw, [])) or 'none'})")
        for path in sourced_numbers(profile_data(hw)):
            label = path_label(path)
            found, skipped = None, False
            for name in by_profile.get(hw, []):
                diffs = detects(name, hw, path)
                if diffs is None:
                    skipped = True
                    break
                if diffs:
                    found = (name, len(diffs))
                    break
            if skipped:
                print(f"  n/a        {label}: an integer that 3% does not change")
            elif found:
                print(f"  detected   {label}: by {found[0]} ({found[1]} differences)")
            else:
                print(f"  NOT COVERED {label}")
                missed.append(f"{hw}: {label}")
            sys.stdout.flush()
    print(f"\n{len(missed)} number(s) whose 3% change no golden detects" + (":" if missed else ""))
    for m in missed:
        print("  " + m)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="rewrite the golden files")
    mode.add_argument("--check", action="store_true", help="print differences from the goldens")
    mode.add_argument("--coverage", action="store_true",
                      help="which profile numbers a 3%% change of is detected by a golden")
    ap.add_argument("names", nargs="*", help="experiments (or, with --coverage, profiles)")
    args = ap.parse_args(argv)
    if args.update:
        update(args.names)
        return 0
    if args.check:
        return check(args.names)
    return coverage(args.names)


if __name__ == "__main__":
    sys.exit(main())
