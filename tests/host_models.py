"""Shared by the host-model tests: random, non-zero host weights (the hosts zero-initialise
their output projections and gates, which would hide every error)."""

import torch
from torch import nn


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-zero weights of a moderate scale (layer-norm scales around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(r * 0.7 / p.shape[-1] ** 0.5)
            elif name.endswith("weight"):  # layer-norm scales
                p.copy_(1.0 + 0.2 * r)
            else:
                p.copy_(0.2 * r)
    return module
