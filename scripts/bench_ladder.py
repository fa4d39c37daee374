"""The ladder (configs/bench_ladder.yaml): a host's full inference at a ladder of token counts,
stock and patched with FlashBias, on long inputs made by repeating the sample chains; per rung
the status (ok / oom / error), peak GPU memory, seconds per phase and the cycles / steps /
samples used.

    python scripts/bench_ladder.py                                 # tiny Protenix on a CPU, 24 and 48 tokens
    python scripts/bench_ladder.py model=base "tokens=[1024,2048,3072,4096]" \\
        "long_rungs.from_tokens=2048" output_dir=benchmarks/ladder_h200
    python scripts/bench_ladder.py host=openfold3 "tokens=[32]"      # tiny OpenFold3 on a CPU

Bad input (options, sources, rungs, checkpoint, output_dir): one line
"bench_ladder: error: ..." on stderr, exit status 2, before any model work; nothing is written.
"""

import os

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # before protenix is imported: no CUDA layer-norm build on a CPU

from pairformer_fb.bench.ladder import run  # noqa: E402
from pairformer_fb.cli import main  # noqa: E402
from pairformer_fb.hosts.structure_hosts import HostUnavailable  # noqa: E402


def task(cfg) -> None:
    result = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [r for r in result["records"] if r["status"].startswith("error")]
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {[(r['tokens'], r['variant'], r['status']) for r in failed]}")


if __name__ == "__main__":
    main("bench_ladder", task, doc=__doc__, errors=(HostUnavailable,))
