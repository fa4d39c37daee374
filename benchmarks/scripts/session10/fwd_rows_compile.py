"""The forward kernel with 2 or 4 rows per program (issue 17), compiled for sm_90 on a machine
without a GPU (tests/aot_compile.py's driver): registers, spill stack and shared memory per tile
candidate, at the triangle shape (H 4, D 32, bf16, bias [1, H, N, N] shared by the rows, N = 1024
and 1170) with a dense bias and with factors R = 32. A candidate that spills is unlikely to pay
on the device; which of the others is faster is for benchmarks/scripts/session6/bwd_profile.py's
forward candidates to measure there.

    python benchmarks/scripts/session10/fwd_rows_compile.py > out.jsonl
"""

import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aot_compile  # noqa: E402

# (block_m, block_n, num_warps, num_stages, rows)
CANDIDATES = [(64, 64, 4, 3, 2), (64, 64, 4, 3, 4), (64, 64, 8, 3, 4), (64, 32, 4, 3, 4), (128, 64, 8, 3, 2)]


def main() -> None:
    from pairformer_fb.kernel import tiles

    for n in (1024, 1170):
        for r in (0, 32):
            for cand in CANDIDATES:
                key = tiles.config_key("fwd", 32, r, r == 0, 2)
                tiles.CONFIG_OVERRIDES.clear()
                tiles.CONFIG_OVERRIDES[key] = tiles.KernelConfig(*cand)
                print(json.dumps({"n": n, "factors_rank": r, "candidate": cand}), flush=True)
                spec = {"B": 8, "H": 4, "Lq": n, "Lk": n, "D": 32, "R": r, "dtype": "bf16", "grad": False}
                if r == 0:
                    spec["bias_shape"] = [1, 4, n, n]
                aot_compile.main(spec)


if __name__ == "__main__":
    main()
