"""The one public attention op: input validation, normalisation and dispatch."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Literal

import torch

from .reference import attention_reference

MAX_HEAD_DIM = 128
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Backend = Literal["auto", "triton", "reference"]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_tensor(name: str, t, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested or t.layout != torch.strided:
        layout = "nested" if t.is_nested else str(t.layout).replace("torch.", "")
        raise TypeError(f"{name} must be a dense (strided) tensor, got a {layout} one")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-d tensor, got shape {_shape(t)}")


def check_backend(backend) -> None:
    """A ValueError naming ``backend`` unless it is one of the op's (the modules check theirs too)."""
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")


def _check_scale(scale, D: int) -> float:
    """The score scale as a finite float (D ** -0.5 when None): a real number, or a one-element
    tensor that needs no gradient (the op takes the scale as a constant)."""
    if scale is None:
        return D**-0.5
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a number, got a tensor of shape {_shape(scale)}")
        if scale.requires_grad:
            raise TypeError("scale must be a number: a tensor that requires grad would get no gradient from the op")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _broadcast_to(name: str, t: torch.Tensor, target: tuple[int, ...], labels: str) -> torch.Tensor:
    """Left-pad t with size-1 dims and check every dim is 1 or the target's (a view, no copy)."""
    if t.dim() > len(target):
        raise ValueError(
            f"{name} has shape {_shape(t)}, expected at most {len(target)} dims broadcastable to "
            f"{labels} = {list(target)}"
        )
    t = t.reshape((1,) * (len(target) - t.dim()) + tuple(t.shape)) if t.dim() < len(target) else t
    for size, want in zip(t.shape, target):
        if size not in (1, want):
            raise ValueError(f"{name} has shape {_shape(t)}, which does not broadcast to {labels} = {list(target)}")
    return t


# fp32 products without TF32 run on the FMA units, where tiles wider than this (padded head dim +
# padded rank) spill registers: 5-150 s per compile for sm_90
# (benchmarks/session5/cpu_compile_probe/); "auto" runs those on the torch reference path (cuBLAS) instead.
FULL_FP32_MAX_WIDTH = 64
_warned_full_fp32 = False


def pow2_at_least_16(n: int) -> int:
    """The kernels' padded tile width of a head dim or rank: the next power of 2, at least 16."""
    return max(16, 1 << (n - 1).bit_length())


def _full_fp32_too_wide(q: torch.Tensor, q_factors: torch.Tensor | None) -> bool:
    global _warned_full_fp32
    if q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return False
    width = pow2_at_least_16(q.shape[-1]) + (pow2_at_least_16(q_factors.shape[-1]) if q_factors is not None else 0)
    if width <= FULL_FP32_MAX_WIDTH:
        return False
    if not _warned_full_fp32:
        _warned_full_fp32 = True
        warnings.warn(
            f"flash_bias_attention: fp32 inputs with torch.backends.cuda.matmul.allow_tf32 = False and padded head "
            f"dim + rank {width} > {FULL_FP32_MAX_WIDTH} run the torch reference path (the full-precision Triton "
            f"kernels of this width compile for minutes); allow TF32 or use bf16 / fp16 for the fused kernel",
            RuntimeWarning,
            stacklevel=3,
        )
    return True


