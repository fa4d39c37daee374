"""The version of pairformer_fb (its own module, so that nothing inside the package imports the package root for it)."""

__version__ = "0.1.0"
