"""Benchmark one real-size Pairformer block per host, stock vs patched (configs/bench_blocks.yaml).

python scripts/bench_blocks.py                                   # small CPU default
python scripts/bench_blocks.py "sizes.protenix=[1024]" output_dir=benchmarks/blocks_h200
"""

from pairformer_fb.bench.blocks import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    records = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [
        r for r in records if r.variant != "stock" and r.status != "ok" and not r.status.startswith("not installed")
    ]
    if failed:
        raise SystemExit(f"{len(failed)} patched block cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main("bench_blocks", task, doc=__doc__)
