#!/usr/bin/env python3
"""anvil's hip kernels against the vendor libraries a ROCm build of torch calls, on one AMD
GPU, in one process.

    python3 bench/rocm_compare.py [--reps 20] [--quick] [--json out.json]

GEMM: a shape sweep against torch.mm on hipBLASLt and on rocBLAS (torch's preferred BLAS
library switched between the two), bf16 and f16, plus f32 (SIMT on anvil's side). conv2d
against F.conv2d on channels_last tensors (MIOpen), attention forward and backward against
F.scaled_dot_product_attention. The method is bench/cuda_compare.py's (same functions): each
anvil result is checked against torch's first, pairs are timed interleaved with GPU events
(hipEvents under torch.cuda) after warm-up, medians compared, ratio = torch time / anvil
time. The table is printed last, with the GEMM sweep's geometric mean and minimum against
hipBLASLt (PERFORMANCE.md's MI300-class goal: >= 0.85x, no shape below 0.5x).
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_compare as cc  # noqa: E402  (compare, kernel_of, conv_rows, attention_rows, ROWS)

import anvil  # noqa: E402

SWEEP = [  # m, n, k
    (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
    (16, 4096, 4096), (512, 4096, 4096), (4096, 11008, 4096), (8192, 1024, 8192),
    (1000, 1000, 1000), (4096, 4096, 320),
]
QUICK = {(2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192), (16, 4096, 4096), (4096, 11008, 4096)}


def set_blas(name):
    """torch's GEMM library on ROCm: "cublaslt" selects hipBLASLt, "cublas" rocBLAS."""
    try:
        torch.backends.cuda.preferred_blas_library(name)
        return True
    except Exception as e:  # older torch: one library only
        print(f"rocm_compare: cannot select {name}: {e}", flush=True)
        return False


def gemm_rows(reps, quick):
    torch.backends.cuda.matmul.allow_tf32 = False
    sweep_labels = []
    for library, label in (("cublaslt", "hipBLASLt"), ("cublas", "rocBLAS")):
        if not set_blas(library):
            continue
        for dtype in (torch.bfloat16, torch.float16):
            for m, n, k in SWEEP:
                if quick and ((m, n, k) not in QUICK or dtype == torch.float16):
                    continue
                a = torch.randn(m, k, device="cuda", dtype=dtype)
                b = torch.randn(k, n, device="cuda", dtype=dtype)
                row = f"gemm {str(dtype)[6:]} {m}x{n}x{k} vs {label}"
                cc.compare(row, lambda: anvil.gemm(a, b), lambda: torch.mm(a, b), 2 * m * n * k, reps, 2e-2,
                           cc.kernel_of("gemm", a, b))
                if label == "hipBLASLt":
                    sweep_labels.append(row)
    set_blas("cublaslt")
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    cc.compare("gemm bf16 4096^3, b = w.t()", lambda: anvil.gemm(a, w.t()), lambda: torch.mm(a, w.t()), 2 * 4096**3,
               reps, 2e-2, cc.kernel_of("gemm", a, w.t()))
    a32, b32 = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    cc.compare("gemm f32 2048^3", lambda: anvil.gemm(a32, b32), lambda: torch.mm(a32, b32), 2 * 2048**3, reps, 1e-4,
               cc.kernel_of("gemm", a32, b32))
    return sweep_labels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="fewer shapes (the GPU provider's time budget)")
    p.add_argument("--ops", default="gemm,conv2d,attention")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    if not torch.cuda.is_available() or not torch.version.hip:
        sys.exit("rocm_compare: needs a ROCm build of torch that sees an AMD GPU")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    arch = getattr(props, "gcnArchName", "?")
    header = (f"{props.name} ({arch}), {props.multi_processor_count} CUs, torch {torch.__version__}, "
              f"HIP {torch.version.hip}; ratio = torch time / anvil time (> 1: anvil faster)")
    print(header, flush=True)
    ops = a.ops.split(",")
    sweep = gemm_rows(a.reps, a.quick) if "gemm" in ops else []
    if "conv2d" in ops:
        cc.conv_rows(a.reps, a.quick)
    if "attention" in ops:
        cc.attention_rows(a.reps, a.quick)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": header, "rows": cc.ROWS}, f, indent=1)
    print("\n" + header)
    print(f"{'case':<44} {'anvil ms':>9} {'torch ms':>9} {'ratio':>6} {'TFLOP/s':>8}  kernel / note")
    ratios = []
    for label, kernel, ma, mt, tflops, note in cc.ROWS:
        if ma is None:
            print(f"{label:<44} {'':>9} {'':>9} {'':>6} {'':>8}  {kernel} {note}")
            continue
        print(f"{label:<44} {ma:>9.4f} {mt:>9.4f} {mt / ma:>6.3f} {tflops or 0:>8.1f}  {kernel}")
        if label in sweep:
            ratios.append(mt / ma)
    if ratios:
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"GEMM sweep vs hipBLASLt: {len(ratios)} shapes, geometric mean {geomean:.3f}, minimum {min(ratios):.3f} "
              "(goal: >= 0.85, no shape below 0.5)")


if __name__ == "__main__":
    main()
