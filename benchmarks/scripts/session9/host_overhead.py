"""Host time of the op's Python per call (issue 17), measurable without a GPU: the Triton path
(TRITON_INTERPRET=1 so it accepts CPU tensors) with every kernel launch replaced by a no-op, on
tiny tensors (no data work), against torch SDPA's forward+backward on the same tiny tensors.

Why: on the device the single attention (1 x 16 x 24) and the diffusion shape at N <= 768 are
host-bound (benchmarks/session9/bwd_profile_h100/: do_bench 0.9-1.4 ms against 40-600 us of
kernel time; SDPA's fwd+bwd 0.37 ms host-bound too), so what the op does in Python between its
launches is what those shapes pay. Triton's own launch cost is not in this measurement.

    python benchmarks/scripts/session9/host_overhead.py --out benchmarks/session9/host_overhead_cpu/NAME.json
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
import triton  # noqa: E402

from pairformer_fb import flash_bias_attention  # noqa: E402
from pairformer_fb.cli import atomic_write  # noqa: E402
from pairformer_fb.kernel import tiles, triton_launch  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _median_us(fn, calls: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"host_overhead: error: --out {out} exists (choose another name)")
    for name in ("_fwd_kernel", "_bwd_kernel", "_bwd_delta_kernel", "_ds_sum_kernel"):
        setattr(triton_launch, name, _NoLaunch())
    # the GPU's tile table and launches (the interpreter's small unfused tiles add a launch)
    tiles.INTERPRET = triton_launch.INTERPRET = False
    torch.manual_seed(0)
    shapes = {"single (B 1, bias [1, H, L, L])": 1, "triangle / diffusion (B 5, shared bias)": 5}
    records = []
    for label, B in shapes.items():
        H, L, D = 2, 8, 8
        q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, H, L, L, dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(B, H, L, D, dtype=torch.bfloat16)
        ins = [q, k, v, bias]

        def ours():
            return flash_bias_attention(q, k, v, bias=bias, backend="triton")

        def ours_fwd_bwd():
            return torch.autograd.grad(ours(), ins, do)

        def sdpa_fwd_bwd():
            return torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(q, k, v), [q, k, v], do)

        for method, fn in (("ours fwd", ours), ("ours fwd+bwd", ours_fwd_bwd), ("sdpa fwd+bwd", sdpa_fwd_bwd)):
            us = _median_us(fn, args.calls, args.repeats)
            records.append({"shape": label, "method": method, "us": round(us, 1)})
            print(f"{label:42s} {method:14s} {us:8.1f} us")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "what": "kernel launches replaced by no-ops; tiny tensors (H 2, L 8, D 8, bf16); median of repeats of the mean over calls",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps({"environment": env, "records": records}, indent=1))


if __name__ == "__main__":
    main()
