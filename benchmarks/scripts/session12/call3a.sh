#!/bin/bash
# (Ran once as written, at 40d77be / d879cc2. The opt-in +log2b path it measures was removed in
# 238365c after this run, so its log2b parts no longer run: kept as the record of what ran.)
# Session 12, device call (H200, no host packages, ~9.5 min): issue 17's record, our half
# (scripts/session9/attention_record.sh PART=ours: SDPA floor, dense bias, factors R = 32 at the
# nine triangle N, the single attention and the diffusion shape), with the kernel GPU tests first,
# then the dense bias again with the shared bias in log2 units (PFB_BIAS_LOG2_MIN_ROWS=16, opt-in)
# at the nine triangle N.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > "$OUT/kernel_gpu_tests.txt" 2>&1
echo "kernel gpu tests rc=$? ${SECONDS}s"; tail -3 "$OUT/kernel_gpu_tests.txt"
LIMIT=$((430 - SECONDS)) PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "record ${SECONDS}s"
PYTHONPATH=$PWD PFB_BIAS_LOG2_MIN_ROWS=16 timeout $((575 - SECONDS)) python3 scripts/bench_attention.py \
  "methods=[sdpa_floor,fb_bias]" "triangle.sizes=[1024,1170,2048,256,384,512,768,1000,1536]" "single.sizes=[]" \
  "diffusion.sizes=[]" output_dir="$OUT/attention_h200_log2b" > "$OUT/attention_log2b.log" 2>&1
echo "log2b rc=$? ${SECONDS}s"; cat "$OUT/attention_h200_log2b/results.md"
