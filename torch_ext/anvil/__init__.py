"""anvil: hand-tuned GEMM, conv2d and attention kernels as torch.ops.anvil.*.

Importing this package loads the compiled extension (which defines the ops and their
CPU implementations) and registers fake kernels and autograd formulas for them.
"""
from __future__ import annotations

import contextlib
import glob
import os

import torch

__all__ = [
    "gemm",
    "conv2d",
    "attention",
    "explain",
    "kernels",
    "backends",
    "force",
]


def _load_extension() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ["ANVIL_TORCH_LIBRARY"]] if os.environ.get("ANVIL_TORCH_LIBRARY") else []
    candidates += sorted(glob.glob(os.path.join(here, "_C*.so")))
    if not candidates:
        raise ImportError(
            f"anvil: the compiled extension _C.so was not found next to {__file__}; "
            "install the package with `pip install --no-build-isolation .`"
        )
    torch.ops.load_library(candidates[0])


_load_extension()

from . import _registrations  # noqa: E402,F401  (fake kernels and autograd)
from ._api import attention, conv2d, gemm  # noqa: E402


def kernels() -> list[str]:
    """Every registered kernel, per op in selection order (highest priority first)."""
    return list(torch.ops.anvil._kernels())


def backends() -> list[str]:
    """Backends compiled into this build and whether each can run here."""
    return list(torch.ops.anvil._backends())


def explain(op: str, *args, **kwargs) -> str:
    """Every candidate kernel for this call and why it was taken or refused.

    ``op`` is "gemm", "conv2d" or "attention"; the arguments are those of the op.
    """
    explainers = {
        "gemm": torch.ops.anvil._explain_gemm,
        "conv2d": torch.ops.anvil._explain_conv2d,
        "attention": torch.ops.anvil._explain_attention,
    }
    if op not in explainers:
        raise ValueError(f"anvil.explain: op must be one of {sorted(explainers)}, got {op!r}")
    return explainers[op](*args, **kwargs)


@contextlib.contextmanager
def force(backend: str | None = None, kernel: str | None = None):
    """Force a backend and/or kernels (comma-separated names) inside the block.

    Process-wide, like ANVIL_BACKEND / ANVIL_KERNEL, which it takes precedence over.
    A forced kernel that cannot run a call makes that call fail; it never falls back.
    """
    previous = list(torch.ops.anvil._get_overrides())
    torch.ops.anvil._set_overrides(backend or "", kernel or "")
    try:
        yield
    finally:
        torch.ops.anvil._set_overrides(previous[0], previous[1])