def flash_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_factors: torch.Tensor | None = None,
    k_factors: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    gate: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Attention with a low-rank and/or dense additive bias, fused into one kernel.

    ``softmax(scale * q k^T + q_factors k_factors^T + bias + 1e9 * (key_mask - 1)) v``,
    times ``sigmoid(gate)`` when a gate is given.

    Args:
        q: [B, H, Lq, D]; for triangle attention B = batch x N rows.
        k, v: [B, H, Lk, D].
        q_factors, k_factors: [B', H, Lq, R] and [B', H, Lk, R], B' in {1, B}: the bias factors
            (phi_q, phi_k). Given together or not at all; not multiplied by ``scale``. A batch
            dimension of 1 is shared by every row and read with stride 0.
        bias: dense additive bias broadcastable to [B, H, Lq, Lk] (e.g. [1, H, Lq, Lk]).
        key_mask: bool, broadcastable to [B, Lk]; False masks a key with the hosts' additive
            -1e9, so a fully masked row averages v uniformly (finite, never NaN).
        scale: a finite real number (or a one-element tensor without gradient) that multiplies
            q k^T; defaults to D ** -0.5.
        gate: [B, H, Lq, D] like q, optional: the output is sigmoid(gate) * attention, the
            gating of the AF3 attentions. Without gradients to compute (inference) the Triton
            path applies it in the forward kernel's epilogue (no extra pass over the output).
        backend: "auto" runs the Triton kernels for CUDA tensors and the chunked torch reference
            otherwise (and for fp32 without TF32 when the padded head dim + rank exceeds
            ``FULL_FP32_MAX_WIDTH``, with a one-time warning); "triton" / "reference" force one path.

    Precision: fp16 and bf16 use fp32 accumulation and an fp32 softmax. fp32 inputs run the
    Triton products in tf32 only when ``torch.backends.cuda.matmul.allow_tf32`` is set (as
    torch's own fp32 matmuls do), otherwise in full fp32. The output has q's dtype.

    Gradients flow to q, k, v, the factors and the bias, summed over broadcast dimensions;
    the mask gets none.
    """
    check_backend(backend)
    _check_tensor("q", q, 4)
    _check_tensor("k", k, 4)
    _check_tensor("v", v, 4)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if tuple(k.shape[:2]) != (B, H) or k.shape[3] != D:
        raise ValueError(f"k must be [B, H, Lk, D] = [{B}, {H}, Lk, {D}] to match q {_shape(q)}, got {_shape(k)}")
    if tuple(v.shape) != (B, H, Lk, D):
        raise ValueError(f"v must be [B, H, Lk, D] = [{B}, {H}, {Lk}, {D}] like k, got {_shape(v)}")
    if min(B, H, Lq, Lk, D) < 1:
        raise ValueError(f"q {_shape(q)} and k {_shape(k)} must have every dimension >= 1")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head dim D = {D} (last dim of q) exceeds the supported maximum {MAX_HEAD_DIM}")
    allowed = KERNEL_DTYPES + ((torch.float64,) if backend == "reference" else ())
    if q.dtype not in allowed:
        raise TypeError(f"q has dtype {q.dtype}, expected one of {', '.join(map(str, allowed))}")

    floats = {"q": q, "k": k, "v": v}
    if (q_factors is None) != (k_factors is None):
        given = "q_factors" if q_factors is not None else "k_factors"
        raise ValueError(f"{given} was given without its partner: pass q_factors and k_factors together")
    if q_factors is not None:
        assert k_factors is not None  # given together: checked just above
        _check_tensor("q_factors", q_factors, 4)
        _check_tensor("k_factors", k_factors, 4)
        R = q_factors.shape[3]
        if R < 1:
            raise ValueError(f"q_factors has rank R = {R}, expected R >= 1")
        if q_factors.shape[0] not in (1, B) or tuple(q_factors.shape[1:]) != (H, Lq, R):
            raise ValueError(f"q_factors must be [B', H, Lq, R] = [1 or {B}, {H}, {Lq}, R], got {_shape(q_factors)}")
        if k_factors.shape[0] not in (1, B) or tuple(k_factors.shape[1:]) != (H, Lk, R):
            raise ValueError(
                f"k_factors must be [B', H, Lk, R] = [1 or {B}, {H}, {Lk}, {R}] (R from q_factors), got {_shape(k_factors)}"
            )
        if q_factors.shape[0] != k_factors.shape[0]:
            raise ValueError(
                f"q_factors {_shape(q_factors)} and k_factors {_shape(k_factors)} must have the same batch dimension (1 or {B})"
            )
        floats.update(q_factors=q_factors, k_factors=k_factors)
    if bias is not None:
        _check_tensor("bias", bias)
        bias = _broadcast_to("bias", bias, (B, H, Lq, Lk), "[B, H, Lq, Lk]")
        floats["bias"] = bias
    if gate is not None:
        _check_tensor("gate", gate, 4)
        if tuple(gate.shape) != (B, H, Lq, D):
            raise ValueError(f"gate must be [B, H, Lq, D] = [{B}, {H}, {Lq}, {D}] like q, got {_shape(gate)}")
        floats["gate"] = gate
    for name, t in floats.items():
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, expected q's device {q.device}")
    if key_mask is not None:
        _check_tensor("key_mask", key_mask)
        if key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask must be a bool tensor (False = masked key), got dtype {key_mask.dtype}")
        if key_mask.device != q.device:
            raise ValueError(f"key_mask is on {key_mask.device}, expected q's device {q.device}")
        key_mask = _broadcast_to("key_mask", key_mask, (B, Lk), "[B, Lk]")
        # a mask broadcast along the keys ([B', 1]) is widened to every key (a stride-0 view): the
        # kernels read one mask entry per key
        key_mask = key_mask.expand(key_mask.shape[0], Lk)
    scale = _check_scale(scale, D)

    if backend == "auto":
        backend = "triton" if q.is_cuda and not _full_fp32_too_wide(q, q_factors) else "reference"
    if backend == "triton":
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' needs CUDA tensors, but q is on {q.device} (Triton has no CPU "
                "driver): use backend='auto' or 'reference' (TRITON_INTERPRET=1: Triton's interpreter)"
            )
        from .tiles import check_env_settings
        from .triton_launch import attention_triton

        check_env_settings()
        return attention_triton(q, k, v, q_factors, k_factors, bias, key_mask, scale, gate)
    o = attention_reference(q, k, v, q_factors, k_factors, bias, key_mask, scale)
    return o if gate is None else torch.sigmoid(gate) * o


def prepare_reused_bias(bias: torch.Tensor) -> torch.Tensor:
    """A dense bias that will be passed to ``flash_bias_attention`` many times (e.g. the
    diffusion module's, fixed across all steps and samples), in the form the op reads without
    a per-call copy: for CUDA tensors the same values in storage padded to whole kernel tiles
    (the op otherwise pads a shared bias whose lengths are not tile multiples at every call);
    other tensors unchanged. Values, shape and dtype are those of ``bias``."""
    if not bias.is_cuda:
        return bias
    from .triton_launch import pad_bias_to_tiles

    return pad_bias_to_tiles(bias)
