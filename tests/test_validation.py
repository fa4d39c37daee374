"""Bad input gets a clear error naming the argument and what was expected."""

import pytest
import torch

from pairformer_fb import flash_bias_attention


def qkv(B=2, H=2, L=5, D=8, dtype=torch.float32):
    return (
        torch.randn(B, H, L, D, dtype=dtype),
        torch.randn(B, H, L, D, dtype=dtype),
        torch.randn(B, H, L, D, dtype=dtype),
    )


def f(r=3, b=1, H=2, L=5):
    return torch.randn(b, H, L, r)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ((qkv()[0][0],) + qkv()[1:], {}), r"q must be a 4-d tensor"),
        (lambda: ((qkv()[0], torch.randn(2, 2, 5, 4), qkv()[2]), {}), r"k must be \[B, H, Lk, D\]"),
        (lambda: ((*qkv()[:2], torch.randn(2, 2, 6, 8)), {}), r"v must be \[B, H, Lk, D\]"),
        (lambda: (qkv(D=160), {}), r"head dim D = 160 .* exceeds the supported maximum 128"),
        (lambda: ((torch.ones(2, 2, 5, 8, dtype=torch.int32),) * 3, {}), r"q has dtype torch.int32"),
        (
            lambda: ((qkv()[0], qkv()[1].half(), qkv()[2]), {}),
            r"k has dtype torch.float16, expected q's dtype torch.float32",
        ),
        (lambda: (qkv(), {"q_factors": f()}), r"q_factors was given without its partner"),
        (lambda: (qkv(), {"k_factors": f()}), r"k_factors was given without its partner"),
        (lambda: (qkv(), {"q_factors": f(b=3), "k_factors": f(b=3)}), r"q_factors must be \[B', H, Lq, R\]"),
        (lambda: (qkv(), {"q_factors": f(r=3), "k_factors": f(r=4)}), r"k_factors must be \[B', H, Lk, R\]"),
        (lambda: (qkv(), {"q_factors": f(b=1), "k_factors": f(b=2)}), r"must have the same batch dimension"),
        (lambda: (qkv(), {"q_factors": f(r=0), "k_factors": f(r=0)}), r"rank R = 0"),
        (lambda: (qkv(), {"q_factors": f().half(), "k_factors": f().half()}), r"q_factors has dtype torch.float16"),
        (
            lambda: (qkv(), {"bias": torch.randn(3, 2, 5, 5)}),
            r"bias has shape \[3, 2, 5, 5\], which does not broadcast",
        ),
        (lambda: (qkv(), {"bias": torch.randn(1, 1, 2, 5, 5)}), r"bias has shape .* expected at most 4 dims"),
        (lambda: (qkv(), {"key_mask": torch.ones(2, 5)}), r"key_mask must be a bool tensor"),
        (
            lambda: (qkv(), {"key_mask": torch.ones(2, 4, dtype=torch.bool)}),
            r"key_mask has shape \[2, 4\], which does not broadcast to \[B, Lk\]",
        ),
        (lambda: ((torch.randn(2, 2, 0, 8), *qkv()[1:]), {}), r"every dimension >= 1"),
        (lambda: (qkv(), {"gate": torch.randn(1, 2, 5, 8)}), r"gate must be \[B, H, Lq, D\] = \[2, 2, 5, 8\] like q"),
        (lambda: (qkv(), {"gate": torch.randn(2, 2, 5, 8).half()}), r"gate has dtype torch.float16"),
        (
            lambda: ((qkv()[0].to_sparse(), *qkv()[1:]), {}),
            r"q must be a dense \(strided\) tensor, got a sparse_coo one",
        ),
        (lambda: (qkv(), {"bias": torch.randn(1, 2, 5, 5).to_sparse()}), r"bias must be a dense \(strided\) tensor"),
        (lambda: (qkv(), {"scale": float("nan")}), r"scale must be finite, got nan"),
        (lambda: (qkv(), {"scale": float("inf")}), r"scale must be finite, got inf"),
        (lambda: (qkv(), {"scale": "0.5"}), r"scale must be a real number, got str '0.5'"),
        (lambda: (qkv(), {"scale": 1j}), r"scale must be a real number, got complex"),
        (lambda: (qkv(), {"scale": [0.5]}), r"scale must be a real number, got list"),
        (lambda: (qkv(), {"scale": True}), r"scale must be a real number, got bool"),
        (lambda: (qkv(), {"scale": torch.ones(2)}), r"scale must be a number, got a tensor of shape \[2\]"),
        (lambda: (qkv(), {"scale": torch.tensor(0.3, requires_grad=True)}), r"would get no gradient"),
    ],
)
def test_bad_input_gets_a_clear_error(backend, make, match):
    args, kw = make()
    with pytest.raises((ValueError, TypeError), match=match):
        flash_bias_attention(*args, **kw, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        flash_bias_attention(*qkv(), backend="cuda")
    with pytest.raises(ValueError, match="backend must be .* got 'Reference'"):  # named before q's dtype
        flash_bias_attention(*qkv(dtype=torch.float64), backend="Reference")


def test_float64_only_on_the_reference_path():
    q, k, v = qkv(dtype=torch.float64)
    assert flash_bias_attention(q, k, v, backend="reference").dtype == torch.float64
    with pytest.raises(TypeError, match="q has dtype torch.float64"):
        flash_bias_attention(q, k, v, backend="triton")


def test_full_fp32_wider_than_the_fma_tiles_goes_to_the_reference_once_warned(monkeypatch):
    """fp32 without TF32 at padded head dim + rank > 64 (D = 96; D = 48 with R = 32) dispatches to
    the reference under backend='auto', warning once; narrower, TF32 or 16-bit stay on Triton."""
    from pairformer_fb.kernel import op

    monkeypatch.setattr(op, "_warned_full_fp32", False)
    matmul = torch.backends.cuda.matmul  # its allow_tf32 is a property: set and restore by hand
    old = matmul.allow_tf32
    q = lambda d, dtype=torch.float32: torch.zeros(1, 1, 4, d, dtype=dtype)  # noqa: E731
    try:
        matmul.allow_tf32 = False
        with pytest.warns(RuntimeWarning, match="allow_tf32"):
            assert op._full_fp32_too_wide(q(96), None)
        assert op._full_fp32_too_wide(q(48), q(32))  # warned already: silent
        assert not op._full_fp32_too_wide(q(48), None) and not op._full_fp32_too_wide(q(32), q(32))
        assert not op._full_fp32_too_wide(q(96, torch.bfloat16), None)
        matmul.allow_tf32 = True
        assert not op._full_fp32_too_wide(q(96), None)
    finally:
        matmul.allow_tf32 = old


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_number_like_scales_are_taken(backend):
    """A scale given as an int, a numpy float or a one-element tensor gives what the float does."""
    import numpy as np

    args = qkv()
    want = flash_bias_attention(*args, scale=0.5, backend="reference")
    for scale in (np.float32(0.5), torch.tensor(0.5), torch.tensor([0.5])):
        assert torch.allclose(flash_bias_attention(*args, scale=scale, backend=backend), want, atol=1e-6), scale
    assert torch.allclose(
        flash_bias_attention(*args, scale=1, backend=backend),
        flash_bias_attention(*args, scale=1.0, backend="reference"),
        atol=1e-6,
    )
