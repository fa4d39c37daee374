"""Kernel layer: the FlashBias attention op (Triton kernels for CUDA, a torch reference else)."""

from .op import flash_bias_attention
from .reference import MASK_NEG, attention_reference

__all__ = ["flash_bias_attention", "attention_reference", "MASK_NEG"]
