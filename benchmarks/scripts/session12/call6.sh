#!/bin/bash
# Session 12, last device call (H200, no packages, ~4 min): the forward before / after one key
# block is peeled off its loop (ptxas serialised every wgmma of the dense-bias forward without it,
# C7515), forward and forward+backward, dense bias and factors, N = 1024 / 1170 / 2048.
# prev_kernel/: the package before (untracked, sent with the tree; PYTHONPATH puts it first).
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session12}; mkdir -p "$OUT"
SECONDS=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
M=sdpa_floor,fb_bias+pad+tmadq+tmads,fb_factors+pad+tmadq+tmads
for V in prev peel prev2 peel2; do
  P=$PWD; case $V in prev*) P=$PWD/prev_kernel ;; esac
  [ $SECONDS -gt 230 ] && break
  PYTHONPATH=$P timeout 80 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/profile_$V" --stages profile \
    --profile-sizes 1024,1170,2048 --methods $M --budget-s 65 > "$OUT/profile_$V.log" 2>&1
  echo "profile $V rc=$? ${SECONDS}s"; grep "pairformer_fb from" "$OUT/profile_$V.log"; grep "^N=" "$OUT/profile_$V.log" | cut -c1-80
done
echo "total ${SECONDS}s"
