"""pairformer_fb: FlashBias attention for AlphaFold 3-style Pairformers (Protenix, Boltz-2, OpenFold3).

Layers, bottom up: ``kernel`` (the fused op) -> ``modules`` (triangle / pair-biased attention,
factor networks) -> ``hosts`` (one adapter package per host model, the structure-benchmark hosts,
model presets) -> ``patching`` (patch_model, CUDA graphs) / ``convert`` (checkpoint I/O,
conversion, factor initialisation, fine-tuning) / ``data`` (featurisation, structures) /
``bench`` (benchmarks, kernel tuning, fuzzing). ``cli`` holds the scripts' shared command line.
"""

from ._version import __version__
from .convert.convert import convert_checkpoint, load_converted
from .kernel import flash_bias_attention
from .modules import (
    FactorConfig,
    FlashBiasAttentionPairBias,
    FlashBiasDiffusionAttention,
    FlashBiasTriangleAttention,
    SVDConfig,
)
from .patching.cuda_graphs import graph_diffusion, graph_module
from .patching.patching import PatchReport, clear_weight_caches, patch_model, unpatch_model

__all__ = [
    "flash_bias_attention",
    "FlashBiasTriangleAttention",
    "FlashBiasAttentionPairBias",
    "FactorConfig",
    "FlashBiasDiffusionAttention",
    "SVDConfig",
    "patch_model",
    "unpatch_model",
    "clear_weight_caches",
    "PatchReport",
    "convert_checkpoint",
    "load_converted",
    "graph_diffusion",
    "graph_module",
    "__version__",
]
