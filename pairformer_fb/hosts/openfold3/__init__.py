"""The openfold3 host: its adapter (``adapter.py``)."""
