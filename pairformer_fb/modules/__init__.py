"""Modules layer: drop-in triangle attention and pair-biased single attention on the FlashBias
op, and the factor networks that turn their pair bias into low-rank factors."""

from .attention_pair_bias import FlashBiasAttentionPairBias
from .bias_cache import BiasScope, SVDConfig, svd_factors
from .common import MODES, FlashBiasModule, Mode
from .diffusion_attention import FlashBiasDiffusionAttention
from .factor_network import FactorConfig, FactorNetwork, bias_approximation_loss
from .precomputed_bias_attention import FlashBiasPrecomputedBiasAttention
from .triangle_attention import FlashBiasTriangleAttention

__all__ = [
    "FlashBiasTriangleAttention",
    "FlashBiasAttentionPairBias",
    "FlashBiasDiffusionAttention",
    "FlashBiasPrecomputedBiasAttention",
    "SVDConfig",
    "svd_factors",
    "BiasScope",
    "FlashBiasModule",
    "FactorConfig",
    "FactorNetwork",
    "bias_approximation_loss",
    "Mode",
    "MODES",
]
