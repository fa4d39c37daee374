#!/bin/bash
# Session 12, last device call (H200, carry [".devsite"] for hydra, ~9.5 min):
#   1. the forward with 8 warps against the default 4 (ptxas serialises the default's wgmma
#      with a dense bias, C7515; not the 8-warp tiles' at N = 1024), dense bias and factors;
#   2. issue 17's record, our half (scripts/session9/attention_record.sh PART=ours), with the time left.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
PYTHONPATH=$PWD timeout 170 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_w8" --stages fwd_sweep \
  --fwd-sizes 1024,2048,512,1170,768 --fwd-candidates default,m64n64w8s3r2,m64n128w8s3r2,m64n64w8s3r4 \
  --budget-s 150 > "$OUT/fwd_w8.log" 2>&1
echo "fwd w8 rc=$? ${SECONDS}s"; grep -A12 "forward sweep" "$OUT/fwd_w8/summary.txt" | head -12
SITE=/tmp/site LIMIT=$((575 - SECONDS)) PART=ours OUT=$OUT bash benchmarks/scripts/session9/attention_record.sh
echo "total ${SECONDS}s"
