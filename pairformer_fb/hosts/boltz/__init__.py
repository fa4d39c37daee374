"""The boltz host: its adapter (``adapter.py``), featurisation (``featurize.py``), presets
(``presets.py``) and structure benchmark host (``structure.py``)."""
