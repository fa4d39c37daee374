"""The Triton layer-norm forward (CPU interpreter here, GPU when present) against torch's."""

import os

import pytest
import torch
from naive import rel_err

from pairformer_fb.kernel.layer_norm import _TritonLayerNorm, layer_norm

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 or a GPU",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,affine", [((3, 7, 7, 32), True), ((5, 24), False), ((2, 9, 130), True)])
def test_triton_layer_norm_matches_torch(shape, affine):
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(shape[-1], elementwise_affine=affine).to(DEVICE)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(shape[-1], generator=g))
            norm.bias.copy_(torch.randn(shape[-1], generator=g))
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(DEVICE).requires_grad_(True)
    y = _TritonLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, None)
    ref = norm(x)
    assert y.shape == ref.shape and rel_err(y, ref) < 1e-5
    cot = torch.randn(shape, generator=g).to(DEVICE)
    params = [x] + ([norm.weight, norm.bias] if affine else [])
    for a, b in zip(torch.autograd.grad(y, params, cot), torch.autograd.grad(ref, params, cot)):
        assert rel_err(a, b) < 1e-4


def test_dispatch_uses_torch_off_cuda():
    norm = torch.nn.LayerNorm(8)
    x = torch.randn(4, 8)
    assert torch.equal(layer_norm(x, norm), norm(x))


def test_output_in_the_matmul_dtype_rounds_the_fp32_result_once():
    """for_matmul under autocast: the fp32 normalisation written in bf16 (what autocast's cast
    before the next matmul would give), and the gradient of an fp32 x from a bf16 cotangent."""
    g = torch.Generator().manual_seed(1)
    norm = torch.nn.LayerNorm(48).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g))
    x = (torch.randn(4, 5, 48, generator=g) * 2).to(DEVICE).requires_grad_(True)
    y = _TritonLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, torch.bfloat16)
    ref = norm(x)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)
    assert rel_err(y.float(), ref) < 5e-3
    cot = torch.randn(4, 5, 48, generator=g).to(DEVICE)
    dx = torch.autograd.grad(y, x, cot.to(torch.bfloat16))[0]
    assert dx.dtype == torch.float32
    assert rel_err(dx, torch.autograd.grad(ref, x, cot.to(torch.bfloat16).float())[0]) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_input_with_fp32_parameters(dtype):
    """A bf16 / fp16 x with the host's fp32 parameters (a pair rep inside an autocast trunk):
    normalised and scaled in fp32, written in x's dtype; gradients against torch's fp32 layer
    norm of the same x (x's gradient in x's dtype, the parameters' in fp32)."""
    g = torch.Generator().manual_seed(2)
    norm = torch.nn.LayerNorm(40).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(40, generator=g))
        norm.bias.copy_(torch.randn(40, generator=g))
    x = (torch.randn(3, 6, 40, generator=g) * 2 + 1).to(DEVICE, dtype).requires_grad_(True)
    y = _TritonLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, dtype)
    x32 = x.detach().float().requires_grad_(True)
    ref = norm(x32)
    assert y.dtype == dtype and rel_err(y.float(), ref) < 1e-2
    if DEVICE == "cuda" or dtype == torch.float16:  # (Triton's CPU interpreter truncates to bf16)
        assert torch.equal(y, ref.to(dtype))  # one rounding of the fp32 result
    cot = torch.randn(3, 6, 40, generator=g).to(DEVICE)
    dx, dw, db = torch.autograd.grad(y, [x, norm.weight, norm.bias], cot.to(dtype))
    rx, rw, rb = torch.autograd.grad(ref, [x32, norm.weight, norm.bias], cot.to(dtype).float())
    assert dx.dtype == dtype and dw.dtype == db.dtype == torch.float32
    assert rel_err(dx.float(), rx) < 1e-2 and rel_err(dw, rw) < 1e-4 and rel_err(db, rb) < 1e-4


@pytest.mark.gpu  # the dispatch to Triton is CUDA-only
def test_dispatch_output_dtypes_follow_torch():
    """layer_norm()'s output dtype is torch's: x's without autocast, fp32 under autocast (the
    autocast dtype with for_matmul), also for a bf16 x with fp32 parameters."""
    norm = torch.nn.LayerNorm(64).cuda()
    for x in (torch.randn(8, 64, device="cuda"), torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)):
        assert layer_norm(x, norm).dtype == x.dtype
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ref = norm(x)
            assert layer_norm(x, norm).dtype == ref.dtype == torch.float32
            y = layer_norm(x, norm, for_matmul=True)
            assert y.dtype == torch.bfloat16 and torch.equal(y, ref.to(torch.bfloat16))
