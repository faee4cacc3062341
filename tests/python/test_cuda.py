"""torch.ops.anvil.* on CUDA tensors: the cuda backend against f64 references, the
kernels the registry picks, gradients, opcheck, streams and CUDA graphs, bad input.

On a ROCm build of torch (torch.version.hip) the same tests run the hip backend: torch's
"cuda" tensors are HIP device memory there. Skipped where torch sees no GPU or anvil was
built without the backend.
"""
import pytest
import torch
import torch.nn.functional as F

import anvil
from test_ops import ATTN_CASES, CONV_CASES, GEMM_CASES, TOL, close, make_attention_inputs, repro

GPU_BACKEND = "hip" if torch.version.hip else "cuda"
CUDA_READY = torch.cuda.is_available() and any(b.startswith(f"{GPU_BACKEND}: available") for b in anvil.backends())
pytestmark = pytest.mark.skipif(not CUDA_READY, reason=f"needs a GPU and anvil's {GPU_BACKEND} backend")
MATRIX_CORE_GEMMS = ("sm90", "sm80", "mfma")  # the tensor-core / matrix-core GEMM variants

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = "cuda"

# (a shape, b shape, bias, a transposed, b transposed): the tensor-core kernels' domain
# (16-byte rows) and its edges (ragged M/N/K, unaligned leading dims go to SIMT).
TC_GEMM_CASES = [
    ((256, 512), (512, 384), True, False, False),
    ((1000, 776), (776, 328), False, False, False),
    ((129, 264), (264, 200), True, True, False),
    ((3, 200, 136), (136, 72), False, False, True),
    ((77, 100), (100, 33), True, False, False),
    ((4, 64, 64), (4, 64, 64), False, True, True),
]


def cuda_kernel_of(op, *args, **kwargs):
    text = anvil.explain(op, *args, **kwargs)
    taken = [l for l in text.splitlines() if l.strip().startswith("taken")]
    assert taken, text
    return taken[0].split()[1]


# ------------------------------------------------------------------ gemm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(GEMM_CASES)))
def test_gemm_small_cases(dtype, case):
    a_shape, b_shape, with_bias, transposed = GEMM_CASES[case]
    g = torch.Generator().manual_seed(case)
    a = torch.randn(a_shape, generator=g).to(dtype)
    if transposed:
        a = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    b = torch.randn(b_shape, generator=g).to(dtype)
    bias = torch.randn(b_shape[-1], generator=g).to(dtype) if with_bias else None
    out = anvil.gemm(a.to(DEV), b.to(DEV), bias.to(DEV) if with_bias else None)
    expected = a.double() @ b.double() + (bias.double() if with_bias else 0)
    assert out.device.type == "cuda" and out.dtype == dtype
    close(out.cpu(), expected, dtype, repro("gemm", case, a=a, b=b, bias=bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(TC_GEMM_CASES)))
def test_gemm_tensor_core_shapes(dtype, case):
    a_shape, b_shape, with_bias, ta, tb = TC_GEMM_CASES[case]
    g = torch.Generator().manual_seed(100 + case)
    a = torch.randn(a_shape, generator=g).to(dtype)
    b = torch.randn(b_shape, generator=g).to(dtype)
    if ta:
        a = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    if tb:
        b = b.transpose(-1, -2).contiguous().transpose(-1, -2)
    bias = torch.randn(b_shape[-1], generator=g).to(dtype) if with_bias else None
    ad, bd = a.to(DEV), b.to(DEV)
    if ta:
        ad = a.transpose(-1, -2).contiguous().to(DEV).transpose(-1, -2)
    if tb:
        bd = b.transpose(-1, -2).contiguous().to(DEV).transpose(-1, -2)
    out = anvil.gemm(ad, bd, bias.to(DEV) if with_bias else None)
    expected = a.double() @ b.double() + (bias.double() if with_bias else 0)
    kernel = cuda_kernel_of("gemm", ad, bd)
    close(out.cpu(), expected, dtype, repro("gemm", case, a=a, b=b, bias=bias, kernel=kernel))
    rows_16_bytes = all(max(t.stride(-1), t.stride(-2)) % 8 == 0 for t in (ad, bd))
    if dtype != torch.float32 and rows_16_bytes:
        assert any(v in kernel for v in MATRIX_CORE_GEMMS), f"16-byte-aligned {dtype} gemm ran on {kernel}"


