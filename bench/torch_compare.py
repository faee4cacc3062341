#!/usr/bin/env python3
"""torch.ops.anvil.* against torch on the same inputs, in one process.

Each pair is timed interleaved (anvil, torch, anvil, torch, ...) after warm-up and the
median of the repetitions is compared; the first anvil result is checked against torch
before anything is timed. Prints ratio = torch time / anvil time (> 1: anvil faster).

    python3 bench/torch_compare.py [--reps 15] [--max-gflop 0.05]
"""
import argparse
import csv
import os
import statistics
import time

import torch
import torch.nn.functional as F

import anvil

SHAPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes")


def rows(name, tag):
    with open(os.path.join(SHAPES, name + ".csv")) as f:
        return [r for r in csv.DictReader(line for line in f if not line.startswith("#")) if r["tags"] == tag]


def timed(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare(label, anvil_fn, torch_fn, reps, atol):
    got, want = anvil_fn(), torch_fn()
    err = (got.double() - want.double()).abs().max().item()
    if err > atol:
        print(f"{label:<40} WRONG RESULT (max error {err:.3g}); not timed")
        return
    for _ in range(2):
        anvil_fn(), torch_fn()
    ta, tt = [], []
    for _ in range(reps):  # interleave so that drift hits both sides alike
        ta += timed(anvil_fn, 1)
        tt += timed(torch_fn, 1)
    ma, mt = statistics.median(ta), statistics.median(tt)
    print(f"{label:<40} {ma * 1e3:>10.3f} {mt * 1e3:>10.3f} {mt / ma:>7.3f}")


def conv2d_on_cpu_backend(x, w, stride, padding):
    with anvil.force(backend="cpu"):
        return anvil.conv2d(x, w, None, stride, padding)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--max-gflop", type=float, default=0.05, help="skip shapes above this while anvil runs the reference")
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratio = torch time / anvil time")
    print(f"{'case':<40} {'anvil ms':>10} {'torch ms':>10} {'ratio':>7}")
    # torch op overhead goal: torch.ops.anvil.gemm at 64x64 f32 <= 1.3x torch.mm
    x, y = torch.randn(64, 64), torch.randn(64, 64)
    compare("gemm 64x64x64 (op overhead)", lambda: torch.ops.anvil.gemm(x, y), lambda: torch.mm(x, y), a.reps, 1e-4)
    for r in rows("gemm", "small") + rows("gemm", "square") + rows("gemm", "skinny"):
        m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
        if 2 * m * n * k > a.max_gflop * 1e9:
            continue
        x, y = torch.randn(m, k), torch.randn(k, n)
        compare(f"gemm {m}x{n}x{k}", lambda: anvil.gemm(x, y), lambda: torch.mm(x, y), a.reps, 1e-3)
    # conv2d as a channels_last model runs it (input and weight channels_last): the cpu
    # backend's kernel (forced), and whatever anvil picks by default (oneapi when built).
    for n in (1, 8):
        for r in rows("conv2d", "resnet50"):
            c, h, w, kk, rr, s = (int(r[i]) for i in ("c", "h", "w", "k", "r", "s"))
            st, pd = int(r["stride"]), int(r["pad"])
            hout = (h + 2 * pd - rr) // st + 1
            if 2 * n * kk * hout * hout * c * rr * s > a.max_gflop * 1e9:
                continue
            xi = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
            wt = torch.randn(kk, c, rr, s).to(memory_format=torch.channels_last)

            compare(f"conv2d {r['name']} n{n} cpu", lambda: conv2d_on_cpu_backend(xi, wt, st, pd),
                    lambda: F.conv2d(xi, wt, None, st, pd), a.reps, 1e-2)
            compare(f"conv2d {r['name']} n{n} default", lambda: anvil.conv2d(xi, wt, None, st, pd),
                    lambda: F.conv2d(xi, wt, None, st, pd), a.reps, 1e-2)
            # backward alone (input and weight gradients), each library's own forward graph
            xg, wg = xi.clone().requires_grad_(), wt.clone().requires_grad_()
            anvil_out, torch_out = conv2d_on_cpu_backend(xg, wg, st, pd), F.conv2d(xg, wg, None, st, pd)
            grad = torch.randn_like(torch_out).contiguous(memory_format=torch.channels_last)

            def anvil_backward():
                with anvil.force(backend="cpu"):
                    return torch.autograd.grad(anvil_out, (xg, wg), grad, retain_graph=True)[1]

            def torch_backward():
                return torch.autograd.grad(torch_out, (xg, wg), grad, retain_graph=True)[1]

            # (the weight gradient sums over every output pixel: checked relative to its size)
            compare(f"conv2d backward {r['name']} n{n} cpu", anvil_backward, torch_backward, a.reps,
                    1e-4 * float(torch_backward().abs().max()))
    for r in rows("attention", "bench") + [{"batch": 1, "heads": 2, "kv_heads": 2, "seq_q": 128, "seq_k": 128,
                                            "head_dim": 64, "causal": 1}]:
        b, h, hk, lq, lk, e = (int(r[i]) for i in ("batch", "heads", "kv_heads", "seq_q", "seq_k", "head_dim"))
        causal = bool(int(r["causal"]))
        if 4 * b * h * lq * lk * e > a.max_gflop * 1e9:
            continue
        q, k, v = torch.randn(b, h, lq, e), torch.randn(b, hk, lk, e), torch.randn(b, hk, lk, e)
        name = f"b{b}h{h}s{lq}d{e}{'c' if causal else ''}"
        compare(f"attention {name}", lambda: anvil.attention(q, k, v, is_causal=causal),
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), a.reps, 1e-4)
        # backward alone: gradients of the same forward output, through each library's autograd
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        grad = torch.randn(b, h, lq, e)
        anvil_out = anvil.attention(qg, kg, vg, is_causal=causal)
        torch_out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        compare(f"attention backward {name}",
                lambda: torch.autograd.grad(anvil_out, (qg, kg, vg), grad, retain_graph=True)[0],
                lambda: torch.autograd.grad(torch_out, (qg, kg, vg), grad, retain_graph=True)[0], a.reps, 1e-3)


if __name__ == "__main__":
    main()
