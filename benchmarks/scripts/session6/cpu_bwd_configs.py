"""Compile the backward for sm_90 on the CPU machine (cpu_asm_probe.py, one process per case) at
the triangle shape (H = 4, D = 32, bias [1, H, N, N] shared by the rows, or shared factors
R = 32) for N = 1024 and 1170 and each candidate backward config of the session 6 device sweep
(bwd_profile.py's BWD_CANDIDATES and COMPILE_ONLY_CANDIDATES), with the tile-padded dS sum
(tiles.DS_TILE_PAD) off and on; writes one JSON line per compiled backward kernel and a
markdown table.

    PYTHONPATH=. python benchmarks/scripts/session6/cpu_bwd_configs.py benchmarks/session6/cpu_compile

B is 32 for N = 1024 and 18 for N = 1170: Triton specialises integer arguments on divisibility
by 16, so these compile what B = 1024 / 1170 do (and both give more than 8 row groups, hence
the heads-fastest grid order of the real triangle shape)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))

from bwd_profile import BWD_CANDIDATES, COMPILE_ONLY_CANDIDATES, candidate_overrides  # noqa: E402

SHAPES = {1024: 32, 1170: 18}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    cache = tempfile.mkdtemp(prefix="s6_triton_cache_")  # shared by the cases: each forward compiles once
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=cache)
    env.pop("TRITON_INTERPRET", None)
    for n, b in SHAPES.items():
        for variant in ("bias", "factors"):
            for name, cand in {**BWD_CANDIDATES, **COMPILE_ONLY_CANDIDATES}.items():
                for pad in (False, True) if cand.get("fuse_ds", True) else (False,):
                    spec = {"B": b, "H": 4, "Lq": n, "Lk": n, "D": 32, "label": f"{n}/{variant}/{name}/pad{int(pad)}"}
                    if variant == "bias":
                        spec["bias_shape"] = [1, 4, n, n]
                    else:
                        spec["R"] = 32
                    spec["overrides"] = candidate_overrides(
                        cand, 32, 32 if variant == "factors" else 0, variant == "bias"
                    )
                    spec["env"] = {"PFB_DS_TILE_PAD": "1" if pad else "0"}
                    run = subprocess.run(
                        [sys.executable, str(HERE / "cpu_asm_probe.py"), json.dumps(spec)],
                        capture_output=True,
                        text=True,
                        env=env,
                        timeout=900,
                    )
                    got = [json.loads(x[5:]) for x in run.stdout.splitlines() if x.startswith("SASS ")]
                    got = [g for g in got if g["kernel"] in ("_bwd_kernel", "_ds_sum_kernel")]
                    if run.returncode != 0:
                        got.append({"label": spec["label"], "error": run.stderr.strip().splitlines()[-1:]})
                    for g in got:
                        g.update(n=n, variant=variant, candidate=name, ds_tile_pad=pad)
                        print(json.dumps(g), flush=True)
                    lines += got
    (out / "bwd_configs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = [
        "| N | operand | candidate | pad | kernel | tiles m×n, warps, stages, rows | regs | stack B | smem KiB "
        "| LDL / STL | RED (vector) | SASS instr. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        if "error" in x:
            rows.append(f"| {x.get('n')} | {x.get('variant')} | {x.get('candidate')} | | error: {x['error']} |||||||")
            continue
        rows.append(
            f"| {x['n']} | {x['variant']} | {x['candidate']} | {int(x['ds_tile_pad'])} | {x['kernel']} "
            f"| {x.get('BLOCK_M')}×{x.get('BLOCK_N')}, {x['num_warps']}, {x['num_stages']}, {x.get('ROWS', 1)} "
            f"| {x.get('registers')} | {x.get('stack_bytes')} | {x['shared_bytes'] / 1024:.1f} | {x['LDL']} / {x['STL']} "
            f"| {x['RED_or_ATOM']} ({x['RED_vector']}) | {x['sass_instructions']} |"
        )
    (out / "bwd_configs.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/session6/cpu_compile")