def test_gemm_non_contiguous_equals_contiguous():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 160, generator=g).to(DEV)[:, ::2]
    b = torch.randn(96, 80, generator=g).to(DEV).t()[:, :56]
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(anvil.gemm(a, b), anvil.gemm(a.contiguous(), b.contiguous()))


def test_gemm_runs_on_the_current_stream_and_under_graph_capture():
    a = torch.randn(256, 128, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(128, 192, device=DEV, dtype=torch.bfloat16)
    eager = anvil.gemm(a, b)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = anvil.gemm(a, b)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(on_side, eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):  # capture must not start on the legacy default stream
        anvil.gemm(a, b)  # warm-up (module load, function attributes) outside capture
        with torch.cuda.graph(graph, stream=side):
            captured = anvil.gemm(a, b)
    a.copy_(torch.randn_like(a))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, anvil.gemm(a, b))


# ------------------------------------------------------------------ conv2d
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d_matches_torch(dtype, channels_last, case):
    n, c, h, w, k, r, s, stride, pad, dil, groups, with_bias = CONV_CASES[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = torch.randn(k, c // groups, r, s, generator=g).to(dtype)
    bias = torch.randn(k, generator=g).to(dtype) if with_bias else None
    xd = x.to(DEV)
    if channels_last:
        xd = xd.to(memory_format=torch.channels_last)
    out = anvil.conv2d(xd, wt.to(DEV), bias.to(DEV) if with_bias else None, stride, pad, dil, groups)
    expected = F.conv2d(x.double(), wt.double(), bias.double() if with_bias else None, stride, pad, dil, groups)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    close(out.cpu(), expected, dtype, repro("conv2d", case, input=x, weight=wt, stride=stride, padding=pad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv2d_resnet_layer_channels_last(dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 64, 28, 28, generator=g).to(dtype)
    wt = torch.randn(128, 64, 3, 3, generator=g).to(dtype)
    xd = x.to(DEV).to(memory_format=torch.channels_last)
    out = anvil.conv2d(xd, wt.to(DEV), None, 2, 1)
    expected = F.conv2d(x.double(), wt.double(), None, 2, 1)
    close(out.cpu(), expected, dtype, repro("conv2d", 7, input=x, weight=wt, kernel=cuda_kernel_of(
        "conv2d", xd, wt.to(DEV), stride=2, padding=1)))


# ------------------------------------------------------------------ attention
FLASH_CASES = [  # (B, H, Hkv, L, S, E, causal)
    (2, 4, 2, 300, 257, 64, False),
    (1, 2, 2, 257, 300, 128, True),
    (1, 8, 1, 128, 128, 128, False),
    (2, 2, 2, 1, 129, 64, True),
    (1, 4, 4, 1000, 1000, 64, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(ATTN_CASES)))
def test_attention_matches_sdpa(dtype, case):
    q, k, v, mask, causal = make_attention_inputs(case, dtype)
    m64 = mask if mask is None or mask.dtype == torch.bool else mask.double()
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=m64, is_causal=causal,
                                              enable_gqa=True)
    out = anvil.attention(q.to(DEV), k.to(DEV), v.to(DEV), attn_mask=None if mask is None else mask.to(DEV),
                          is_causal=causal)
    close(out.cpu(), expected, dtype, repro("attention", case, query=q, key=k, value=v, mask=mask, causal=causal))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(FLASH_CASES)))
def test_attention_flash_shapes(dtype, case):
    b, h, hkv, l, s, e, causal = FLASH_CASES[case]
    g = torch.Generator().manual_seed(200 + case)
    q, k, v = (torch.randn(*shape, generator=g).to(dtype) for shape in ((b, h, l, e), (b, hkv, s, e), (b, hkv, s, e)))
    qd, kd, vd = q.to(DEV), k.to(DEV), v.to(DEV)
    out = anvil.attention(qd, kd, vd, is_causal=causal)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, enable_gqa=True)
    kernel = cuda_kernel_of("attention", qd, kd, vd, is_causal=causal)
    assert "flash" in kernel, kernel
    close(out.cpu(), expected, dtype, repro("attention", case, query=q, key=k, value=v, causal=causal, kernel=kernel))


