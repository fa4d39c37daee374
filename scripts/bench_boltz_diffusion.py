"""Benchmark Boltz-2's diffusion-module attentions, stock against ours
(configs/bench_boltz_diffusion.yaml).

    python scripts/bench_boltz_diffusion.py                      # small CPU default
    python scripts/bench_boltz_diffusion.py "diffusion.sizes=[384,1170]" "atom.sizes=[3072,9400]" \
        n_sample=5 output_dir=benchmarks/boltz_diffusion_h100
"""

from pathlib import Path

from pairformer_fb.bench.boltz_diffusion import run
from pairformer_fb.cli import main


def task(cfg) -> None:
    records = run(cfg)
    print((Path(cfg.output_dir) / "results.md").read_text())
    failed = [r for r in records if r.variant != "stock" and r.status != "ok" and not r.status.startswith("skipped")]
    if failed:
        raise SystemExit(f"{len(failed)} FlashBias cases failed: {[r.status for r in failed]}")


if __name__ == "__main__":
    main("bench_boltz_diffusion", task, doc=__doc__)
