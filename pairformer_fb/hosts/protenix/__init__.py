"""The protenix host: its adapter (``adapter.py``)."""
