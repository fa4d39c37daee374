"""Tools layer: benchmarking (and later patching, checkpoint conversion, fine-tuning)."""
