"""pairformer_fb: FlashBias attention for AlphaFold 3-style Pairformers (Protenix, Boltz-2, OpenFold3).

Layers, bottom up: ``kernel`` (the fused op) -> ``modules`` (triangle / pair-biased attention,
factor networks) -> ``adapters`` (one per host model) -> ``tools`` (patching, conversion,
fine-tuning, benchmarking).
"""

from .kernel import flash_bias_attention
from .modules import (
    FactorConfig,
    FlashBiasAttentionPairBias,
    FlashBiasDiffusionAttention,
    FlashBiasTriangleAttention,
    SVDConfig,
)
from .tools.convert import convert_checkpoint, load_converted
from .tools.cuda_graphs import graph_diffusion, graph_module
from .tools.patching import PatchReport, patch_model, unpatch_model

__version__ = "0.1.0"

__all__ = [
    "flash_bias_attention",
    "FlashBiasTriangleAttention",
    "FlashBiasAttentionPairBias",
    "FactorConfig",
    "FlashBiasDiffusionAttention",
    "SVDConfig",
    "patch_model",
    "unpatch_model",
    "PatchReport",
    "convert_checkpoint",
    "load_converted",
    "graph_diffusion",
    "graph_module",
    "__version__",
]
