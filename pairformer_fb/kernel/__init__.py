"""Kernel layer: the FlashBias attention op (Triton kernels for CUDA, a torch reference else)."""

from .op import flash_bias_attention, prepare_reused_bias
from .reference import MASK_NEG, attention_reference

__all__ = ["MASK_NEG", "attention_reference", "flash_bias_attention", "prepare_reused_bias"]
