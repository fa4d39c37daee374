"""Protenix's memory-hungry host methods, run with less peak memory for the same outputs
(``patch_model(..., lean_memory=True)``, the default; the adapter's ``lean_methods``). Each
replacement calls the host's own method on parts of its input and copies the parts' outputs into
one tensor per output, allocated at the first part (the host's shape, dtype and device). Every
part is computed by the host's code on the same values, so the outputs are the host's: the tests
compare them bit for bit on the CPU (tests/test_protenix_lean.py); on CUDA the pair conditioning's
row chunks round like the host's (see below; the GPU test there).
Where a method takes less than one part, the host's runs unchanged.

* ``ConfidenceHead.forward``, one diffusion sample per call. The host loops over the samples
  itself, appends each sample's pae / pde logits ``[N_token, N_token, 64]`` (fp32) to a list and
  stacks the lists at the end; beyond 2,000 tokens it first moves them to host memory. Stacking
  copies: while the pde list is stacked, the stacked pae, the pde list and the stacked pde are
  alive at once -- 3 x samples x N^2 x 64 x 4 bytes, 135 GiB of host memory at 6,144 tokens and
  5 samples, more than the 128 GiB of the device machine, whatever the GPU holds. One sample per
  call holds at most 2 x samples + 2 of those blocks (108 GiB). The head's small preamble
  (``z_init``, the single's layer norm) then runs once per sample instead of once. In training
  mode (autograd would sum the per-sample gradients in another order) the host's loop runs.
  In inference (no autograd) the head also gives back the relative-position features
  (``input_feature_dict["relp"]``, [N, N, 139] fp32: 19.5 GiB at 6,144 tokens), which nothing
  reads once the sampling is over: the entry becomes a meta tensor of the same shape and dtype,
  the way Protenix itself drops the MSA and template features from that dict after the trunk
  (a features dict serves one prediction). Any later use of it fails loudly (a meta tensor has
  no data).
* ``DiffusionConditioning.prepare_cache`` (the diffusion's pair conditioning, once per
  prediction, fp32), in rows of the pair representation: the host concatenates z with the
  relative-position embedding, ``[N, N, 2 c_z]``, layer-normalises that and projects it, so that
  the concatenation, its normalisation and the projection are alive at once -- 90 GiB at 6,144
  tokens besides what the prediction already holds. Every step of it works on each
  (i, j) pair alone, so rows of at most :data:`~pairformer_fb.modules.diffusion_attention.
  PAIR_CHUNK_BYTES` of concatenation (1 GiB) at a time give the same pair conditioning with one
  chunk's transients. Its matrix products then run on fewer pairs at a time; their results are
  the same as long as a chunk is not tiny (on the CPU, chunks of under ~40 pairs take another
  blocking and differ by ~1e-7). On CUDA cuBLAS picks its kernel by the product's shape, so a
  chunk's products may round differently from the whole's (seen on an H200 in 2026-12: at TF32's
  rounding, ~2e-4): the GPU test checks that the chunks' error against an fp64 computation is no
  larger than the host's own. Here a chunk is at least one row of N > 1,024 pairs: the
  method is split only where the whole would pass 1 GiB.
* ``RelativePositionEncoding.generate_relp`` (the relative-position features ``relp``, once per
  prediction, before the trunk): the host one-hot encodes the relative residue, token and chain
  codes as int64 ``[N, N, 66 | 66 | 6]``, concatenates them with the same-entity flag as int64
  ``[N, N, 139]`` and converts that to fp32 -- about 98 GiB alive at once at 6,144 tokens (seen on
  an H200 in 2026-12: 100.8 GiB peak before the trunk, the prediction's largest), for a 19.5 GiB
  result. The host's method runs as it is inside a torch function mode that makes its one-hots
  uint8 and, where every part of a concatenation is a 0 / 1 integer tensor, concatenates them
  as uint8: the same 0 / 1 values, so the same fp32 ``relp``, with about 30 GiB alive at 6,144
  by their shapes (on the H200 that phase then peaked at 38.28 GiB, what the prediction already
  held included; benchmarks/ladder_h200/).
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ...modules import diffusion_attention

# the confidence head's outputs (plddt, pae, pde, resolved) and where each holds the sample:
# [..., N_sample, N_atom, bins], [..., N_sample, N_token, N_token, bins]
SAMPLE_DIMS = (-3, -4, -4, -3)


def lean_methods(module: nn.Module) -> dict[str, Callable[..., Any]]:
    """The lean replacements of ``module``'s methods, by method name (bound to ``module``, so
    that a deep copy of the model rebinds them to the copy); empty for other modules."""
    name = type(module).__name__
    if name == "ConfidenceHead":
        return {"forward": types.MethodType(_confidence_forward_per_sample, module)}
    if name == "DiffusionConditioning" and hasattr(type(module), "prepare_cache"):
        return {"prepare_cache": types.MethodType(_prepare_cache_in_rows, module)}
    if name == "RelativePositionEncoding" and hasattr(type(module), "generate_relp"):
        return {"generate_relp": types.MethodType(_generate_relp_narrow, module)}
    return {}


def _confidence_forward_per_sample(self: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    host_forward = type(self).forward
    bound = inspect.signature(host_forward).bind(self, *args, **kwargs)
    if not self.training and not torch.is_grad_enabled():
        _drop_relp(bound.arguments.get("input_feature_dict"))
    coords = bound.arguments.get("x_pred_coords")  # [..., N_sample, N_atom, 3]
    if self.training or not isinstance(coords, torch.Tensor) or coords.dim() < 3 or coords.shape[-3] <= 1:
        return host_forward(self, *args, **kwargs)
    n_sample = coords.shape[-3]
    outs: list[torch.Tensor] = []
    for i in range(n_sample):
        bound.arguments["x_pred_coords"] = coords[..., i : i + 1, :, :]
        res = host_forward(*bound.args, **bound.kwargs)
        if len(res) != len(SAMPLE_DIMS):
            raise RuntimeError(
                f"Protenix's ConfidenceHead returned {len(res)} outputs, expected {len(SAMPLE_DIMS)} "
                "(plddt, pae, pde, resolved): pass lean_memory=False to patch_model"
            )
        if not outs:
            for r, d in zip(res, SAMPLE_DIMS):
                shape = list(r.shape)
                shape[d] = n_sample
                outs.append(r.new_empty(shape))
        for o, r, d in zip(outs, res, SAMPLE_DIMS):
            o.narrow(d, i, 1).copy_(r)
        del res
    return tuple(outs)


def _drop_relp(features: Any) -> None:
    """The features' ``relp`` replaced by a meta tensor of its shape and dtype (no memory)."""
    relp = features.get("relp") if isinstance(features, dict) else None
    if isinstance(relp, torch.Tensor) and relp.device.type != "meta":
        features["relp"] = torch.empty(relp.shape, dtype=relp.dtype, device="meta")


