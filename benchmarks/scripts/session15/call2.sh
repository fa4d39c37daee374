#!/bin/bash
# Session 15, second device call (carry [".devsite"], ~50 s on a warm H100): the backward at
# N = 2048 split by kernel (session13/call_next.sh's second step, without the dS-atomics method,
# in the 390 s of device time that were left): the floor, no bias, the bias without its gradient
# (no dS sum), the bias with it (both bulk reduce-adds / dQ's only).
export PYTHONUNBUFFERED=1; OUT=${OUT:-bench_out/session15}; mkdir -p "$OUT"
tar -xJf .devsite/site.tar.xz -C /tmp; export PYTHONPATH=/tmp/site:$PWD; SECONDS=0
timeout 270 python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/bwd_profile_2048" --stages profile \
  --profile-sizes 2048 --methods sdpa_floor,fb_nobias,fb_bias_nograd,fb_bias+pad+tmadq+tmads,fb_bias+pad+tmadq \
  --budget-s 230 > "$OUT/bwd_profile_2048.log" 2>&1
echo "profile rc=$? ${SECONDS}s"; grep -v "^$" "$OUT/bwd_profile_2048/summary.txt" | head -40
