"""Protenix's confidence head, one diffusion sample per call (``patch_model(...,
confidence_per_sample=True)``, the default).

Protenix's ``ConfidenceHead.forward`` loops over the diffusion samples itself, appends each
sample's pae / pde logits ``[N_token, N_token, 64]`` (fp32) to a list and stacks the lists at the
end; beyond 2,000 tokens it first moves them to host memory. Stacking copies: while the pde list
is stacked, the stacked pae, the pde list and the stacked pde are alive at once -- 3 x samples
x N^2 x 64 x 4 bytes, 135 GiB of host memory at 6,144 tokens and 5 samples, more than the
128 GiB of the device machine, whatever the GPU holds.

:func:`per_sample_forward` gives the head a forward that calls the host's own ``forward`` once
per sample (``x_pred_coords[..., i:i+1, :, :]``) and copies each call's outputs into one tensor
per output, allocated at the first call (the shape, dtype and device of the host's): at most
2 x samples + 2 of those per-sample logit blocks are alive (108 GiB at 6,144 tokens). Each
sample's computation is the host's own, on the same inputs, so the outputs are bit-identical;
the head's small preamble (``z_init``, the single's layer norm) runs once per sample instead of
once. In training mode (autograd sums the per-sample gradients in another order), for one
sample, and when the call's ``x_pred_coords`` is not a tensor of samples the host's forward runs
unchanged.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

import torch
from torch import nn

# the class whose forward is replaced, and where each of its outputs (plddt, pae, pde,
# resolved) holds the sample: [..., N_sample, N_atom, bins], [..., N_sample, N_token, N_token, bins]
CONFIDENCE_CLASS = "ConfidenceHead"
SAMPLE_DIMS = (-3, -4, -4, -3)


def per_sample_forward(module: nn.Module) -> Callable[..., Any] | None:
    """The per-sample forward of a Protenix ``ConfidenceHead`` (a method bound to ``module``, so
    that a deep copy of the model rebinds it to the copy); None for any other module."""
    if type(module).__name__ != CONFIDENCE_CLASS:
        return None
    return types.MethodType(_forward_per_sample, module)


def _forward_per_sample(self: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    host_forward = type(self).forward
    bound = inspect.signature(host_forward).bind(self, *args, **kwargs)
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
                "(plddt, pae, pde, resolved): pass confidence_per_sample=False to patch_model"
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
