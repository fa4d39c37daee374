#!/bin/bash
# Session 13, device call 1 (H200, carry [".devsite"], ~5 min), from the repository root; results
# under $OUT. Issue 17:
#   1. the op's host time per forward + backward at the host-bound small shapes (triangle N = 256
#      and 384, single attention and diffusion shapes at 384), against SDPA's, with cProfiles;
#      the triangle at 256 once more without the bulk reduce-adds (their tensor descriptors);
#   2. the 8-warp forward tiles (not yet timed) against the default at N = 1024, 2048, 512, 1170.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session13}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
lscpu | grep -E "Model name|^CPU\(s\)|MHz" | head -4
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp && export PYTHONPATH=/tmp/site
timeout 200 python3 benchmarks/scripts/session13/host_profile.py --out "$OUT/host_profile" > "$OUT/host_profile.log" 2>&1
echo "host profile rc=$? ${SECONDS}s"; grep "^{" "$OUT/host_profile.log"
PFB_TMA_REDUCE=0 timeout 60 python3 benchmarks/scripts/session13/host_profile.py --out "$OUT/host_profile" \
  --shapes triangle256 --methods fb_bias > "$OUT/host_profile_notma.log" 2>&1
echo "host profile (no TMA) rc=$? ${SECONDS}s"; grep "^{" "$OUT/host_profile_notma.log"
timeout $((560 - SECONDS)) python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/fwd_sweep_w8" --stages fwd_sweep \
  --fwd-sizes 1024,2048,512,1170 --fwd-candidates default,m64n64w8s3r2,m64n128w8s3r2,m64n64w8s3r4 \
  --budget-s $((545 - SECONDS)) > "$OUT/fwd_sweep_w8.log" 2>&1
echo "fwd sweep rc=$? ${SECONDS}s"; grep -A16 "forward sweep" "$OUT/fwd_sweep_w8/summary.txt" | head -16
echo "total ${SECONDS}s"
