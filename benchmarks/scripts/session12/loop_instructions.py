"""The main loop of the forward / backward kernels compiled for sm_90 on a machine without a GPU
(tests/aot_compile.py's driver; issue 17): SASS instructions per key block (forward) or query
block (backward) by opcode, registers / spills / shared memory, and whether ptxas serialised the
kernel's wgmma (its C7515 note). At the triangle shape
(H 4, D 32, bf16) the kernels issue more instructions per key block than their tensor-core and
exp2 work needs, so the loop's instruction count is the CPU-side measure of a change.

    python benchmarks/scripts/session12/loop_instructions.py --out DIR [--package-root OLD_CHECKOUT]

--package-root: import pairformer_fb from there (e.g. an older commit's tree) instead of this one.
Writes DIR/results.json and DIR/results.md; refuses an existing DIR/results.json.
"""

import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
ROOT = Path(__file__).resolve().parents[3]


def _loop(sass: str) -> tuple[int, dict]:
    """(instructions, opcode counts) of the longest backward-branching loop of nvdisasm's output."""
    lines = sass.splitlines()
    ins, labels = [], {}
    for i, ln in enumerate(lines):
        m = re.match(r"\.L_x_(\d+):", ln.strip())
        if m:
            for nxt in lines[i + 1 : i + 6]:
                mm = re.match(r"\s*/\*([0-9a-f]{4,})\*/", nxt)
                if mm:
                    labels[m.group(1)] = int(mm.group(1), 16)
                    break
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", ln)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    loops = []
    for a, t in ins:
        mm = re.search(r"BRA.*?\.L_x_(\d+)", t)
        if mm and labels.get(mm.group(1), 1 << 60) < a:
            loops.append((labels[mm.group(1)], a))
    lo, hi = max(loops, key=lambda r: r[1] - r[0])
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for a, t in ins if lo <= a <= hi)
    return sum(ops.values()), dict(ops.most_common())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--package-root", default=str(ROOT))
    p.add_argument("--label", default="this tree")
    p.add_argument("--log2b", action="store_true", help="tiles.BIAS_LOG2_MIN_ROWS = 2 (the shared bias in log2 units)")
    args = p.parse_args()
    out = Path(args.out)
    if (out / "results.json").exists():
        raise SystemExit(f"loop_instructions: error: {out / 'results.json'} exists")
    if not (Path(args.package_root) / "pairformer_fb" / "kernel").is_dir():
        raise SystemExit(f"loop_instructions: error: --package-root {args.package_root} has no pairformer_fb/kernel")
    sys.path[:0] = [args.package_root, str(ROOT / "tests")]
    import aot_compile
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    ptxas = nvdisasm.with_name("ptxas")
    records = []
    case = {}

    def compile_and_count(self, *a, grid, warmup, **kw):
        kernel = aot_compile._run(self, *a, grid=grid, warmup=True, **kw)
        if self.__name__ in ("_fwd_kernel", "_bwd_kernel"):
            with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
                f.write(kernel.asm["cubin"])
            try:
                sass = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True).stdout
            finally:
                os.unlink(f.name)
            n, ops = _loop(sass)
            rec = {**case, "kernel": self.__name__, "loop_instructions": n, "shared_bytes": kernel.metadata.shared}
            # ptxas's C7515: it serialised the kernel's wgmma (each waits for the previous)
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(kernel.asm["ptx"])
            try:
                log = subprocess.run(
                    [str(ptxas), "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True
                ).stderr
            finally:
                os.unlink(f.name)
            rec["wgmma_serialized"] = "C7515" in log
            rec.update(aot_compile._resources(kernel))
            rec["opcodes"] = ops
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "opcodes"}), flush=True)
        return kernel

    aot_compile._compile_instead_of_launch = compile_and_count
    if args.log2b:
        from pairformer_fb.kernel import tiles

        tiles.BIAS_LOG2_MIN_ROWS = 2
    for n in (1024, 1170):
        for operand in ("bias", "factors"):
            case.clear()
            case.update(n=n, operand=operand, code=args.label + (" +log2b" if args.log2b else ""))
            spec = {"B": 8, "H": 4, "Lq": n, "Lk": n, "D": 32, "dtype": "bf16", "grad": True}
            if operand == "bias":
                spec["bias_shape"] = [1, 4, n, n]
            else:
                spec["R"] = 32
            aot_compile.main(spec)
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "triton": triton.__version__,
        "target": "sm_90 (compiled on the CPU, tests/aot_compile.py)",
        "shape": "triangle: 8 rows, H 4, D 32, bf16, bias [1, H, N, N] or factors R = 32; default tiles",
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"environment": env, "records": records}, indent=1))
    tmp.replace(out / "results.json")


if __name__ == "__main__":
    main()
