"""Tools layer: patching host models, host checkpoint I/O, benchmarking, kernel tuning (later: checkpoint conversion, fine-tuning)."""
