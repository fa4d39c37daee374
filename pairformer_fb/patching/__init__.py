"""Patching layer: replacing a host model's attention with ours (patch_model / unpatch_model) and CUDA-graph capture of the patched model."""
