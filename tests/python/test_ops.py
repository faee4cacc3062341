"""torch.ops.anvil.*: correctness vs torch, opcheck, gradcheck, torch.compile, bad input.

Failure messages carry a repro line (op, dtype, shapes, strides, seed).
"""
import pytest
import torch
import torch.nn.functional as F

import anvil

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-10}


def repro(op, seed, **tensors):
    parts = [f"op={op}", f"seed={seed}"]
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            parts.append(f"{name}={str(t.dtype).replace('torch.', '')}{list(t.shape)}{{{','.join(map(str, t.stride()))}}}")
        else:
            parts.append(f"{name}={t}")
    return "repro: " + " ".join(parts)


def close(actual, expected, dtype, msg):
    # Compare against an f64 computation: error relative to the result's magnitude.
    if expected.numel() == 0:
        assert actual.numel() == 0, msg
        return
    scale = expected.abs().max().item() + 1.0
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max error {err} (scale {scale})\n{msg}"


# ------------------------------------------------------------------ gemm
GEMM_CASES = [  # (a shape, b shape, bias, make a non-contiguous)
    ((64, 32), (32, 16), False, False),
    ((7, 17), (17, 1), True, False),
    ((3, 5, 7), (7, 4), True, True),
    ((2, 3, 5, 7), (3, 7, 4), False, False),
    ((1, 5, 7), (4, 7, 6), True, True),
    ((0, 5), (5, 3), True, False),
    ((4, 0), (0, 3), True, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(GEMM_CASES)))
def test_gemm_matches_matmul(dtype, case):
    a_shape, b_shape, with_bias, transposed = GEMM_CASES[case]
    g = torch.Generator().manual_seed(case)
    a = torch.randn(a_shape, generator=g).to(dtype)
    if transposed:  # same values, transposed storage
        a = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    b = torch.randn(b_shape, generator=g).to(dtype)[..., :, :]
    bias = torch.randn(b_shape[-1], generator=g).to(dtype) if with_bias else None
    out = anvil.gemm(a, b, bias)
    expected = a.double() @ b.double() + (bias.double() if with_bias else 0)
    assert out.dtype == dtype and out.shape == expected.shape
    close(out, expected, dtype, repro("gemm", case, a=a, b=b, bias=bias))


def test_gemm_non_contiguous_equals_contiguous():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 20, generator=g)[:, ::2]  # stride 2 columns
    b = torch.randn(12, 10, generator=g).t()[:, :7]
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(anvil.gemm(a, b), anvil.gemm(a.contiguous(), b.contiguous()))


# ------------------------------------------------------------------ conv2d
CONV_CASES = [  # (N, C, H, W, K, R, S, stride, padding, dilation, groups, bias)
    (2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, True),
    (1, 4, 11, 7, 6, 3, 3, 2, 1, 1, 2, False),
    (1, 5, 9, 9, 5, 3, 3, 1, 2, 2, 5, True),
    (1, 3, 15, 15, 8, 7, 7, 2, 3, 1, 1, True),
    (2, 17, 5, 5, 3, 1, 1, 1, 0, 1, 1, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d_matches_torch(dtype, channels_last, case):
    n, c, h, w, k, r, s, stride, pad, dil, groups, with_bias = CONV_CASES[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = torch.randn(k, c // groups, r, s, generator=g).to(dtype)
    bias = torch.randn(k, generator=g).to(dtype) if with_bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = anvil.conv2d(x, wt, bias, stride, pad, dil, groups)
    expected = F.conv2d(x.double(), wt.double(), bias.double() if with_bias else None, stride, pad, dil, groups)
    assert out.shape == expected.shape
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    close(out, expected, dtype, repro("conv2d", case, input=x, weight=wt, stride=stride, padding=pad))


# ------------------------------------------------------------------ attention
ATTN_CASES = [  # (B, H, Hkv, L, S, E, Ev, causal, mask kind)
    (2, 4, 4, 9, 9, 16, 16, False, None),
    (1, 4, 2, 9, 13, 16, 8, True, None),
    (1, 4, 1, 13, 9, 32, 32, True, None),
    (2, 2, 2, 7, 11, 8, 8, False, "bool"),
    (1, 3, 3, 5, 6, 8, 8, False, "float"),
    (1, 2, 2, 1, 17, 64, 64, False, None),
]


def make_attention_inputs(case, dtype):
    b, h, hkv, l, s, e, ev, causal, mask_kind = ATTN_CASES[case]
    g = torch.Generator().manual_seed(case)
    q = torch.randn(b, h, l, e, generator=g).to(dtype)
    k = torch.randn(b, hkv, s, e, generator=g).to(dtype)
    v = torch.randn(b, hkv, s, ev, generator=g).to(dtype)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(l, s, generator=g) < 0.8
        mask[:, 0] = True  # no fully masked rows: torch returns NaN there, anvil 0
    elif mask_kind == "float":
        mask = torch.randn(b, 1, l, s, generator=g).to(dtype)
    return q, k, v, mask, causal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(ATTN_CASES)))
def test_attention_matches_sdpa(dtype, case):
    q, k, v, mask, causal = make_attention_inputs(case, dtype)
    out = anvil.attention(q, k, v, attn_mask=mask, is_causal=causal)
    m64 = mask if mask is None or mask.dtype == torch.bool else mask.double()
    expected = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=m64, is_causal=causal, enable_gqa=True
    )
    close(out, expected, dtype, repro("attention", case, query=q, key=k, value=v, mask=mask, causal=causal))


def test_attention_fully_masked_rows_give_zero():
    q, k, v = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    out = anvil.attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[0, 0, 1], torch.zeros(8))
    assert torch.isfinite(out).all()


