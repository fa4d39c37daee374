"""Conversion layer: host checkpoint I/O, checkpoint conversion, factor-network initialisation, fine-tuning and the sample sets they use."""
