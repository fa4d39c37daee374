"""Data layer: featurising sample sequences for each host, and reading / scoring structures."""
