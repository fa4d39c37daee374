#!/bin/bash
# Session 13, device call 3 (carry [".devsite"] for hydra, ~7 min), from the repository root;
# results under $OUT. Issue 17:
#   1. the op timed from CUDA graph replays (bench_attention cuda_graphs=true) at the host-bound
#      shapes: triangle N = 256 / 384 / 512, the single attention and the diffusion shape; the
#      floor likewise, so both sides leave out the host (as a model run from CUDA graphs);
#   2. the record's triangle half (ours: floor, dense bias, factors R = 32) at $SIZES with main's
#      program orders (order 3 past the L2 share, session 13's A/B in call 2), 400 ms of repetitions.
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out/session13}; mkdir -p "$OUT"
SIZES=${SIZES:-[1024,1170,1536,2048]}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SECONDS=0
tar -xJf .devsite/site.tar.xz -C /tmp || exit 1
export PYTHONPATH=/tmp/site:$PWD
timeout 180 python3 scripts/bench_attention.py "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" cuda_graphs=true \
  "triangle.sizes=[256,384,512]" "single.sizes=[384,768,1536,3072]" "diffusion.sizes=[384,768,1170]" \
  output_dir="$OUT/attention_graphs" > "$OUT/attention_graphs.log" 2>&1
echo "graphs rc=$? ${SECONDS}s"; cat "$OUT/attention_graphs/results.md"
timeout $((380 - SECONDS)) python3 scripts/bench_attention.py "methods=[sdpa_floor,fb_bias,fb_factors]" "ranks=[32]" rep_ms=400 \
  "triangle.sizes=$SIZES" "single.sizes=[3072]" "diffusion.sizes=[1170]" \
  output_dir="$OUT/attention_large" > "$OUT/attention_large.log" 2>&1
echo "large rc=$? ${SECONDS}s"; cat "$OUT/attention_large/results.md"
echo "total ${SECONDS}s"
