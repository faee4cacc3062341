"""Fake (meta) kernels for torch.ops.anvil.*.

Fake kernels mirror the C++ impls' output shapes, dtypes and strides exactly, so that
torch.compile and opcheck see the same tensors as eager.
"""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

# ------------------------------------------------------------------ fake kernels


@torch.library.register_fake("anvil::gemm")
def _gemm_fake(a, b, bias=None):
    torch._check(a.dim() >= 2, lambda: f"anvil.gemm: a: expected (..., M, K), got rank {a.dim()}")
    torch._check(b.dim() >= 2, lambda: f"anvil.gemm: b: expected (..., K, N), got rank {b.dim()}")
    torch._check(a.shape[-1] == b.shape[-2], lambda: "anvil.gemm: b: inner dimensions differ")
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.new_empty((*batch, a.shape[-2], b.shape[-1]))


@torch.library.register_fake("anvil::gemm_backward")
def _gemm_backward_fake(grad, a, b, output_mask):
    return (
        a.new_empty(a.shape) if output_mask[0] else a.new_empty((0,)),
        b.new_empty(b.shape) if output_mask[1] else a.new_empty((0,)),
        a.new_empty((b.shape[-1],)) if output_mask[2] else a.new_empty((0,)),
    )


def _conv_out(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _as_pair(v):
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


@torch.library.register_fake("anvil::conv2d")
def _conv2d_fake(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    torch._check(input.dim() == 4, lambda: "anvil.conv2d: input: expected a 4-D (N, C, H, W) tensor")
    torch._check(weight.dim() == 4, lambda: "anvil.conv2d: weight: expected a 4-D tensor")
    (sh, sw), (ph, pw), (dh, dw) = _as_pair(stride), _as_pair(padding), _as_pair(dilation)
    shape = (
        input.shape[0],
        weight.shape[0],
        _conv_out(input.shape[2], weight.shape[2], sh, ph, dh),
        _conv_out(input.shape[3], weight.shape[3], sw, pw, dw),
    )
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=suggest_memory_format(input))


@torch.library.register_fake("anvil::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = (
        torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=suggest_memory_format(input))
        if output_mask[0]
        else input.new_empty((0,))
    )
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,))
    return grad_input, grad_weight, grad_bias


@torch.library.register_fake("anvil::attention_forward")
def _attention_forward_fake(query, key, value, attn_mask=None, is_causal=False, scale=None):
    torch._check(query.dim() == 4, lambda: "anvil.attention: query: expected a 4-D (B, H, L, E) tensor")
    b, h, l, _ = query.shape
    out = query.new_empty((b, h, l, value.shape[-1]))
    lse = query.new_empty((b, h, l), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("anvil::attention_backward")
def _attention_backward_fake(grad_out, query, key, value, out, lse, attn_mask, is_causal, scale):
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape)

# Autograd is registered in C++ (torch_ext/anvil_autograd.cpp): a Python autograd kernel
# would cost more per call than a small GEMM.
