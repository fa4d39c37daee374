"""Benchmark the diffusion module's attentions, stock Protenix against ours
(configs/bench_diffusion.yaml).

    python scripts/bench_diffusion.py                      # small CPU default
    python scripts/bench_diffusion.py "diffusion.sizes=[384,1170]" "atom.sizes=[3072,9400]" \
        output_dir=benchmarks/diffusion_h200
"""

import os

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # before protenix is imported (no CUDA layer-norm build)

from pairformer_fb.bench.diffusion import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    records = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [
        r
        for r in records
        if not r.variant.startswith("stock") and r.status != "ok" and not r.status.startswith("skipped")
    ]
    if failed:
        raise SystemExit(f"{len(failed)} FlashBias cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main("bench_diffusion", task, doc=__doc__)
