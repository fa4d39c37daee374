"""Sweep the Triton kernels' tiles on a GPU (configs/tune_kernels.yaml); writes tuned_configs.json,
which scripts/bench_attention.py reads with kernel_configs=PATH."""

from pairformer_fb.bench.tune_kernels import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main("tune_kernels", task, doc=__doc__)
