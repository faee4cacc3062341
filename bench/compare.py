#!/usr/bin/env python3
"""Turn anvil-bench JSON into a ratio table (anvil kernel vs reference library per shape),
a PNG plot, and optionally a gate against a baseline of ratios.

Benchmarks are named <op>/<shape>/<implementation>; implementations starting with
"anvil:" are anvil kernels, the others (openblas, onednn, ...) reference libraries.
ratio = median time of the reference library / median time of anvil (> 1: anvil faster).
--reference-impl makes the anvil kernels whose name matches REGEX (e.g. "cpu\\.|reference$")
references too, so that one backend is rated against another backend or anvil's reference.
Rows named "<op>/<shape>/paired:<kernel> vs <reference>" alternate the two call by call
(anvil-bench's register_paired_row); their ratio is the median pair ratio.
Ratios, never absolute times, are compared with the baseline, so noisy machines do not
flake the gate.

    compare.py run.json [--plot out.png] [--baseline base.json --margin 0.3 [--gate]]
                        [--reference-impl REGEX]
    compare.py run.json --write-baseline base.json
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict


def medians(path):
    """Median time and median FLOP/s per benchmark, the paired rows, the errors, and the run's context."""
    with open(path) as f:
        data = json.load(f)
    times = defaultdict(list)
    flops = defaultdict(list)
    paired = defaultdict(lambda: defaultdict(list))
    errors = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "").replace("/manual_time", "")
        if b.get("error_occurred"):
            errors[name] = b.get("error_message", "error")
            continue
        if "paired_ratio" in b:
            for counter in ("paired_ratio", "anvil_ms", "reference_ms"):
                paired[name][counter].append(b[counter])
            continue
        times[name].append(b["real_time"])
        if "FLOPS" in b:
            flops[name].append(b["FLOPS"])
    med_flops = {k: statistics.median(v) for k, v in flops.items()}
    med_paired = {k: {c: statistics.median(v) for c, v in counters.items()} for k, counters in paired.items()}
    return {k: statistics.median(v) for k, v in times.items()}, errors, data.get("context", {}), med_flops, med_paired


def paired_rows(med_paired):
    """Rows of the paired benchmarks ("<op>/<shape>/paired:<kernel> vs <reference>"): the
    median over repetitions of each repetition's median pair ratio."""
    rows = []
    for name, c in sorted(med_paired.items()):
        op, shape, impl = name.split("/", 2)
        kernel, reference = impl[len("paired:"):].split(" vs ", 1)
        rows.append((op, shape, "anvil:" + kernel, reference + " (paired)", c["anvil_ms"], c["reference_ms"],
                     c["paired_ratio"]))
    return rows


def ratio_rows(med, reference_impl=None):
    """(op, shape, anvil kernel, reference, anvil ms, reference ms, ratio) per pair; an anvil
    kernel matching reference_impl is a reference only."""
    def is_reference(impl):
        return not impl.startswith("anvil:") or bool(reference_impl and re.search(reference_impl, impl[6:]))

    by_shape = defaultdict(dict)
    for name, t in med.items():
        op, shape, impl = name.split("/", 2)
        by_shape[(op, shape)][impl] = t
    rows = []
    for (op, shape), impls in sorted(by_shape.items()):
        anvil_impls = {k: v for k, v in impls.items() if not is_reference(k)}
        refs = {k: v for k, v in impls.items() if is_reference(k)}
        for a, ta in anvil_impls.items():
            if not refs:
                rows.append((op, shape, a, "-", ta, None, None))
            for r, tr in refs.items():
                rows.append((op, shape, a, r, ta, tr, tr / ta))
    return rows


def key(row):
    op, shape, anvil_impl, ref = row[:4]
    return f"{op}/{shape}/{anvil_impl} vs {ref}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--plot")
    p.add_argument("--baseline")
    p.add_argument("--margin", type=float, default=0.3)
    p.add_argument("--gate", action="store_true")
    p.add_argument("--write-baseline")
    p.add_argument("--reference-impl", help="regex: anvil kernels that count as references")
    a = p.parse_args()

    med, errors, ctx, flops, med_paired = medians(a.json)
    peak = {k: v for k, v in flops.items() if k.startswith("peak/")}
    med = {k: v for k, v in med.items() if not k.startswith("peak/")}
    rows = sorted(ratio_rows(med, a.reference_impl) + paired_rows(med_paired))
    print(f"machine: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs @ {ctx.get('mhz_per_cpu', '?')} MHz"
          + (f", OpenBLAS core {ctx['openblas_core']}" if "openblas_core" in ctx else ""))
    def shown(impl):
        return impl[6:] if impl.startswith("anvil:") else impl

    ref_width = max([10] + [len(shown(r[3])) for r in rows])
    print(f"{'op':<10} {'shape':<22} {'anvil kernel':<30} {'reference':<{ref_width}} {'anvil ms':>10} {'ref ms':>10} {'ratio':>7}")
    for op, shape, impl, ref, ta, tr, ratio in rows:
        print(f"{op:<10} {shape:<22} {shown(impl):<30} {shown(ref):<{ref_width}} {ta:>10.3f} "
              f"{(f'{tr:.3f}' if tr else '-'):>10} {(f'{ratio:.3f}' if ratio else '-'):>7}")
    for name, msg in errors.items():
        print(f"ERROR {name}: {msg}")
    for pname, pflops in peak.items():
        print(f"{pname}: {pflops / 1e9:.1f} GFLOP/s; anvil f32 GEMM as a share of it:")
        for name, f in sorted(flops.items()):
            if name.startswith("gemm/") and "/anvil:" in name and "-bf16" not in name:
                print(f"  {name.split('/')[1]:<22} {f / 1e9:8.1f} GFLOP/s  {100 * f / pflops:5.1f}%")

    if a.plot and rows:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            rated = [r for r in rows if r[6] is not None]
            fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rated)), 4))
            ax.bar(range(len(rated)), [r[6] for r in rated])
            ax.axhline(1.0, color="k", linewidth=0.8)
            ax.set_xticks(range(len(rated)))
            ax.set_xticklabels([f"{r[0]} {r[1]}\nvs {r[3]}" for r in rated], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("speed ratio (reference time / anvil time)")
            ax.set_yscale("log")
            fig.tight_layout()
            fig.savefig(a.plot, dpi=120)
            print(f"plot: {a.plot}")
        except ImportError:
            print("plot: matplotlib not installed, skipped")

    ratios = {key(r): r[6] for r in rows if r[6] is not None}
    if a.write_baseline:
        with open(a.write_baseline, "w") as f:
            json.dump({"margin_note": "ratios = reference time / anvil time", "ratios": ratios}, f, indent=2, sort_keys=True)
        print(f"baseline written: {a.write_baseline}")
    failed = bool(errors)
    if a.baseline:
        try:
            with open(a.baseline) as f:
                base = json.load(f)["ratios"]
        except FileNotFoundError:
            base = {}
            print(f"baseline {a.baseline} not found: nothing to compare")
        for k, b in sorted(base.items()):
            now = ratios.get(k)
            if now is None:
                print(f"baseline: {k}: not measured in this run")
                continue
            floor = b * (1.0 - a.margin)
            status = "ok" if now >= floor else "REGRESSED"
            failed |= status != "ok" and a.gate
            print(f"baseline: {k}: {now:.3f} vs {b:.3f} (floor {floor:.3f}) {status}")
    sys.exit(1 if failed and a.gate else 0)


if __name__ == "__main__":
    main()