def test_attention_scale_and_transposed_layout():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 7, 3, 16, generator=g).transpose(1, 2)  # (B, H, L, E) view of (B, L, H, E)
    k = torch.randn(2, 9, 3, 16, generator=g).transpose(1, 2)
    v = torch.randn(2, 9, 3, 16, generator=g).transpose(1, 2)
    out = anvil.attention(q, k, v, scale=0.3)
    assert torch.equal(out, anvil.attention(q.contiguous(), k.contiguous(), v.contiguous(), scale=0.3))
    close(out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3), torch.float32, "scale")


# ------------------------------------------------------------------ opcheck
def gemm_samples():
    g = torch.Generator().manual_seed(0)
    r = lambda *s, grad=False: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    return [
        ((r(5, 7), r(7, 3)), {}),
        ((r(5, 7, grad=True), r(7, 3, grad=True)), {"bias": r(3, grad=True)}),
        ((r(2, 5, 7, grad=True), r(7, 3)), {}),
        ((r(7, 5).t(), r(3, 7, grad=True).t()), {"bias": None}),  # non-contiguous
        ((r(2, 1, 4, 6, grad=True), r(3, 6, 2, grad=True)), {"bias": r(2, grad=True)}),
    ]


def conv_samples():
    g = torch.Generator().manual_seed(1)
    r = lambda *s, grad=False: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    return [
        ((r(1, 3, 6, 6), r(4, 3, 3, 3)), {}),
        ((r(2, 4, 7, 7, grad=True), r(4, 2, 3, 3, grad=True), r(4, grad=True), [2, 2], [1, 1], [1, 1], 2), {}),
        ((r(1, 3, 8, 8).to(memory_format=torch.channels_last).requires_grad_(), r(2, 3, 3, 3, grad=True)),
         {"padding": [2, 2], "dilation": [2, 2]}),
        ((r(1, 3, 10, 8)[:, :, ::2].requires_grad_(), r(3, 1, 1, 3, grad=True), None, [1, 1], [0, 1], [1, 1], 3), {}),
    ]


def attention_samples():
    g = torch.Generator().manual_seed(2)
    r = lambda *s, grad=False: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    return [
        ((r(1, 2, 5, 8), r(1, 2, 6, 8), r(1, 2, 6, 8)), {}),
        ((r(1, 4, 5, 8, grad=True), r(1, 2, 7, 8, grad=True), r(1, 2, 7, 4, grad=True)), {"is_causal": True}),
        ((r(2, 2, 3, 8, grad=True), r(2, 2, 4, 8, grad=True), r(2, 2, 4, 8, grad=True)),
         {"attn_mask": torch.rand(3, 4, generator=g) < 0.7, "scale": 0.5}),
        ((r(1, 5, 2, 8).transpose(1, 2).requires_grad_(), r(1, 5, 2, 8, grad=True).transpose(1, 2),
          r(1, 5, 2, 8, grad=True).transpose(1, 2)), {"attn_mask": r(5, 5)}),
    ]


@pytest.mark.parametrize("sample", range(5))
def test_opcheck_gemm(sample):
    args, kwargs = gemm_samples()[sample]
    torch.library.opcheck(torch.ops.anvil.gemm.default, args, kwargs)


@pytest.mark.parametrize("sample", range(4))
def test_opcheck_conv2d(sample):
    args, kwargs = conv_samples()[sample]
    torch.library.opcheck(torch.ops.anvil.conv2d.default, args, kwargs)


