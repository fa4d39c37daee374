"""Modules layer: drop-in triangle attention and pair-biased single attention on the FlashBias
op, and the factor networks that turn their pair bias into low-rank factors."""

from .attention_pair_bias import FlashBiasAttentionPairBias
from .common import MODES, FlashBiasModule, Mode
from .factor_network import FactorConfig, FactorNetwork, bias_approximation_loss
from .triangle_attention import FlashBiasTriangleAttention

__all__ = [
    "FlashBiasTriangleAttention",
    "FlashBiasAttentionPairBias",
    "FlashBiasModule",
    "FactorConfig",
    "FactorNetwork",
    "bias_approximation_loss",
    "Mode",
    "MODES",
]
