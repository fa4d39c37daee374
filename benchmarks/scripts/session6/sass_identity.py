"""Do two versions of the code compile the op's Triton kernels to the same sm_90 machine code?

No GPU was lent in session 6, so the GPU tests could not be re-run after the kernel module was
split (issue 15). They last passed on the device at commit f2d8a5c (session 5, call 6:
tests/test_kernel_gpu.py 18 passed; the fuzz suite 327 cases, 0 failures). This script compiles
every kernel of the op for sm_90 on the CPU machine (tests/aot_compile.py: a stand-in driver,
cold Triton cache per run) for each case, once with the package of each given checkout, and
compares the kernels launched (names, tiles, warps, stages, shared memory, registers) and the
sha256 of their SASS without source-line comments. The same machine code for the same launches
means the GPU runs the same instructions as in the run that passed.

Run from the repository root:
    python benchmarks/scripts/session6/sass_identity.py OLD_CHECKOUT NEW_CHECKOUT OUT_DIR
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from test_kernel_compile import CASES  # noqa: E402  (every branch of the tile table)

B, H, L = 4, 2, 100
SPECS = {
    name: {
        "B": B,
        "H": H,
        "Lq": L,
        "Lk": L,
        **{k: v for k, v in c.items() if k != "bias"},
        "bias_shape": {"shared": [1, H, L, L], "rows": [B, 1, L, L], None: None}[c.get("bias")],
    }
    for name, c in CASES.items()
}
# the triangle attention's shape (rows x N x N, bias shared by the rows, masked keys), dense and R = 32
SPECS["triangle_bf16_d32_bias"] = dict(B=24, H=4, Lq=150, Lk=150, D=32, bias_shape=[1, 4, 150, 150], mask=True)
SPECS["triangle_bf16_d32_r32"] = dict(B=24, H=4, Lq=150, Lk=150, D=32, R=32, mask=True)
# the single attention (16 heads x 24) and the session-5 miscompile regression (padded rank > head dim)
SPECS["single_bf16_d24_bias"] = dict(B=1, H=16, Lq=300, Lk=300, D=24, bias_shape=[1, 16, 300, 300], mask=True)
SPECS["bf16_d27_r38_regression"] = dict(B=3, H=2, Lq=70, Lk=90, D=27, R=38)


def compile_all(checkout: Path, spec: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = cache
        env["PYTHONPATH"] = str(checkout)
        run = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "aot_compile.py"), json.dumps({**spec, "sass": True})],
            capture_output=True,
            text=True,
            env=env,
            timeout=1200,
            cwd=checkout,
        )
    if run.returncode:
        raise RuntimeError(f"{checkout}: {run.stderr[-1500:]}")
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def main(old: str, new: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = ("kernel", "BLOCK_M", "BLOCK_N", "ROWS", "num_warps", "num_stages", "shared_bytes", "registers", "sass_sha256")
    records = []
    for name, spec in SPECS.items():
        t0 = time.perf_counter()
        a, b = compile_all(Path(old), spec), compile_all(Path(new), spec)
        same = [{k: x.get(k) for k in keys} for x in a] == [{k: x.get(k) for k in keys} for x in b]
        records.append({"case": name, "spec": spec, "identical": same, "old": a, "new": b})
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({len(a)} kernels, {time.perf_counter() - t0:.0f} s)")
    def commit(path: str) -> str:
        head = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return f"{path} at {head.stdout.strip() or '?'}"

    env = {"python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d"), "old": commit(old), "new": commit(new)}
    import torch
    import triton

    env |= {"torch": torch.__version__, "triton": triton.__version__, "target": "sm_90 (compiled on a CPU machine)"}
    (out_dir / "results.json").write_text(json.dumps({"environment": env, "records": records}, indent=1))
    lines = [
        "# Same sm_90 machine code before / after the kernel split?",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "| case | kernels | identical (tiles, warps, stages, smem, registers, SASS sha256) |",
        "|---|---|---|",
    ]
    lines += [f"| {r['case']} | {', '.join(k['kernel'] for k in r['new'])} | {r['identical']} |" for r in records]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