@pytest.mark.parametrize("sample", range(4))
def test_opcheck_attention(sample):
    args, kwargs = attention_samples()[sample]
    torch.library.opcheck(torch.ops.anvil.attention_forward.default, args, kwargs)
    torch.library.opcheck(torch.ops.anvil.attention.default, args, kwargs)


def test_opcheck_backward_ops():
    a, b, grad = torch.randn(4, 5), torch.randn(5, 3), torch.randn(4, 3)
    torch.library.opcheck(torch.ops.anvil.gemm_backward.default, (grad, a, b, [True, True, True]))
    torch.library.opcheck(torch.ops.anvil.gemm_backward.default, (grad, a, b, [True, False, False]))
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    gy = torch.randn(1, 3, 5, 5)
    torch.library.opcheck(torch.ops.anvil.conv2d_backward.default, (gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True]))
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    out, lse = torch.ops.anvil.attention_forward(q, k, v)
    torch.library.opcheck(torch.ops.anvil.attention_backward.default, (torch.randn_like(out), q, k, v, out, lse, None, False, None))


# ------------------------------------------------------------------ gradcheck (f64)
def test_gradcheck_gemm():
    a = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: anvil.gemm(a, b, c), (a, b, bias))
    b3 = torch.randn(3, 1, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: anvil.gemm(a, b), (a, b3))


def test_gradcheck_conv2d():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: anvil.conv2d(x, w, b, 2, 1, 1, 2), (x, w, bias))
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: anvil.conv2d(x, w, None, 1, 2, 2, 2), (xc, w))


@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "bool"), (False, "float")])
def test_gradcheck_attention(causal, mask):
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    m = None
    if mask == "bool":
        m = torch.rand(5, 6, generator=g) < 0.7
        m[:, 0] = True
    elif mask == "float":
        m = torch.randn(5, 6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda q, k, v: anvil.attention(q, k, v, attn_mask=m, is_causal=causal), (q, k, v))


def test_graph_recorded_only_when_a_gradient_is_wanted():
    # The autograd kernels call the ops below autograd when no input wants a gradient (or
    # grad mode is off), and record a node as soon as any one does, the bias alone included.
    a, b, bias = torch.randn(3, 4), torch.randn(4, 5), torch.randn(5)
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    calls = {
        "gemm": (lambda a, b, bias: anvil.gemm(a, b, bias), [a, b, bias]),
        "conv2d": (lambda x, w, bias: anvil.conv2d(x, w, bias[:3], 1, 1), [x, w, bias]),
        "attention": (lambda q, k, v: anvil.attention(q, k, v), [q, k, v]),
    }
    for name, (call, inputs) in calls.items():
        out = call(*inputs)
        assert out.grad_fn is None and not out.requires_grad, name
        for i in range(len(inputs)):
            wanted = [t.clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
            with torch.no_grad():
                assert call(*wanted).grad_fn is None, name
            out = call(*wanted)
            assert out.requires_grad and out.grad_fn is not None, (name, i)
            (grad,) = torch.autograd.grad(out.sum(), wanted[i])
            assert grad.shape == wanted[i].shape and torch.isfinite(grad).all(), (name, i)


# ------------------------------------------------------------------ torch.compile
class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_w = torch.nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.proj = torch.nn.Parameter(torch.randn(8, 24) * 0.2)
        self.bias = torch.nn.Parameter(torch.zeros(24))

    def forward(self, x):
        y = anvil.conv2d(x, self.conv_w, None, 1, 1)  # (B, 8, H, W)
        tokens = y.flatten(2).transpose(1, 2)  # (B, HW, 8)
        qkv = anvil.gemm(tokens, self.proj, self.bias)  # (B, HW, 24)
        q, k, v = qkv.unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # each (B, 2, HW, 4)
        return anvil.attention(q, k, v, is_causal=True).sum(dim=(1, 3))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = TinyModel()
    x = torch.randn(2, 3, 5, 5)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    # and the backward through the compiled graph
    x1 = x.clone().requires_grad_()
    torch.compile(model, fullgraph=True, backend="aot_eager")(x1).sum().backward()
    x2 = x.clone().requires_grad_()
    model(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_torch_compile_inductor_dynamic():
    torch.manual_seed(1)
    model = TinyModel()
    fn = torch.compile(model, fullgraph=True, dynamic=True)
    for hw in (4, 6):
        x = torch.randn(1, 3, hw, hw)
        torch.testing.assert_close(fn(x), model(x))


# ------------------------------------------------------------------ registry from Python
def test_kernels_backends_and_explain():
    names = anvil.kernels()
    assert "gemm.f32.reference" in names and "attention_backward.bf16.reference" in names
    assert any(b.startswith("reference: available") for b in anvil.backends())
    text = anvil.explain("gemm", torch.randn(4, 3), torch.randn(3, 2))
    assert "taken   gemm.f32." in text
    text = anvil.explain("conv2d", torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), stride=2)
    assert "conv2d f32" in text and "stride=(2,2)" in text
    text = anvil.explain("attention", torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8))
    assert "attention f32" in text
    with pytest.raises(ValueError, match="op must be one of"):
        anvil.explain("matmul")


