#!/bin/bash
# For the next device session (written in session 13, not yet run; carry [".devsite"] for hydra,
# ~5 min), from the repository root; results under $OUT. Issue 17:
#   1. the diffusion transformer's factors on their one-row 32 x 64 backward tiles (session 13's
#      tile-table change, timed only before it: 3.5-3.9x the floor from CUDA graph replays),
#      with the dense bias and the floor, from graph replays;
#   2. the backward at N = 2048 split by kernel: the floor, the bias with its gradient (the fused dS
#      sum, order 3) with both bulk reduce-adds / dS atomics / dQ atomics, without its gradient (no
#      dS sum) and no bias: does the dS sum's (B / 2) x H x N^2 x 4 B of reduce-adds make the 1.34x?
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session14}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 scripts/bench_attention.py "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" cuda_graphs=true \
  "triangle.sizes=[256]" "single.sizes=[384]" "diffusion.sizes=[384,768,1170]" \
  output_dir="$OUT/diffusion_factors_graphs" > "$OUT/diffusion_factors_graphs.log" 2>&1
echo "graphs rc=$? ${SECONDS}s"; cat "$OUT/diffusion_factors_graphs/results.md"
timeout $((540 - SECONDS)) python3 benchmarks/scripts/session6/bwd_profile.py --out "$OUT/bwd_profile_2048" \
  --stages profile --profile-sizes 2048 \
  --methods sdpa_floor,fb_nobias,fb_bias_nograd,fb_bias+pad+tmadq+tmads,fb_bias+pad+tmadq,fb_bias+pad+tmads \
  --budget-s $((520 - SECONDS)) > "$OUT/bwd_profile_2048.log" 2>&1
echo "profile rc=$? ${SECONDS}s"; grep -v "^$" "$OUT/bwd_profile_2048/summary.txt" | head -30
echo "total ${SECONDS}s"
