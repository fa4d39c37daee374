#!/bin/bash
# Session 12, first device call (H200, no host packages, ~9 min), from the repository root;
# results under $OUT. Where issue 17 stands on an H200 since the backward's bulk reduce-adds:
#   1. the kernel GPU tests (the bulk reduce-adds against the fp32 reference and the atomics);
#   2. the forward's tile candidates (four rows per program, ...) at the nine N, dense bias
#      and factors R = 32, outputs checked against the default (bwd_profile.py --stages fwd_sweep);
#   3. the record's first part (scripts/session9/attention_record.sh PART=ours): SDPA floor, dense
#      bias, factors at the nine triangle N, the single attention and the diffusion shape.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
SECONDS=0
timeout 110 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > "$OUT/kernel_gpu_tests.txt" 2>&1
echo "kernel gpu tests rc=$? ${SECONDS}s"; tail -3 "$OUT/kernel_gpu_tests.txt"
timeout 190 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_sweep" --stages fwd_sweep \
  --fwd-sizes 1024,1170,256,384,512,768,1000,1536,2048 \
  --fwd-candidates default,m64n32w4s3r4,m64n64w4s3r4,m64n64w4s4r2,m128n64w8s3r2 --budget-s 165 \
  > "$OUT/fwd_sweep.log" 2>&1
echo "fwd sweep rc=$? ${SECONDS}s"; grep -A30 "forward sweep" "$OUT/fwd_sweep/summary.txt" | head -24
LIMIT=$((560 - SECONDS)) PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
