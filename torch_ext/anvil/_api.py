"""Python entry points with torch semantics (matmul, F.conv2d, F.scaled_dot_product_attention)."""
from __future__ import annotations

import torch


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` with torch.matmul broadcasting; a is (..., M, K), b (..., K, N)."""
    return torch.ops.anvil.gemm(a, b, bias)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """torch.nn.functional.conv2d semantics; channels_last inputs give channels_last outputs."""
    return torch.ops.anvil.conv2d(
        input, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), groups
    )


def attention(query, key, value, attn_mask=None, is_causal=False, scale=None) -> torch.Tensor:
    """scaled_dot_product_attention without dropout; GQA/MQA when key/value have fewer heads."""
    return torch.ops.anvil.attention(query, key, value, attn_mask, is_causal, scale)


def _pair(value, name: str) -> list[int]:
    if isinstance(value, str):
        raise ValueError(f"anvil.conv2d: {name}: string values such as {value!r} are not supported; pass ints")
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) not in (1, 2):
        raise ValueError(f"anvil.conv2d: {name}: expected an int or a pair, got {value!r}")
    return values * 2 if len(values) == 1 else values
