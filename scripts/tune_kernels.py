"""Sweep the Triton kernels' tiles on a GPU (configs/tune_kernels.yaml); writes tuned_configs.json,
which scripts/bench_attention.py reads with kernel_configs=PATH."""

import hydra
from omegaconf import DictConfig

from pairformer_fb.tools.tune_kernels import run


@hydra.main(config_path="../configs", config_name="tune_kernels", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