def test_force_context_manager():
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    with anvil.force(kernel="gemm.f32.reference"):
        assert "forced kernel gemm.f32.reference" in anvil.explain("gemm", a, b)
        anvil.gemm(a, b)
    assert "overrides: none" in anvil.explain("gemm", a, b)
    with anvil.force(backend="reference"):
        assert "forced backend reference" in anvil.explain("gemm", a, b)
    with pytest.raises(RuntimeError, match="unknown backend 'nope'; valid backends in this build: reference"):
        with anvil.force(backend="nope"):
            pass
    with pytest.raises(RuntimeError, match="unknown kernel 'gemm.f32.nope'"):
        with anvil.force(kernel="gemm.f32.nope"):
            pass


# ------------------------------------------------------------------ bad input
BAD_INPUTS = [
    # (callable, exception, message naming the argument)
    (lambda: anvil.gemm(torch.randn(3), torch.randn(3, 2)), ValueError, "a: expected"),
    (lambda: anvil.gemm(torch.randn(4, 3), torch.randn(4, 2)), ValueError, "b: dimension -2 is 4"),
    (lambda: anvil.gemm(torch.randn(4, 3), torch.randn(3, 2).half()), ValueError, "b: dtype"),
    (lambda: anvil.gemm(torch.randn(4, 3), torch.randn(3, 2), torch.randn(3)), ValueError, "bias: dimension 0 is 3"),
    (lambda: anvil.gemm(torch.randn(2, 4, 3), torch.randn(3, 3, 2)), ValueError, "b: batch dims"),
    (lambda: anvil.gemm(torch.ones(4, 3, dtype=torch.int32), torch.ones(3, 2, dtype=torch.int32)), ValueError,
     "unsupported dtype"),
    (lambda: anvil.conv2d(torch.randn(3, 5, 5), torch.randn(2, 3, 3, 3)), ValueError, "input: expected a 4-D"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 4, 3, 3)), ValueError, "weight: dimension 1 is 4"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), stride=0), ValueError, "stride: must be positive"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), padding=-1), ValueError,
     "padding: must be non-negative"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), dilation=0), ValueError,
     "dilation: must be positive"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), groups=0), ValueError,
     "groups: must be positive"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 1, 3, 3), groups=2), ValueError, "groups: input channels 3"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 2, 2), torch.randn(2, 3, 3, 3)), ValueError, "input: spatial size 2x2"),
    (lambda: anvil.conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), stride="same"), ValueError, "stride"),
    (lambda: anvil.attention(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)), ValueError,
     "query: expected a 4-D"),
    (lambda: anvil.attention(torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)), ValueError,
     "kv heads 2 must divide the query heads 3"),
    (lambda: anvil.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 8)), ValueError,
     "k: dimension 3 is 6"),
    (lambda: anvil.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8).double()),
     ValueError, "v: dtype f64 does not match q"),
    (lambda: anvil.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8),
                             attn_mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, "mask: dimension 0 is 3"),
    (lambda: anvil.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8),
                             attn_mask=torch.ones(4, 4, dtype=torch.bool), is_causal=True), ValueError,
     "cannot be combined with causal"),
    (lambda: anvil.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8),
                             scale=float("inf")), ValueError, "scale: must be finite"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_raises_naming_the_argument(case):
    fn, exc, message = BAD_INPUTS[case]
    with pytest.raises(exc, match=message.replace("(", r"\(")):
        fn()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a second device type (CUDA)")
def test_mixed_devices_raise():
    with pytest.raises((ValueError, RuntimeError), match="b is on"):
        anvil.gemm(torch.randn(4, 3), torch.randn(3, 2, device="cuda"))


def test_forced_kernel_that_refuses_is_an_error():
    a, b = torch.randn(4, 3).half(), torch.randn(3, 2).half()
    with anvil.force(kernel="gemm.f16.reference"):
        assert torch.allclose(anvil.gemm(a, b).float(), (a.float() @ b.float()), atol=1e-2)
    # The dtype's forced kernel is used; another dtype's forced kernel does not apply.
    with anvil.force(kernel="gemm.f32.reference"):
        anvil.gemm(a, b)
