"""Structure benchmark, the project's main job (see configs/benchmark.yaml): a host model's full
structure inference on sample proteins, unpatched and patched with FlashBias, timed per phase,
with the agreement of the predicted structures.

    python scripts/benchmark.py                                   # small CPU default (tiny Protenix)
    python scripts/benchmark.py model=base "samples=[1ubq,7wux_a2b2]" repeats=3 output_dir=DIR
    python scripts/benchmark.py host=openfold3 "samples=[1crn]"     # tiny OpenFold3 on a CPU
    python scripts/benchmark.py host=boltz "samples=[1crn]"         # tiny Boltz-2 on a CPU

Bad input (options, samples, references, checkpoint, output_dir): one line
"benchmark: error: ..." on stderr, exit status 2, before any model work; nothing is written.
"""

import os

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # before protenix is imported: no CUDA layer-norm build on a CPU

from pairformer_fb.bench.structure import run  # noqa: E402
from pairformer_fb.cli import main  # noqa: E402
from pairformer_fb.hosts.structure_hosts import HostUnavailable  # noqa: E402


def task(cfg) -> None:
    result = run(cfg)
    print(open(f"{cfg.output_dir}/results.md").read())
    failed = [r for r in result["records"] if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} runs failed: {[(r['sample'], r['variant'], r['status']) for r in failed]}")


if __name__ == "__main__":
    main("benchmark", task, doc=__doc__, errors=(HostUnavailable,))
