"""Layer norm over the last dim, with a Triton forward for CUDA tensors.

PyTorch's kernel is slow for the pair representation's narrow rows: on an H200, LayerNorm of
a [1024 * 1024, 128] bf16 tensor took 1.17 ms (20% of a triangle-attention module), where
moving its 512 MB takes ~0.13 ms. The Triton forward normalises a block of rows per program
in fp32 and saves mean and 1/std; the backward is PyTorch's own (aten.native_layer_norm_backward
on those statistics), so gradients are exactly torch's. Other devices use F.layer_norm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import cdiv


@triton.jit
def normalised_rows(X, W, Bias, rows, cols, M, C, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Rows ``rows`` of the row-major [M, C] X normalised over C in fp32 (times W, plus Bias when
    given), with their mean and 1/std; columns ``cols`` (a power of 2 >= C) past C are 0.
    Shared by the layer-norm kernels (this one and adaptive_layer_norm's)."""
    row_ok = rows < M
    col_ok = cols < C
    ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / C
    xc = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return y, mean, rstd


@triton.jit
def _layer_norm_fwd_kernel(
    X,
    W,
    Bias,
    Y,
    MEAN,
    RSTD,
    M,
    C,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    y, mean, rstd = normalised_rows(X, W, Bias, rows, cols, M, C, eps, HAS_W, HAS_B)
    row_ok = rows < M
    ok = row_ok[:, None] & (cols < C)[None, :]
    tl.store(Y + rows.to(tl.int64)[:, None] * C + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


class _TritonLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        C = x.shape[-1]
        x2 = x.reshape(-1, C)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        M = x2.shape[0]
        y = torch.empty_like(x2, dtype=out_dtype)
        mean = torch.empty(M, device=x.device, dtype=torch.float32)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        block_c = triton.next_power_of_2(C)
        block_rows = max(1, min(64, 4096 // block_c))
        _layer_norm_fwd_kernel[(cdiv(M, block_rows),)](
            x2,
            weight if weight is not None else x2,
            bias if bias is not None else x2,
            y,
            mean,
            rstd,
            M,
            C,
            eps,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            BLOCK_ROWS=block_rows,
            BLOCK_C=block_c,
            num_warps=4,
        )
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        C = x2.shape[-1]
        x_dtype = x2.dtype
        if any(p is not None and p.dtype != x_dtype for p in (weight, bias)):
            x2 = x2.float()  # mixed dtypes: the backward in fp32 (x's gradient cast back below)
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy.reshape(-1, C).to(x2.dtype).contiguous(),
            x2,
            [C],
            mean[:, None],
            rstd[:, None],
            weight,
            bias,
            [
                ctx.needs_input_grad[0],
                weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2],
            ],
        )
        return (dx.to(x_dtype).view(ctx.x_shape) if dx is not None else None), dw, db, None, None


def triton_norm_applies(x: torch.Tensor, norm: torch.nn.LayerNorm) -> bool:
    """Whether the Triton layer-norm kernels take ``norm`` over x: a CUDA x, a norm over the last
    dim only (at most 8192 wide), parameters of x's dtype or fp32 (other mixes follow torch's
    promotion rules, so they stay with torch)."""
    return (
        x.is_cuda
        and len(norm.normalized_shape) == 1
        and x.shape[-1] <= 8192
        and all(p is None or p.dtype in (x.dtype, torch.float32) for p in (norm.weight, norm.bias))
    )


def norm_output_dtype(dtype: torch.dtype, for_matmul: bool) -> torch.dtype:
    """The dtype torch's composition would give a layer-norm result of ``dtype`` without
    autocast: under CUDA autocast (which runs layer norm in fp32) fp32, or the autocast dtype
    with ``for_matmul`` (the caller feeds it only to matmuls, which would cast it to that)."""
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda") if for_matmul else torch.float32
    return dtype


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm, *, for_matmul: bool = False) -> torch.Tensor:
    """``norm(x)`` (an nn.LayerNorm over the last dim): Triton forward on CUDA, else torch.

    The statistics and the affine step are computed in fp32 whatever the dtypes; the output
    dtype is torch's: under CUDA autocast (which runs layer norm in fp32) fp32, else x's dtype.
    fp32 parameters with a bf16 / fp16 x (a host's pair rep inside an autocast trunk) are used
    as they are, without the fp32 copy of x that autocast would make: in a Protenix prediction
    at 1,170 tokens torch's fp32 kernel alone took 1.44 ms per call (H200,
    benchmarks/session4/call1), and the triangle module went from 9.73 to 6.71 ms with this
    change and the chunking one (call3).

    ``for_matmul``: the caller only feeds the result to matmuls (linear layers). Under CUDA
    autocast the result is then written once in the autocast dtype, the values autocast's own
    cast before the matmul would give, without that extra pass over the tensor (a triangle
    module with an fp32 pair rep at N = 1170: 0.48 ms of 11, H200,
    benchmarks/session3/run1/mod.txt)."""
    if not triton_norm_applies(x, norm):
        return norm(x)
    return _TritonLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, norm_output_dtype(x.dtype, for_matmul))
