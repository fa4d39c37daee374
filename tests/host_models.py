"""Shared by the host-model tests: random, non-zero host weights (the hosts zero-initialise
their output projections and gates, which would hide every error). The function lives in
pairformer_fb.tools.presets (the structure benchmark uses it too)."""

from pairformer_fb.tools.presets import randomise_

__all__ = ["randomise_"]
