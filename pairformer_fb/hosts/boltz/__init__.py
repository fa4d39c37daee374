"""The boltz host: its adapter (``adapter.py``)."""
