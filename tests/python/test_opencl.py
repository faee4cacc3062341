"""torch.ops.anvil.* on the opencl backend: torch has no OpenCL device, so CPU tensors run
there when the user forces the backend (anvil.force(backend="opencl")); the backend wraps
their memory (zero-copy on host-memory devices such as PoCL). Skipped when the extension
was built without the opencl backend or no OpenCL device is present.
"""
import pytest
import torch

import anvil


def _opencl_available():
    return any(b.startswith("opencl: available") for b in anvil.backends())


pytestmark = pytest.mark.skipif(not _opencl_available(), reason="no opencl backend/device in this build")

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def close(actual, expected, dtype):
    scale = expected.abs().max().item() + 1.0
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max error {err} (scale {scale})"


def test_not_taken_by_default_on_cpu_tensors():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    assert "opencl" not in anvil.explain("gemm", a, b).split("taken")[1].split("\n")[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forced_gemm_and_backward_on_cpu_tensors(dtype):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 37, 29, generator=g).to(dtype).transpose(-1, -2).contiguous().transpose(-1, -2)
    b = torch.randn(29, 45, generator=g).to(dtype)
    bias = torch.randn(45, generator=g).to(dtype)
    a.requires_grad_(True)
    b.requires_grad_(True)
    with anvil.force(backend="opencl"):
        assert "gemm." + str(dtype).replace("torch.", "").replace("float32", "f32").replace("float16", "f16").replace(
            "bfloat16", "bf16") + ".opencl" in anvil.explain("gemm", a, b, bias)
        out = anvil.gemm(a, b, bias)
        out.sum().backward()
    expected = a.double() @ b.double() + bias.double()
    close(out.detach(), expected.detach(), dtype)
    ones = torch.ones_like(expected)
    close(a.grad, ones @ b.double().t(), dtype)
    close(b.grad, (a.double().transpose(-1, -2) @ ones).sum(0), dtype)
