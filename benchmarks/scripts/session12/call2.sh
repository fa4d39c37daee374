#!/bin/bash
# (Ran once as written, at 40d77be / d879cc2. The opt-in +log2b path it measures was removed in
# 238365c after this run, so its log2b parts no longer run: kept as the record of what ran.)
# Session 12, device call (H200, no host packages, ~9.5 min), from the repository root; results
# under $OUT. Issue 17's forward: the scores in log2 units (one FMA per score, the shared terms
# scaled once per tile) against the code before it, and the shared bias stored in log2 units as
# fp32 (+log2b, opt-in); then FlexAttention's half of the record, which our code does not touch.
#   old_kernel/: the package at b55e93b (before the log2 scores), untracked, sent with the tree
#   1. the kernel GPU tests (new code);
#   2. profile, N = 1024 / 1170 / 256: floor, no bias, dense bias, factors; old code, then new
#      (+ the dense bias with +log2b; and the single attention / diffusion shapes, host-bound or not);
#   3. the forward's tile candidates at the nine N (new code, the dense bias with +log2b);
#   4. scripts/session9/attention_record.sh PART=flex (floor and FlexAttention + bias).
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
SECONDS=0
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > "$OUT/kernel_gpu_tests.txt" 2>&1
echo "kernel gpu tests rc=$? ${SECONDS}s"; tail -3 "$OUT/kernel_gpu_tests.txt"
M=sdpa_floor,fb_nobias,fb_bias+pad+tmadq+tmads,fb_factors+pad+tmadq+tmads
for V in old new; do
  P=$PWD; [ $V = old ] && P=$PWD/old_kernel:$PWD
  ST=profile; B=95; [ $V = new ] && { M=$M,fb_bias+pad+tmadq+tmads+log2b; ST=profile,others; B=125; }
  PYTHONPATH=$P timeout $((B + 15)) python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/profile_$V" \
    --stages $ST --profile-sizes 1024,1170,256 --methods $M --budget-s $B > "$OUT/profile_$V.log" 2>&1
  echo "profile $V rc=$? ${SECONDS}s"; grep -v "^$" "$OUT/profile_$V/summary.txt" | head -40
done
PFB_BIAS_LOG2_MIN_ROWS=2 PYTHONPATH=$PWD timeout 125 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_sweep" --stages fwd_sweep \
  --fwd-sizes 1024,1170,256,384,512,768,1000,1536,2048 \
  --fwd-candidates default,m128n64w8s3r2,m64n64w4s3r4 --budget-s 110 > "$OUT/fwd_sweep.log" 2>&1
echo "fwd sweep rc=$? ${SECONDS}s"; grep -A24 "forward sweep" "$OUT/fwd_sweep/summary.txt" | head -24
LIMIT=$((575 - SECONDS)) PART=flex OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
