"""Host architecture presets: ``model=PRESET`` in the scripts (conversion, fine-tuning,
benchmark) builds the real host model from its package's own configs. Each host's presets and
builders live in its package: ``hosts/protenix/presets.py`` (``tiny`` / ``base`` / ``v2`` / any
Protenix model name), ``hosts/openfold3/presets.py`` (``tiny`` / ``default``),
``hosts/boltz/presets.py`` (``trunk``; the benchmark's full Boltz-2). Shared here:
:class:`PresetError`, :data:`DEFAULT_PRESETS` (each host's default) and :func:`randomise_`.
"""

from __future__ import annotations

import torch
from torch import nn


class PresetError(ValueError):
    """An unknown preset, or a host package that cannot be imported."""


# the preset ``model=`` picks when none is given
DEFAULT_PRESETS = {"protenix": "base", "openfold3": "default", "boltz": "trunk"}


def randomise_(module: nn.Module, seed: int = 0, spread: float = 0.2) -> nn.Module:
    """Random, non-zero weights of a moderate scale (layer-norm scales around 1), in place.

    The hosts zero-initialise their output projections and gates, so a freshly built model's
    attention updates are exactly zero: every variant would agree trivially. Tests and the
    benchmark without a checkpoint use these weights instead. ``spread``: the standard deviation
    of the layer-norm scales around 1 and of the biases around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_((r * 0.7 / p.shape[-1] ** 0.5).to(p.dtype))
            elif name.endswith("weight"):  # layer-norm scales
                p.copy_((1.0 + spread * r).to(p.dtype))
            else:
                p.copy_((spread * r).to(p.dtype))
    return module
