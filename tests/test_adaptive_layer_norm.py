"""The fused adaptive layer norm (Triton; CPU interpreter here, GPU when present) against the
composition of torch ops it replaces: sigmoid(gate) * LN(a) + shift."""

import os

import pytest
import torch
from naive import rel_err

from pairformer_fb.kernel.adaptive_layer_norm import adaptive_layer_norm, launch_adaptive_layer_norm

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 or a GPU",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def composed(a, gate_shift, norm):
    gate, shift = gate_shift.chunk(2, dim=-1)
    return torch.sigmoid(gate) * norm(a) + shift


@pytest.mark.parametrize(
    "a_shape,gs_lead,affine",
    [
        ((5, 7, 48), (5, 7), False),  # one conditioning row per row (the diffusion transformer)
        ((3, 9, 40), (1, 9), True),  # shared by the samples (the atom transformer), a non-power-of-2 width
        ((2, 2, 6, 32), (1, 1, 6), False),
    ],
)
def test_fused_matches_the_composition(a_shape, gs_lead, affine):
    g = torch.Generator().manual_seed(0)
    C = a_shape[-1]
    norm = torch.nn.LayerNorm(C, elementwise_affine=affine).to(DEVICE)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(C, generator=g))
            norm.bias.copy_(torch.randn(C, generator=g))
    a = (torch.randn(*a_shape, generator=g) * 3 + 1).to(DEVICE)
    gs = torch.randn(*gs_lead, 2 * C, generator=g).to(DEVICE)
    m_gs = gs[..., 0].numel()
    y = launch_adaptive_layer_norm(a, gs, m_gs, norm, torch.float32)
    assert y.shape == a.shape and rel_err(y, composed(a, gs, norm)) < 1e-5


def test_fused_writes_one_rounding_of_the_fp32_result():
    g = torch.Generator().manual_seed(1)
    norm = torch.nn.LayerNorm(64, elementwise_affine=False).to(DEVICE)
    a = torch.randn(4, 10, 64, generator=g).to(DEVICE)
    gs = torch.randn(4, 10, 128, generator=g).to(DEVICE)
    y = launch_adaptive_layer_norm(a, gs, 40, norm, torch.float16)
    ref = composed(a, gs, norm)
    assert y.dtype == torch.float16 and rel_err(y.float(), ref) < 2e-3


def test_not_applicable_returns_none():
    """Off CUDA, with gradients, or with an unsupported conditioning shape the caller composes
    torch ops (None)."""
    norm = torch.nn.LayerNorm(8)
    a, gs = torch.randn(2, 3, 8), torch.randn(2, 3, 16)
    assert adaptive_layer_norm(a, gs, norm) is None  # CPU tensors
    if torch.cuda.is_available():
        norm = norm.cuda()
        a, gs = a.cuda(), gs.cuda()
        assert adaptive_layer_norm(a, gs, norm) is None  # the norm's parameters need gradients
        with torch.no_grad():
            assert adaptive_layer_norm(a, gs, norm) is not None
            assert adaptive_layer_norm(a, gs[..., :8], norm) is None  # not [*, 2C]
            assert adaptive_layer_norm(a, torch.randn(2, 1, 16, device="cuda"), norm) is None


@pytest.mark.gpu  # the dispatch to Triton is CUDA-only
def test_dispatch_dtypes_follow_the_composition():
    norm = torch.nn.LayerNorm(96, elementwise_affine=False).cuda()
    a = torch.randn(5, 11, 96, device="cuda")
    gs = torch.randn(5, 11, 192, device="cuda")
    with torch.no_grad():
        assert adaptive_layer_norm(a, gs, norm).dtype == torch.float32
        exact = composed(a, gs.bfloat16().float(), norm)  # the same inputs, every step in fp32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ref = composed(a, gs.bfloat16(), norm)  # autocast rounds sigmoid(gate) to bf16; we do not
            y = adaptive_layer_norm(a, gs.bfloat16(), norm)
            assert y.dtype == ref.dtype == torch.float32 and rel_err(y, exact) < 1e-5 and rel_err(y, ref) < 1e-2
            yb = adaptive_layer_norm(a, gs.bfloat16(), norm, for_matmul=True)
            assert yb.dtype == torch.bfloat16 and rel_err(yb.float(), exact) < 4e-3  # one bf16 rounding
