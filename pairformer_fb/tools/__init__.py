"""Tools layer: patching host models, benchmarking, kernel tuning (later: checkpoint conversion, fine-tuning)."""
