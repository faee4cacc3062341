#!/usr/bin/env python3
"""anvil's cuda kernels against the vendor libraries torch calls, on one GPU, in one process.

    python3 bench/cuda_compare.py [--reps 20] [--quick] [--json out.json]

GEMM vs torch.mm (cuBLAS), conv2d vs F.conv2d on channels_last tensors (cuDNN), attention
vs F.scaled_dot_product_attention (torch picks its flash backend for these shapes). Each
anvil result is first checked against torch's (relative max error); a wrong one is
reported and not timed. Pairs are timed interleaved with CUDA events after warm-up, on
fresh random inputs (never zeros), and the medians compared:
ratio = torch time / anvil time (> 1: anvil faster). The table is printed last.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import anvil

ROWS = []


def event_time(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)  # ms


def kernel_of(op, *args, **kwargs):
    text = anvil.explain(op, *args, **kwargs)
    taken = [l for l in text.splitlines() if l.strip().startswith("taken")]
    return taken[0].split()[1] if taken else "?"


def compare(label, anvil_fn, torch_fn, flops, reps, tol, kernel="", inner=1):
    try:
        got, want = anvil_fn(), torch_fn()
        torch.cuda.synchronize()
        err = ((got.float() - want.float()).abs().max() / (want.float().abs().max() + 1e-6)).item()
        if not err <= tol:
            ROWS.append((label, kernel, None, None, None, f"WRONG (rel max error {err:.2e})"))
            print(f"{label}: WRONG (rel max error {err:.2e}, kernel {kernel})", flush=True)
            return
        for _ in range(3):
            anvil_fn(), torch_fn()
        ta, tt = [], []
        for _ in range(reps):
            ta.append(event_time(lambda: [anvil_fn() for _ in range(inner)]) / inner)
            tt.append(event_time(lambda: [torch_fn() for _ in range(inner)]) / inner)
        ma, mt = statistics.median(ta), statistics.median(tt)
        ROWS.append((label, kernel, ma, mt, flops / (ma * 1e-3) / 1e12 if flops else None, f"err {err:.1e}"))
        print(f"{label}: anvil {ma:.4f} ms, torch {mt:.4f} ms, ratio {mt / ma:.3f} ({kernel})", flush=True)
    except Exception as e:  # one failing row must not hide the others
        ROWS.append((label, kernel, None, None, None, f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
        print(f"{label}: ERROR {e}", flush=True)


def gemm_rows(reps, quick):
    torch.backends.cuda.matmul.allow_tf32 = False  # anvil's f32 path is plain f32
    shapes = [(4096, 4096, 4096), (8192, 8192, 8192), (2048, 2048, 2048), (1024, 1024, 1024)]
    if not quick:
        shapes += [(512, 4096, 4096), (16, 4096, 4096), (4096, 11008, 4096), (8192, 1024, 8192)]
    for dtype in (torch.bfloat16, torch.float16):
        for m, n, k in shapes if dtype == torch.bfloat16 else shapes[:1]:
            a = torch.randn(m, k, device="cuda", dtype=dtype)
            b = torch.randn(k, n, device="cuda", dtype=dtype)
            compare(f"gemm {str(dtype)[6:]} {m}x{n}x{k}", lambda: anvil.gemm(a, b), lambda: torch.mm(a, b),
                    2 * m * n * k, reps, 2e-2, kernel_of("gemm", a, b))
    # B given as the transpose of a (N, K) weight: the nn.Linear layout.
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    compare("gemm bf16 4096^3 b=w.t()", lambda: anvil.gemm(a, w.t()), lambda: torch.mm(a, w.t()), 2 * 4096**3, reps,
            2e-2, kernel_of("gemm", a, w.t()))
    # The sm_80 mainloop on the same chip, forced, for the record.
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with anvil.force(kernel="gemm.bf16.cuda.sm80_mma"):
        compare("gemm bf16 4096^3 forced sm80_mma", lambda: anvil.gemm(a, b), lambda: torch.mm(a, b), 2 * 4096**3,
                reps, 2e-2, "gemm.bf16.cuda.sm80_mma")
    a32, b32 = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    compare("gemm f32 2048^3 (no tf32)", lambda: anvil.gemm(a32, b32), lambda: torch.mm(a32, b32), 2 * 2048**3, reps,
            1e-4, kernel_of("gemm", a32, b32))


RESNET50 = [  # name, C, H, K, R, stride, pad
    ("conv1", 3, 224, 64, 7, 2, 3), ("res2-1x1a", 64, 56, 64, 1, 1, 0), ("res2-3x3", 64, 56, 64, 3, 1, 1),
    ("res2-1x1b", 64, 56, 256, 1, 1, 0), ("res3-3x3", 128, 28, 128, 3, 1, 1), ("res3-down", 256, 56, 512, 1, 2, 0),
    ("res4-3x3", 256, 14, 256, 3, 1, 1), ("res4-1x1", 256, 14, 1024, 1, 1, 0), ("res5-3x3", 512, 7, 512, 3, 1, 1),
    ("res5-1x1", 512, 7, 2048, 1, 1, 0),
]


def conv_rows(reps, quick):
    for batch in (8,) if quick else (8, 32):
        for name, c, h, k, r, stride, pad in RESNET50:
            x = torch.randn(batch, c, h, h, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            w = torch.randn(k, c, r, r, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            p = (h + 2 * pad - r) // stride + 1
            compare(f"conv2d bf16 {name} n{batch} NHWC", lambda: anvil.conv2d(x, w, None, stride, pad),
                    lambda: F.conv2d(x, w, None, stride, pad), 2 * batch * k * p * p * c * r * r, reps, 2e-2,
                    kernel_of("conv2d", x, w, stride=stride, padding=pad))


def attention_rows(reps, quick):
    shapes = [(2, 16, 4096, 128, False), (2, 16, 4096, 128, True), (4, 16, 2048, 64, True)]
    if not quick:
        shapes += [(8, 16, 1024, 128, False), (1, 32, 8192, 128, True)]
    for b, h, s, d, causal in shapes:
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * s * s * d // (2 if causal else 1)
        compare(f"attention fwd bf16 b{b}h{h}s{s}d{d}{' causal' if causal else ''}",
                lambda: anvil.attention(q, k, v, is_causal=causal),
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), flops, reps, 2e-2,
                kernel_of("attention", q, k, v, is_causal=causal))
    b, h, s, d = 2, 8, 1024, 64
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
    anvil_out = anvil.attention(q, k, v, is_causal=True)
    torch_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    compare(f"attention bwd bf16 b{b}h{h}s{s}d{d} causal",
            lambda: torch.autograd.grad(anvil_out, (q, k, v), grad, retain_graph=True)[0],
            lambda: torch.autograd.grad(torch_out, (q, k, v), grad, retain_graph=True)[0], 2.5 * 4 * b * h * s * s * d / 2,
            max(3, reps // 4), 5e-2, f"attention_backward ({'hip' if torch.version.hip else 'cuda'})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="fewer shapes (the GPU provider's time budget)")
    p.add_argument("--ops", default="gemm,conv2d,attention")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_compare: torch sees no CUDA device")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    header = (f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}; "
              "ratio = torch time / anvil time (> 1: anvil faster)")
    print(header, flush=True)
    ops = a.ops.split(",")
    if "gemm" in ops:
        gemm_rows(a.reps, a.quick)
    if "conv2d" in ops:
        conv_rows(a.reps, a.quick)
    if "attention" in ops:
        attention_rows(a.reps, a.quick)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": header, "rows": ROWS}, f, indent=1)
    print("\n" + header)
    print(f"{'case':<44} {'anvil ms':>9} {'torch ms':>9} {'ratio':>6} {'TFLOP/s':>8}  kernel / note")
    for label, kernel, ma, mt, tflops, note in ROWS:
        if ma is None:
            print(f"{label:<44} {'':>9} {'':>9} {'':>6} {'':>8}  {kernel} {note}")
        else:
            print(f"{label:<44} {ma:>9.4f} {mt:>9.4f} {mt / ma:>6.3f} {tflops or 0:>8.1f}  {kernel}")


if __name__ == "__main__":
    main()