# ------------------------------------------------------------------ gradients
def test_gradients_match_f64():
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(3, 40, 24, generator=g).to(dtype)
        b = torch.randn(24, 16, generator=g).to(dtype)
        bias = torch.randn(16, generator=g).to(dtype)
        grad = torch.randn(3, 40, 16, generator=g).to(dtype)
        leaves = [t.to(DEV).requires_grad_() for t in (a, b, bias)]
        anvil.gemm(*leaves).backward(grad.to(DEV))
        ref = [t.double().requires_grad_() for t in (a, b, bias)]
        (ref[0] @ ref[1] + ref[2]).backward(grad.double())
        for got, want, name in zip(leaves, ref, ("a", "b", "bias")):
            close(got.grad.cpu(), want.grad, dtype, f"gemm grad_{name} {dtype}")

        x = torch.randn(2, 6, 9, 9, generator=g).to(dtype)
        w = torch.randn(4, 3, 3, 3, generator=g).to(dtype)
        gy = torch.randn(2, 4, 5, 5, generator=g).to(dtype)
        xd, wd = x.to(DEV).requires_grad_(), w.to(DEV).requires_grad_()
        anvil.conv2d(xd, wd, None, 2, 1, 1, 2).backward(gy.to(DEV))
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        F.conv2d(xr, wr, None, 2, 1, 1, 2).backward(gy.double())
        close(xd.grad.cpu(), xr.grad, dtype, f"conv2d grad_input {dtype}")
        close(wd.grad.cpu(), wr.grad, dtype, f"conv2d grad_weight {dtype}")

        q = torch.randn(1, 4, 33, 64, generator=g).to(dtype)
        k = torch.randn(1, 2, 40, 64, generator=g).to(dtype)
        v = torch.randn(1, 2, 40, 64, generator=g).to(dtype)
        go = torch.randn(1, 4, 33, 64, generator=g).to(dtype)
        qd, kd, vd = (t.to(DEV).requires_grad_() for t in (q, k, v))
        anvil.attention(qd, kd, vd, is_causal=True).backward(go.to(DEV))
        qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
        F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=True).backward(go.double())
        for got, want, name in ((qd, qr, "q"), (kd, kr, "k"), (vd, vr, "v")):
            close(got.grad.cpu(), want.grad, dtype, f"attention grad_{name} {dtype}")


# ------------------------------------------------------------------ opcheck
def test_opcheck_on_cuda():
    g = torch.Generator().manual_seed(0)
    r = lambda *s, grad=False: torch.randn(*s, generator=g).to(DEV).requires_grad_(grad)  # noqa: E731
    samples = [
        (torch.ops.anvil.gemm.default, (r(4, 8, grad=True), r(8, 16, grad=True), r(16, grad=True))),
        (torch.ops.anvil.gemm.default, (r(2, 32, 64).bfloat16(), r(64, 32).bfloat16(), None)),
        (torch.ops.anvil.conv2d.default, (r(1, 4, 7, 7, grad=True), r(6, 4, 3, 3, grad=True), None, [1, 1], [1, 1],
                                          [1, 1], 1)),
        (torch.ops.anvil.attention.default, (r(1, 2, 9, 64, grad=True), r(1, 2, 11, 64, grad=True),
                                             r(1, 2, 11, 64, grad=True), None, True, None)),
        (torch.ops.anvil.attention.default, (r(1, 2, 130, 64).half(), r(1, 1, 70, 64).half(), r(1, 1, 70, 64).half(),
                                             None, False, None)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------ bad input
def test_bad_input_on_cuda():
    with pytest.raises((ValueError, RuntimeError), match="b is on"):
        anvil.gemm(torch.randn(4, 3, device=DEV), torch.randn(3, 2))
    with pytest.raises(ValueError, match="b: dimension -2 is 4"):
        anvil.gemm(torch.randn(4, 3, device=DEV), torch.randn(4, 2, device=DEV))
    with pytest.raises(ValueError, match="kv heads 2 must divide the query heads 3"):
        anvil.attention(*(torch.randn(1, h, 4, 8, device=DEV) for h in (3, 2, 2)))
    empty = anvil.gemm(torch.randn(0, 5, device=DEV), torch.randn(5, 3, device=DEV))
    assert empty.shape == (0, 3) and empty.device.type == "cuda"
    zero_k = anvil.gemm(torch.randn(4, 0, device=DEV), torch.randn(0, 3, device=DEV), torch.ones(3, device=DEV))
    assert torch.equal(zero_k.cpu(), torch.ones(4, 3))
