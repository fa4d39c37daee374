"""Adaptive layer norm (AF3 Algorithm 26) in one pass, for inference on CUDA.

``sigmoid(gate) * LN(a) + shift``, where ``[gate, shift]`` is the conditioning projection
``linear_s(LN_s(s)) | linear_nobias_s(LN_s(s))`` computed beforehand (one matmul). Unfused, the
diffusion transformer's attention spends more GPU time on these element-wise passes (layer norm
of a, sigmoid, product, sum, dtype casts: ~0.09 of 0.32 ms per block per step at 1,170 tokens
x 5 samples, H200, benchmarks/session4/call1) than on all its matmuls. Here one program
normalises a block of rows in fp32, applies the gate and shift and writes the result once, in
the autocast dtype when the caller only feeds it to matmuls.

Forward only: callers use it where no gradient is needed and fall back to the composition of
torch ops otherwise (``adaptive_layer_norm`` returns None then).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .layer_norm import norm_output_dtype, normalised_rows, triton_norm_applies
from .tiles import cdiv


@triton.jit
def _adaln_fwd_kernel(
    X,
    GS,
    Y,
    W,
    Bias,
    M,
    M_GS,
    C,
    stride_gs,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_C)
    y, _, _ = normalised_rows(X, W, Bias, rows, cols, M, C, eps, HAS_W, HAS_B)
    ok = (rows < M)[:, None] & (cols < C)[None, :]
    r64 = rows.to(tl.int64)
    # the conditioning rows: one per row of x, or shared by the leading (sample) dims
    g_rows = (r64 % M_GS)[:, None] * stride_gs + cols[None, :]
    gate = tl.load(GS + g_rows, mask=ok, other=0.0).to(tl.float32)
    shift = tl.load(GS + g_rows + C, mask=ok, other=0.0).to(tl.float32)
    y = y / (1.0 + tl.exp(-gate)) + shift
    tl.store(Y + r64[:, None] * C + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)


def adaptive_layer_norm(
    a: torch.Tensor, gate_shift: torch.Tensor, norm: torch.nn.LayerNorm, *, for_matmul: bool = False
) -> torch.Tensor | None:
    """``sigmoid(gate) * norm(a) + shift`` with ``gate, shift = gate_shift.chunk(2, -1)``, in one
    Triton pass; None where it does not apply (not where the layer-norm kernel applies, see
    :func:`~pairformer_fb.kernel.layer_norm.triton_norm_applies`; gradients needed;
    ``gate_shift`` not on CUDA or not [*, 2C] with leading dims equal to a's or all 1 but the
    token dim): the caller then composes torch ops.

    Output dtype, as the composition's: under CUDA autocast fp32 (the autocast dtype with
    ``for_matmul``: the caller feeds it only to matmuls), else the promotion of a's and
    gate_shift's dtypes.
    """
    C = a.shape[-1]
    if not (triton_norm_applies(a, norm) and gate_shift.is_cuda):
        return None
    if torch.is_grad_enabled() and (
        a.requires_grad
        or gate_shift.requires_grad
        or any(p is not None and p.requires_grad for p in (norm.weight, norm.bias))
    ):
        return None
    if gate_shift.shape[-1] != 2 * C or gate_shift.dim() != a.dim():
        return None
    lead_a, lead_g = a.shape[:-1], gate_shift.shape[:-1]
    if lead_g == lead_a:
        m_gs = math.prod(lead_a)
    elif lead_g[-1] == lead_a[-1] and math.prod(lead_g[:-1]) == 1:
        m_gs = lead_g[-1]  # shared by the leading dims: row r of a reads row r % N
    else:
        return None
    out_dtype = norm_output_dtype(torch.promote_types(a.dtype, gate_shift.dtype), for_matmul)
    return launch_adaptive_layer_norm(a, gate_shift, m_gs, norm, out_dtype)


def launch_adaptive_layer_norm(
    a: torch.Tensor, gate_shift: torch.Tensor, m_gs: int, norm: torch.nn.LayerNorm, out_dtype: torch.dtype
) -> torch.Tensor:
    """The kernel launch behind :func:`adaptive_layer_norm` (no checks): ``gate_shift`` holds
    ``m_gs`` rows of [gate | shift], row r of a reads row r % m_gs."""
    C = a.shape[-1]
    gs = gate_shift.reshape(m_gs, 2 * C)
    if gs.stride(-1) != 1:
        gs = gs.contiguous()
    x = a.reshape(-1, C)
    if not x.is_contiguous():
        x = x.contiguous()
    M = x.shape[0]
    y = torch.empty((M, C), device=a.device, dtype=out_dtype)
    block_c = triton.next_power_of_2(C)
    block_rows = max(1, min(16, 4096 // block_c))
    _adaln_fwd_kernel[(cdiv(M, block_rows),)](
        x,
        gs,
        y,
        norm.weight if norm.weight is not None else x,
        norm.bias if norm.bias is not None else x,
        M,
        m_gs,
        C,
        gs.stride(0),
        norm.eps,
        HAS_W=norm.weight is not None,
        HAS_B=norm.bias is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=4 if block_c <= 1024 else 8,
    )
    return y.view(a.shape)


__all__ = ["adaptive_layer_norm", "launch_adaptive_layer_norm"]
