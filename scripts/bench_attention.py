"""Benchmark the FlashBias attention op against the baselines (see configs/bench_attention.yaml).

python scripts/bench_attention.py                       # small CPU default
python scripts/bench_attention.py triangle.sizes=[1024] output_dir=benchmarks/attention_h200
"""

from pairformer_fb.bench.attention import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    records = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [r for r in records if r.method.startswith("fb_") and r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} FlashBias cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main("bench_attention", task, doc=__doc__)
