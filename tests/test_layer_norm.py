"""The Triton layer-norm forward (CPU interpreter here, GPU when present) against torch's."""

import os

import pytest
import torch
from naive import rel_err

from pairformer_fb.kernel.layer_norm import _TritonLayerNorm, layer_norm

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")
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
    y = _TritonLayerNorm.apply(x, norm.weight, norm.bias, norm.eps)
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
