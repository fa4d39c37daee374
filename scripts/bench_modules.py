"""Benchmark the FlashBias modules against an unfused torch module (configs/bench_modules.yaml).

python scripts/bench_modules.py                         # small CPU default
python scripts/bench_modules.py "triangle.sizes=[1024]" output_dir=benchmarks/modules_h200
"""

from pairformer_fb.bench.modules import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    records = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [r for r in records if r.variant != "torch_sdpa" and r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} FlashBias module cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main("bench_modules", task, doc=__doc__)
