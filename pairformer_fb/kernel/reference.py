"""Pure-torch reference of FlashBias attention: the CPU path and the test oracle.

Semantics (shared with the Triton path, see ``op.flash_bias_attention``)::

    logits = scale * q @ k^T  +  q_factors @ k_factors^T  +  bias  +  1e9 * (key_mask - 1)
    out    = softmax(logits, dim=-1) @ v

All arithmetic runs in fp32 (fp64 inputs stay fp64); the output has q's dtype. Memory is bounded
by processing ``chunk_size`` queries at a time; when gradients are needed each chunk is
recomputed in the backward pass (activation checkpointing), so no [B, H, Lq, Lk] tensor lives
longer than one chunk.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# The AF3-style hosts mask keys with an additive 1e9 * (mask - 1): masked keys get -1e9, so a row
# whose keys are all masked degrades to a uniform average instead of NaN.
MASK_NEG = 1e9


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _attention_chunk(q, k, v, q_factors, k_factors, bias, key_mask, scale: float):
    ct = _compute_dtype(q.dtype)
    logits = torch.matmul(q.to(ct) * scale, k.to(ct).transpose(-1, -2))
    if q_factors is not None:
        logits = logits + torch.matmul(q_factors.to(ct), k_factors.to(ct).transpose(-1, -2))
    if bias is not None:
        logits = logits + bias.to(ct)
    if key_mask is not None:
        # key_mask: [B or 1, Lk] bool -> [B or 1, 1, 1, Lk]
        logits = logits + MASK_NEG * (key_mask.to(ct) - 1.0)[:, None, None, :]
    probs = torch.softmax(logits, dim=-1)
    return torch.matmul(probs, v.to(ct))


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_factors: torch.Tensor | None,
    k_factors: torch.Tensor | None,
    bias: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    scale: float,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Chunked reference. Inputs are already validated by ``flash_bias_attention``.

    ``bias`` is a 4-d tensor broadcastable to [B, H, Lq, Lk]; ``key_mask`` is a 2-d bool tensor
    broadcastable to [B, Lk]; factors are 4-d with a batch dimension of 1 or B.
    """
    Lq = q.shape[-2]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, q_factors, k_factors, bias)
    )
    outs = []
    for start in range(0, Lq, chunk_size):
        sl = slice(start, min(start + chunk_size, Lq))
        qf = q_factors[:, :, sl] if q_factors is not None else None
        b = bias[:, :, sl] if (bias is not None and bias.shape[2] != 1) else bias
        args = (q[:, :, sl], k, v, qf, k_factors, b, key_mask, scale)
        if needs_grad and Lq > chunk_size:
            outs.append(checkpoint(_attention_chunk, *args, use_reentrant=False))
        else:
            outs.append(_attention_chunk(*args))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.to(q.dtype)
