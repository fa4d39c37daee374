"""Benchmark the FlashBias attention op against the baselines (see configs/bench_attention.yaml).

    python scripts/bench_attention.py                       # small CPU default
    python scripts/bench_attention.py triangle.sizes=[1024] output_dir=benchmarks/attention_h200
"""

import hydra
from omegaconf import DictConfig

from pairformer_fb.tools.bench_attention import run


@hydra.main(config_path="../configs", config_name="bench_attention", version_base=None)
def main(cfg: DictConfig) -> None:
    records = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [r for r in records if r.method.startswith("fb_") and r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} FlashBias cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main()
