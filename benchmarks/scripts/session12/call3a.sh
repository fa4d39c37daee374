#!/bin/bash
# Session 12, device call (H200, no host packages, ~6 min): issue 17's record, our half
# (scripts/session9/attention_record.sh PART=ours: SDPA floor, dense bias, factors R = 32 at the
# nine triangle N, the single attention and the diffusion shape), with the kernel GPU tests first.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > "$OUT/kernel_gpu_tests.txt" 2>&1
echo "kernel gpu tests rc=$? ${SECONDS}s"; tail -3 "$OUT/kernel_gpu_tests.txt"
LIMIT=$((560 - SECONDS)) PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