def _prepare_cache_in_rows(
    self: nn.Module, relp_feature: torch.Tensor, z_trunk: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    host_prepare = getattr(type(self), "prepare_cache")
    if z_trunk.dim() < 3 or relp_feature.shape[:-1] != z_trunk.shape[:-1]:
        return host_prepare(self, relp_feature, z_trunk, *args, **kwargs)
    n_rows = z_trunk.shape[-3]
    # the rows of PAIR_CHUNK_BYTES of the concatenation [N, 2 c_z] (fp32, the host's precision
    # here): half the rows of that much z (which pair_rows_per_chunk counts at >= 4 bytes)
    rows = max(1, diffusion_attention.pair_rows_per_chunk(z_trunk) // 2)
    if rows >= n_rows:
        return host_prepare(self, relp_feature, z_trunk, *args, **kwargs)
    out: torch.Tensor | None = None
    for start in range(0, n_rows, rows):
        part = host_prepare(
            self,
            relp_feature[..., start : start + rows, :, :],
            z_trunk[..., start : start + rows, :, :],
            *args,
            **kwargs,
        )
        if out is None:
            out = part.new_empty((*part.shape[:-3], n_rows, *part.shape[-2:]))
        out[..., start : start + part.shape[-3], :, :] = part
        del part
    assert out is not None  # n_rows > rows >= 1: at least one part
    return out


def _generate_relp_narrow(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    with _NarrowOneHots():
        return getattr(type(self), "generate_relp")(self, *args, **kwargs)


class _NarrowOneHots(TorchFunctionMode):
    """One-hot encodings as uint8 instead of int64, and concatenations of 0 / 1 integer tensors
    as uint8: the same values in an eighth of the bytes. Anything else runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.one_hot:
            return _one_hot_uint8(*args, **kwargs)
        if func is torch.cat:
            narrow = _as_uint8_flags(args[0] if args else kwargs.get("tensors"))
            if narrow is not None:
                rest = {k: v for k, v in kwargs.items() if k != "tensors"}
                return torch.cat(narrow, *args[1:], **rest)
        return func(*args, **kwargs)


def _one_hot_uint8(codes: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
    """``F.one_hot`` as uint8, made without its int64 ``[..., num_classes]`` result; codes that
    ``F.one_hot`` would refuse go to it (its error)."""
    if (
        num_classes < 1
        or codes.dtype != torch.int64
        or codes.numel() == 0
        or codes.min().item() < 0
        or codes.max().item() >= num_classes
    ):
        return F.one_hot(codes, num_classes).to(torch.uint8)
    out = torch.zeros((*codes.shape, num_classes), dtype=torch.uint8, device=codes.device)
    return out.scatter_(-1, codes.unsqueeze(-1), 1)


def _as_uint8_flags(tensors: Any) -> list[torch.Tensor] | None:
    """``tensors`` as uint8 when every one is an integer or bool tensor holding only 0 and 1 and
    one is uint8 already (a one-hot made here); else None."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    if not any(t.dtype == torch.uint8 for t in tensors):
        return None
    if any(t.is_floating_point() or t.is_complex() for t in tensors):
        return None
    for t in tensors:
        if t.dtype not in (torch.uint8, torch.bool) and t.numel() and (t.min().item() < 0 or t.max().item() > 1):
            return None
    return [t.to(torch.uint8) for t in tensors]
