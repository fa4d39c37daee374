"""The benchmark scripts' Hydra configs, composed for tests (as the scripts compose them)."""

from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIGS = str((Path(__file__).parents[1] / "configs").resolve())


def bench_config(name, tmp_path, overrides):
    """configs/<name>.yaml with output_dir=tmp_path and the overrides."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(config_name=name, overrides=[f"output_dir={tmp_path}", *overrides])
