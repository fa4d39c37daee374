"""The chunked torch reference (the CPU path and test oracle) against the float64 naive formula."""

import pytest
import torch
from naive import differentiable, grads, make_inputs, naive_attention, rel_err

from pairformer_fb import flash_bias_attention
from pairformer_fb.kernel.reference import attention_reference

CASES = [
    # (B, H, Lq, Lk, D, R, factor_batch, bias_shape, mask_shape)
    (2, 2, 13, 11, 8, 1, 1, None, None),
    (3, 2, 17, 19, 24, 7, 3, None, (3, 19)),
    (2, 4, 33, 29, 32, 16, 1, (1, 4, 33, 29), (2, 29)),
    (4, 1, 9, 40, 48, 96, 1, (4, 1, 9, 40), (40,)),
    (1, 2, 21, 21, 64, 7, 1, (2, 21, 21), (1, 21)),
    (2, 2, 5, 7, 128, 16, 2, (1, 1, 1, 7), None),
    (2, 3, 1, 1, 32, 0, 1, (1, 3, 1, 1), (2, 1)),
    (3, 2, 12, 15, 16, 0, 1, (2, 1, 15), None),
]


@pytest.mark.parametrize("B,H,Lq,Lk,D,R,fb,bias_shape,mask_shape", CASES)
def test_reference_matches_naive(B, H, Lq, Lk, D, R, fb, bias_shape, mask_shape):
    args, kw = make_inputs(
        B, H, Lq, Lk, D, R, factor_batch=fb, bias_shape=bias_shape, mask_shape=mask_shape, dtype=torch.float32
    )
    out = flash_bias_attention(*args, **kw, backend="reference")
    ref = naive_attention(*args, **kw)
    assert out.dtype == torch.float32 and out.shape == (B, H, Lq, D)
    assert rel_err(out, ref) < 1e-5
    ins = differentiable(args, kw)
    for name, a, b in zip(["q", "k", "v", *[n for n in kw if n != "key_mask"]], grads(out, ins), grads(ref, ins)):
        assert a.shape == b.shape, name
        assert rel_err(a, b) < 1e-4, name


def test_chunking_and_checkpointing_match_unchunked():
    args, kw = make_inputs(2, 2, 37, 23, 16, 5, bias_shape=(1, 2, 37, 23), mask_shape=(2, 23))
    scale = 0.3
    small = attention_reference(
        *args, kw["q_factors"], kw["k_factors"], kw["bias"], kw["key_mask"], scale, chunk_size=8
    )
    full = naive_attention(*args, **kw, scale=scale)
    assert rel_err(small, full) < 1e-5
    ins = differentiable(args, kw)
    for a, b in zip(grads(small, ins), grads(full, ins)):
        assert rel_err(a, b) < 1e-4


def test_fully_masked_row_is_the_hosts_finite_uniform_average():
    args, kw = make_inputs(3, 2, 6, 9, 16, 4, bias_shape=(1, 2, 6, 9), mask_shape=(3, 9), fully_masked_rows=(1,))
    out = flash_bias_attention(*args, **kw, backend="reference")
    assert torch.isfinite(out).all()
    v = args[2]
    # the hosts' fp32 formula: logits - 1e9 round to the same value, softmax is uniform
    torch.testing.assert_close(out[1], v[1].mean(dim=1, keepdim=True).expand_as(out[1]), rtol=1e-5, atol=1e-5)
    # and it is exactly what the hosts' formula computes in fp32
    host = naive_attention(*args, **kw, compute_dtype=torch.float32)
    torch.testing.assert_close(out, host, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(dtype):
    args, kw = make_inputs(2, 2, 20, 20, 32, 8, bias_shape=(1, 2, 20, 20), dtype=dtype)
    out = flash_bias_attention(*args, **kw, backend="reference")
    assert out.dtype == dtype
    assert rel_err(out, naive_attention(*args, **kw)) < 1e-2


def test_gradcheck_tiny_float64():
    args, kw = make_inputs(2, 2, 3, 4, 3, 2, bias_shape=(1, 2, 3, 4), mask_shape=(2, 4), dtype=torch.float64)

    def f(q, k, v, qf, kf, bias):
        return attention_reference(q, k, v, qf, kf, bias, kw["key_mask"], 0.5, chunk_size=2)

    assert torch.autograd.gradcheck(f, (*args, kw["q_factors"], kw["k_factors"], kw["bias"]))


def test_mask_none_equals_all_true():
    args, kw = make_inputs(2, 2, 10, 12, 16, 3, requires_grad=False)
    a = flash_bias_attention(*args, **kw, backend="reference")
    b = flash_bias_attention(*args, **kw, key_mask=torch.ones(2, 12, dtype=torch.bool), backend="reference")
    assert torch.equal(a, b)


def test_gate_multiplies_the_output_by_its_sigmoid():
    args, kw = make_inputs(3, 2, 11, 9, 16, 4, bias_shape=(1, 2, 11, 9), mask_shape=(3, 9), dtype=torch.float64)
    gate = torch.randn(3, 2, 11, 16, dtype=torch.float64, requires_grad=True)
    out = flash_bias_attention(*args, **kw, gate=gate, backend="reference")
    ref = torch.sigmoid(gate) * naive_attention(*args, **kw)
    assert rel_err(out, ref) < 1e-12
    ins = differentiable(args, kw) + [gate]
    for a, b in zip(grads(out, ins), grads(ref, ins)):
        assert rel_err(a, b) < 1e-10
