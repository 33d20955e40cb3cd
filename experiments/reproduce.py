"""Regenerate REPRODUCTION.md: run the seed papers' setups and set their claims beside parasim's
predictions.

    python experiments/reproduce.py [--out results/reproduction] [--jobs 2] [--doc REPRODUCTION.md]

Runs experiments/iso-rtx4090.yaml, iso-a800.yaml, liger-4-devices.yaml and
liger-artifact-2xv100.yaml through the runner (finished points are cached in OUT/<experiment>/), then
writes the report. Nothing here is tuned to the papers: the numbers are what the simulator
predicts with the built-in profiles, and the report says how close they land and why.

The report is rewritten only when something in it other than its date changed, so a rerun with
the same results leaves the file (and its date) alone.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import date

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from simulator import __version__  # noqa: E402
from simulator.compare import compare_frame  # noqa: E402
from simulator.io import write_text  # noqa: E402
from simulator.runner import run_experiment  # noqa: E402

EXPERIMENTS = ("iso-rtx4090", "iso-a800", "liger-4-devices", "liger-artifact-2xv100")
ISO_CLAIMS = {"iso-rtx4090": ("RTX 4090", 35.0), "iso-a800": ("A800", 15.0)}


def ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["error"].fillna("").astype(str) == ""]


def label_of(frame: pd.DataFrame, prefix: str) -> str:
    labels = [s for s in frame["strategy"].unique() if s == prefix or s.startswith(prefix + "[")
              or s.startswith(prefix + "-")]
    return labels[0] if labels else prefix


def iso_section(name: str, summary: pd.DataFrame) -> list[str]:
    gpu, claim = ISO_CLAIMS[name]
    s = ok(summary)
    length = "workload.prompt_tokens"
    out = [f"### ISO on {gpu}: paper ~{claim:.0f}% less prefill time (30B/70B models)", "",
           f"Setup (`experiments/{name}.yaml`): one request at a time, prefill only, TP over all "
           "devices, prompts of 512 to 8192 tokens; ISO with 2 chunks, equal-token and cost-"
           "balanced splits. The paper gives no GPU count, so 4 and 8 devices are both shown.", "",
           "| model | devices | split | reduction vs tp (mean over prompt lengths) | range | "
           "tp communication share | overlap bound |", "|---|---|---|---|---|---|---|"]
    best = []
    for (model, devices), g in s.groupby(["model", "devices"]):
        tp = g[g["strategy"] == "tp"].set_index(length)
        comm = float((tp["exposed_comm_fraction"]).mean())
        bound = 100.0 * min(comm, 1.0 - comm)
        for label in [x for x in g["strategy"].unique() if x != "tp"]:
            iso = g[g["strategy"] == label].set_index(length)
            red = 100.0 * (1.0 - iso["jct_mean_s"] / tp["jct_mean_s"]).dropna()
            best.append((model, devices, label, red.mean()))
            out.append(f"| {model} | {devices} | {label} | {red.mean():.1f}% | "
                       f"{red.min():.1f}% to {red.max():.1f}% | {100 * comm:.0f}% | {bound:.0f}% |")
    failed = summary[summary["error"].fillna("").astype(str) != ""]
    for _, row in failed.drop_duplicates(["model", "devices"]).iterrows():
        out.append(f"| {row['model']} | {row['devices']} | - | not run: does not fit in device "
                   "memory | | | |")
    reds = [b[3] for b in best]
    out += ["", f"parasim predicts {min(reds):.0f}% to {max(reds):.0f}% against the paper's "
            f"~{claim:.0f}% (difference {min(reds) - claim:+.0f} to {max(reds) - claim:+.0f} "
            "points).", "",
            "What explains it: with communication share c of tp's time (communication time with no "
            "compute beside it), two-chunk overlap can remove at most min(c, 1 - c) of it; chunking "
            "lowers GEMM efficiency (smaller m), and overlapped compute runs slower by the "
            "profile's contention factors, so the prediction stays under that bound. The share c "
            "depends on the device count (larger TP: less compute per device, more ranks per "
            "all-reduce) and on the interconnect; the paper's count is unknown.", ""]
    return out


def liger_section(summary: pd.DataFrame) -> list[str]:
    s = ok(summary)
    tp, pp, lg = label_of(s, "tp"), label_of(s, "pp"), label_of(s, "liger")
    out = ["### Liger on 4 devices: paper -36.0% mean JCT at PP's JPC; 1.34x TP's JPC", "",
           "Setup (`experiments/liger-4-devices.yaml`): 4 devices, GLM-130B-shaped layers (the "
           "artifact's shape) cut to fit 4 devices, batch 2, sequence length 16 to 115, single pass, "
           "Poisson arrivals from light load to saturation; tp, pp (4 stages) and liger (artifact "
           "defaults: window 6, contention factor 0.8, decomposition into eighths).", "",
           "| hardware | liger vs pp: JCT at equal throughput (highest common) | (middle of overlap) "
           "| liger vs tp: max throughput | liger vs tp: JCT at equal throughput | tp comm share |",
           "|---|---|---|---|---|---|"]
    notes: list[str] = []
    cmp_max = compare_frame(s, at="max")
    cmp_mid = compare_frame(s, at="mid")
    key = "hardware" if "hardware" in cmp_max.columns else None
    for hw, g in (s.groupby("hardware") if key else [(s["hardware"].iloc[0], s)]):
        def pick(frame, a, b):
            f = frame[(frame["strategy_a"] == a) & (frame["strategy_b"] == b)]
            if key:
                f = f[f[key] == hw]
            return f.iloc[0] if len(f) else None
        vs_pp, vs_pp_mid, vs_tp = pick(cmp_max, lg, pp), pick(cmp_mid, lg, pp), pick(cmp_max, lg, tp)
        comm = float(g[g["strategy"] == tp]["exposed_comm_fraction"].mean())
        out.append(f"| {hw} | {_pct(vs_pp)} | {_pct(vs_pp_mid)} | "
                   f"{vs_tp['max_throughput_ratio']:.2f}x | {_pct(vs_tp)} | {100 * comm:.0f}% |")
        rate = "workload.arrival.rate_rps"
        light = g[g[rate] == g[rate].min()].set_index("strategy")["jct_mean_s"]
        notes.append(f"On {hw}, tp's exposed communication is {100 * comm:.0f}% of its busy time "
                     f"(the most liger can hide under other requests' compute), and at the lightest "
                     f"load pp's mean JCT is {light[pp] / light[tp]:.1f}x tp's and liger's "
                     f"{light[lg] / light[tp]:.2f}x.")
    out += ["", "Paper: liger's mean JCT is 36.0% lower than pp's at the same JPC, and its JPC is "
            "1.34x tp's (with lower mean JCT). A negative percentage above means liger's JCT is "
            "lower. The paper's model, request shapes and load points are not public (liger.md "
            "section 3), so the setup is ours; the comparison point on the curves matters "
            "(both readings are shown).", "",
            "What explains it: liger helps only while several requests are in flight and only by "
            "the part of communication it can hide under other requests' compute: its gain over tp "
            "grows with tp's communication share (larger on PCIe than on NVLink), and its fill "
            "budget (0.8 x the head segment) plus one all-reduce per segment caps the overlap. "
            "Against pp, liger keeps tp's per-request latency at low load, while pp's latency is "
            "the sum of its stages; at saturation pp's throughput has no collectives to pay.", ""]
    return out + [" ".join(notes), ""]


def _pct(row) -> str:
    if row is None or not np.isfinite(row["jct_reduction_pct"]):
        reason = "" if row is None else row.get("reason", "")
        return f"n/a {reason}".strip()
    return (f"{-row['jct_reduction_pct']:+.1f}% at {row['throughput_at_rps']:.1f} req/s")


def artifact_section(summary: pd.DataFrame) -> list[str]:
    s = ok(summary).set_index("strategy")
    tp, lg = label_of(s.reset_index(), "tp"), label_of(s.reset_index(), "liger")
    out = ["### Liger artifact run: 2 x V100, GLM-130B layer shape cut to 4 layers", "",
           "Setup (`experiments/liger-artifact-2xv100.yaml`): as the artifact's logs: batch 2, "
           "sequence length uniform 16 to 115 with batch x length divisible by 4, 150 requests "
           "at once, the first 20 left out. The logs' own figures are not public in our sources, "
           "so this is a prediction without a reference.", "",
           "| strategy | mean JCT | throughput (samples/s) |", "|---|---|---|"]
    for label in (tp, lg):
        r = s.loc[label]
        out.append(f"| {label} | {r['jct_mean_s'] * 1e3:.1f} ms | "
                   f"{r['throughput_rps'] * 2:.1f} |")
    ratio = s.loc[lg, "throughput_rps"] / s.loc[tp, "throughput_rps"]
    out += ["", f"liger / tp throughput: {ratio:.2f}x.", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/reproduction")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--doc", default=os.path.join(os.path.dirname(HERE), "REPRODUCTION.md"))
    args = ap.parse_args()
    summaries = {}
    for name in EXPERIMENTS:
        path = os.path.join(HERE, f"{name}.yaml")
        summaries[name] = run_experiment(path, os.path.join(args.out, name), workers=args.jobs,
                                         progress=sys.stderr.isatty(), traced=set(), quiet=True)
    lines = ["# Reproduction of the seed papers' claims", "",
             f"Generated by `python experiments/reproduce.py` (parasim {__version__}, "
             f"{date.today().isoformat()}). Do not edit by hand. No parameter of any profile or "
             "strategy was tuned to these claims; every number below is a prediction from the "
             "built-in hardware profiles (see `parasim hardware show NAME` for their sources).", "",
             "| claim | paper | parasim | difference | section |", "|---|---|---|---|---|"]
    body = []
    for name in ("iso-rtx4090", "iso-a800"):
        body += iso_section(name, summaries[name])
    body += liger_section(summaries["liger-4-devices"])
    body += artifact_section(summaries["liger-artifact-2xv100"])
    lines += _claims_table(summaries) + [""] + body
    text = "\n".join(lines) + "\n"
    if _same_but_date(args.doc, text):
        print(f"{args.doc} is up to date (only its date would change); left as it is")
        return
    write_text(args.doc, text)
    print(f"wrote {args.doc}")


GENERATED_DATE = re.compile(r"(Generated by .*?\(parasim [^,()]*, )\d{4}-\d{2}-\d{2}\)")


def _same_but_date(path: str, text: str) -> bool:
    """True when the report at `path` equals `text` except for the generation date."""
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as fh:
        old = fh.read()
    return GENERATED_DATE.sub(r"\1DATE)", old) == GENERATED_DATE.sub(r"\1DATE)", text)


def _claims_table(summaries: dict) -> list[str]:
    rows = []
    for name in ("iso-rtx4090", "iso-a800"):
        gpu, claim = ISO_CLAIMS[name]
        s = ok(summaries[name])
        tp = s[s["strategy"] == "tp"]
        merged = s[s["strategy"] != "tp"].merge(
            tp[["model", "devices", "workload.prompt_tokens", "jct_mean_s"]],
            on=["model", "devices", "workload.prompt_tokens"], suffixes=("", "_tp"))
        red = 100 * (1 - merged["jct_mean_s"] / merged["jct_mean_s_tp"])
        by = red.groupby(merged["devices"]).mean()
        pred = ", ".join(f"{v:.0f}% on {d} devices" for d, v in by.items())
        diff = ", ".join(f"{v - claim:+.0f} points" for v in by.values)
        rows.append(f"| ISO prefill time reduction, {gpu}, 30B/70B | ~{claim:.0f}% | {pred} | {diff} | "
                    f"[ISO on {gpu}](#iso-on-{gpu.lower().replace(' ', '-')}-paper-{claim:.0f}-less-prefill-time-30b70b-models) |")
    s = ok(summaries["liger-4-devices"])
    lg, pp, tp = label_of(s, "liger"), label_of(s, "pp"), label_of(s, "tp")
    readings = {at: compare_frame(s, at=at) for at in ("max", "mid")}

    def pick(at, hw, a, b):
        f = readings[at]
        f = f[f["hardware"] == hw] if "hardware" in f.columns else f
        f = f[(f["strategy_a"] == a) & (f["strategy_b"] == b)]
        return f.iloc[0] if len(f) else None

    for hw in sorted(s["hardware"].unique()):
        parts, diffs = [], []
        for at, name in (("max", "at the highest common throughput"), ("mid", "mid-range")):
            r = pick(at, hw, lg, pp)
            if r is not None and np.isfinite(r["jct_reduction_pct"]):
                parts.append(f"{-r['jct_reduction_pct']:+.1f}% {name} ({r['throughput_at_rps']:.1f} req/s)")
                diffs.append(f"{-r['jct_reduction_pct'] + 36.0:+.1f} points")
        jct = "; ".join(parts) or "n/a"
        b = pick("max", hw, lg, tp)
        thr = f"{b['max_throughput_ratio']:.2f}x" if b is not None else "n/a"
        thr_diff = f"{(b['max_throughput_ratio'] / 1.34 - 1) * 100:+.0f}%" if b is not None else "n/a"
        link = "[Liger](#liger-on-4-devices-paper-360-mean-jct-at-pps-jpc-134x-tps-jpc)"
        rows.append(f"| Liger vs PP, mean JCT at equal JPC, 4 devices ({hw}) | -36.0% | {jct} | "
                    f"{'; '.join(diffs) or 'n/a'} | {link} |")
        rows.append(f"| Liger vs TP, JPC, 4 devices ({hw}) | 1.34x | {thr} | {thr_diff} | {link} |")
    return rows


if __name__ == "__main__":
    main()
